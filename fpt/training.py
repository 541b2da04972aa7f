"""Training with Lightning: the loop, precision, checkpoints, logging and resume.

``fit(config)`` trains and tests one run and writes, in ``config.run_dir``:

* ``config.yaml``: the resolved configuration;
* ``metrics.csv``: every logged value (Lightning's CSVLogger);
* ``checkpoints/last.ckpt``: the resume state (trained parameters + optimizer + loop state only;
  the frozen backbone is rebuilt from its identity, never stored);
* ``model.safetensors``: the trained parameters and, in its metadata, the backbone's identity;
* ``results.json``: task, backbone, init, freeze, layers, steps, seed, parameter counts, seconds,
  device, and the validation and test metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Sampler

from fpt import fastpath
from fpt.backbones import load_backbone
from fpt.config import RunConfig, save_config
from fpt.io import atomic_write_json
from fpt.model import FPT, ModelConfig
from fpt.tasks import Split, make_task

CHECKPOINT_FORMAT = "fpt-1"


class NonFiniteGradientError(RuntimeError):
    pass


# -- data -------------------------------------------------------------------------------------
class _SplitDataset(Dataset):
    """Maps a whole array of positions (one batch) to a batch dict; used with ``batch_size=None``."""

    def __init__(self, split: Split):
        self.split = split

    def __getitem__(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        return self.split.batch(positions)

    def __len__(self) -> int:
        return len(self.split)


class StreamBatchSampler(Sampler):
    """Endless training batches: step ``s`` on rank ``r`` gets stream positions
    ``[s*G + r*b, s*G + (r+1)*b)`` with ``G = b * world`` the global batch.

    The first step is read from ``start_step()`` when iteration begins, which Lightning does after
    restoring a checkpoint: a resumed run continues the exact data stream of an uninterrupted one.
    """

    def __init__(self, per_device_batch: int, start_step, rank: int = 0, world: int = 1):
        self.b, self.start_step, self.rank, self.world = per_device_batch, start_step, rank, world

    def __iter__(self):
        step = int(self.start_step())
        while True:
            start = step * self.b * self.world + self.rank * self.b
            yield np.arange(start, start + self.b, dtype=np.int64)
            step += 1


class EvalBatchSampler(Sampler):
    """Consecutive batches over ``range(n)``, this rank's share only (ranks take every world-th batch).

    With several ranks the batch size shrinks, if needed, to ``n // world`` so that every rank gets at
    least one batch: a rank without one would skip the evaluation loop and leave the others waiting
    in the metrics' cross-rank reduction.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        if world > 1:
            if n < world:
                raise ValueError(f"an evaluation split of {n} samples cannot be shared by {world} processes")
            batch_size = max(1, min(batch_size, n // world))
        self.n, self.b, self.rank, self.world = n, batch_size, rank, world

    def _starts(self):
        return list(range(0, self.n, self.b))[self.rank::self.world]

    def __iter__(self):
        for s in self._starts():
            yield np.arange(s, min(s + self.b, self.n), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._starts())


def _mean_metric() -> torchmetrics.MeanMetric:
    """A mean without the per-update NaN check, which reads the device (a host sync per batch)."""
    try:
        return torchmetrics.MeanMetric(nan_strategy="disable")
    except ValueError:  # torchmetrics before "disable" existed
        return torchmetrics.MeanMetric(nan_strategy="ignore")


# -- the Lightning module ---------------------------------------------------------------------
class FPTModule(L.LightningModule):
    """Wraps an ``FPT`` model and a task for Lightning. Checkpoints hold trained parameters only."""

    def __init__(self, config: RunConfig, model: FPT | None = None):
        super().__init__()
        self.config = config
        self.task = make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
        if model is None:
            model = build_model(config, self.task)
        self.model = model
        self.strict_loading = False  # frozen weights are rebuilt, not loaded; on_load_checkpoint checks the rest
        spec = self.task.spec
        self.test_names = list(self.task.test().keys())
        self.metric_prefixes = ["val"] + self.test_names
        self.acc = torch.nn.ModuleDict({
            # validate_args=False: the argument checks call torch.unique and read it on the host every batch
            p: torchmetrics.classification.MulticlassAccuracy(spec.num_classes, average="micro", validate_args=False)
            for p in self.metric_prefixes
        })
        self.exact = torch.nn.ModuleDict({p: _mean_metric() for p in self.metric_prefixes})
        self.eval_loss = torch.nn.ModuleDict({p: _mean_metric() for p in self.metric_prefixes})
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(spec.num_classes, average="micro",
                                                                         validate_args=False)
        # clip + skip non-finite steps; counters live on the device (fpt.fastpath.StepGuard)
        self.guard = fastpath.StepGuard(config.grad_clip, config.max_bad_steps)
        self.feature_cache = None  # fpt.features.FeatureCache when config.cache_features
        if config.cache_features:
            from fpt.features import FeatureCache

            self.feature_cache = FeatureCache(self.model, config)
        self.first_step_at_target: int | None = None
        self.best_val: tuple[float, int] | None = None  # (accuracy, step)
        self.eval_tag = ""  # prefix of logged test metrics ("best/": the test at the best validation, fpt.best)

    # non-finite step counters (device tensors; reading them is a host sync)
    @property
    def bad_steps_total(self) -> int:
        return self.guard.total_steps()

    @bad_steps_total.setter
    def bad_steps_total(self, value: int) -> None:
        self.guard.set_total(value)

    @property
    def bad_steps_in_a_row(self) -> int:
        return self.guard.in_a_row_steps()

    def setup(self, stage: str) -> None:
        # DDP reduces gradients only of parameters that require them (frozen ones have none) and,
        # with find_unused_parameters=False, without a per-step search. The frozen weights are rebuilt
        # identically on every rank, so DDP's start-up broadcast of them is skipped too.
        self._ddp_params_and_buffers_to_ignore = ddp_ignored_names(self)
        accelerator = "gpu" if self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator" else "cpu"
        if fastpath.use_compile(self.config.compile, accelerator) and not getattr(self, "_compiled", False):
            # In place: parameter names, checkpoints and model.safetensors keep their keys.
            fastpath.compile_in_place(self.model.backbone)
            self._compiled = True

    # data
    def _rank_world(self):
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: Split, batch_sampler: Sampler) -> DataLoader:
        # Cached features are sliced from memory (or a memory map): no worker processes needed.
        workers = 0 if self.feature_cache is not None else self.config.num_workers
        return DataLoader(
            _SplitDataset(split), batch_size=None, sampler=batch_sampler, num_workers=workers,
            pin_memory=self.config.device != "cpu" and torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _source(self, name: str, split: Split) -> Split:
        """The split itself or, with cache_features, its frozen read-out features (computed once)."""
        if self.feature_cache is None:
            return split
        return self.feature_cache.split(name, split, device=self.device,
                                        autocast=self.trainer.precision_plugin.forward_context)

    def train_dataloader(self):
        rank, world = self._rank_world()
        # With gradient accumulation each optimizer step reads `accumulate_grad_batches` micro-batches:
        # a resumed run restarts at micro-batch global_step x accumulate (the stream position it stopped at).
        accumulate = self.config.accumulate_grad_batches
        sampler = StreamBatchSampler(self.config.batch_size // world, lambda: self.trainer.global_step * accumulate,
                                     rank, world)
        return self._loader(self._source("train", self.task.train()), sampler)

    def _eval_loader(self, split: Split, name: str):
        rank, world = self._rank_world()
        split = self._source(name, split)
        return self._loader(split, EvalBatchSampler(len(split), self.config.eval_batch_size, rank, world))

    def val_dataloader(self):
        return self._eval_loader(self.task.val(), "val")

    def test_dataloader(self):
        return [self._eval_loader(s, "test-" + name) for name, s in self.task.test().items()]

    # steps
    def _logits_and_loss(self, batch):
        if "features" in batch:  # cache_features: the frozen part already ran (fpt.features)
            logits = self.model.head_logits(batch["features"])
        else:
            logits = self.model(batch["x"], batch.get("mask"))
        y = batch["y"].reshape(logits.shape[0], -1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return logits, y, loss

    def training_step(self, batch, batch_idx):
        with torch.profiler.record_function("fpt::forward"):  # the phases `fpt bench` reports (free unprofiled)
            logits, y, loss = self._logits_and_loss(batch)
            self.train_acc(logits.detach().argmax(-1).reshape(-1), y.reshape(-1))
            # prog_bar=False: Lightning turns progress-bar metrics into Python numbers after every batch
            # (a host sync per step on a GPU); _ProgressBar shows them, read only when it refreshes.
            self.log("train/loss", loss, on_step=True, on_epoch=False)
            self.log("train/accuracy", self.train_acc, on_step=True, on_epoch=False)
        return loss

    def backward(self, loss, *args, **kwargs):
        with torch.profiler.record_function("fpt::backward"):
            super().backward(loss, *args, **kwargs)

    def _eval_step(self, batch, prefix: str):
        logits, y, loss = self._logits_and_loss(batch)
        pred = logits.argmax(-1)
        self.acc[prefix].update(pred.reshape(-1), y.reshape(-1))
        self.exact[prefix].update((pred == y).all(1).float())
        self.eval_loss[prefix].update(loss, weight=y.shape[0])

    def _log_eval(self, prefix: str):
        # Global over all ranks: each rank evaluates its share of the batches (EvalBatchSampler) and
        # torchmetrics' compute() reduces the metric states across processes (sum of counts, weighted
        # means) before computing, so no sync_dist is needed (it would average the ranks' numbers).
        tag = self.eval_tag
        values = {
            f"{tag}{prefix}/accuracy": self.acc[prefix].compute(),
            f"{tag}{prefix}/exact_accuracy": self.exact[prefix].compute(),
            f"{tag}{prefix}/loss": self.eval_loss[prefix].compute(),
        }
        self.log_dict(values, prog_bar=prefix == "val", sync_dist=False)
        for m in (self.acc[prefix], self.exact[prefix], self.eval_loss[prefix]):
            m.reset()
        return {k: float(v) for k, v in values.items()}

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        values = self._log_eval("val")
        if self.trainer.sanity_checking:
            return
        acc, step = values["val/accuracy"], int(self.global_step)
        if self.best_val is None or acc > self.best_val[0]:
            self.best_val = (acc, step)
        if self.first_step_at_target is None and acc >= self.config.target_accuracy - 1e-9:
            self.first_step_at_target = step
        if self.config.stop_at_target and self.first_step_at_target is not None:
            # Every rank computes the same global metric, so every rank stops at the same step.
            self.trainer.should_stop = True

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval_step(batch, self.test_names[dataloader_idx])

    def on_test_epoch_end(self):
        for name in self.test_names:
            self._log_eval(name)

    # optimisation
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no parameter trains under this freeze preset")
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        precision = self.trainer.precision if self._trainer is not None else "32-true"
        fused = fastpath.use_fused(self.config.fused_optimizer, accelerator, precision)
        return fastpath.make_optimizer(params, self.config.lr, self.config.weight_decay, fused=fused)

    def on_before_optimizer_step(self, optimizer):
        """Clip the gradient norm; a non-finite norm skips the step, is counted and logged.

        With a fused optimizer nothing here waits for the device (see fpt.fastpath.StepGuard): the
        host reads the counters every ``log_every_n_steps`` steps and before each validation.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = self.guard.before_step(optimizer, params, step=int(self.global_step))
        if not self.guard.sync_free:
            self._check_bad_steps()  # the plain path has read the norm already: checking is free
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if self.guard.total is not None:
            self.log("train/skipped_steps", self.guard.total.float(), on_step=True, on_epoch=False)

    def _check_bad_steps(self) -> None:
        tripped, step = self.guard.check()
        if tripped:
            raise NonFiniteGradientError(
                f"{self.config.max_bad_steps} steps in a row had a non-finite gradient norm (the last of them at "
                f"step {step}). Likely causes: a learning rate too high (now {self.config.lr}); "
                "an input that is exactly zero at every position (normalise inputs, keep learned positions on); "
                "fp16 overflow (use bf16 or 32-bit precision). The last good checkpoint is "
                f"{Path(self.config.run_dir) / 'checkpoints' / 'last.ckpt'}."
            )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.guard.sync_free:
            step = int(self.global_step)
            if step % max(1, self.trainer.log_every_n_steps) == 0 or step >= self.trainer.max_steps:
                self._check_bad_steps()

    def on_validation_epoch_start(self):
        if self.guard.sync_free and not self.trainer.sanity_checking:
            self._check_bad_steps()

    # checkpoints: trained parameters only, plus the backbone's identity
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        checkpoint["fpt"] = self.checkpoint_meta()

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": self.model.backbone.identity(),
            "task_spec": dataclasses.asdict(self.task.spec),  # checked on load: same task shape
            "bad_steps_total": self.bad_steps_total,
            "first_step_at_target": self.first_step_at_target,
            "best_val": list(self.best_val) if self.best_val else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("fpt")
        if not meta or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an fpt checkpoint (no 'fpt' section of format fpt-1)")
        check_identity(meta["identity"], self.model.backbone.identity())
        from fpt.rundir import check_task_spec

        check_task_spec(meta.get("task_spec"), self.task.spec, "the checkpoint")
        expected = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        got = set(checkpoint["state_dict"])
        if got != expected:
            raise ValueError(
                f"checkpoint parameters do not match this model: missing {sorted(expected - got)[:5]}, "
                f"unexpected {sorted(got - expected)[:5]}"
            )
        self.bad_steps_total = meta.get("bad_steps_total", 0)
        self.first_step_at_target = meta.get("first_step_at_target")
        self.best_val = tuple(meta["best_val"]) if meta.get("best_val") else None


def ddp_ignored_names(module: FPTModule) -> list[str]:
    """Names DDP leaves alone: frozen parameters (no gradient to reduce, identical on every rank) and buffers."""
    return ([f"model.{n}" for n, p in module.model.named_parameters() if not p.requires_grad]
            + [f"model.{n}" for n, _ in module.model.named_buffers()])


def check_identity(saved: dict[str, str], current: dict[str, str]) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in ("backbone", "arch", "init", "layers", "hidden_size", "fingerprint") if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("checkpoint belongs to another backbone: " + "; ".join(diffs))


# -- building blocks ---------------------------------------------------------------------------
def model_config(config: RunConfig) -> ModelConfig:
    return ModelConfig(freeze=config.freeze, freeze_rules=config.freeze_rules, readout=config.readout,
                       learned_positions=config.learned_positions, input_init=config.input_init,
                       input_dropout=config.input_dropout)


def build_model(config: RunConfig, task=None) -> FPT:
    """The FPT model of a config, with seeded new layers (same seed, same initial weights)."""
    task = task or make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
    backbone = load_backbone(
        config.backbone, init=config.init, layers=config.layers, seed=config.seed,
        attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code,
        lstm_width=config.lstm_width, dropout=config.backbone_dropout, lstm_kind=config.lstm_kind,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return FPT(backbone, task.spec, model_config(config))


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(accelerator, precision) for Lightning."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu (or auto)")
    accelerator = "gpu" if (config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())) else "cpu"
    precision = config.precision
    if precision == "auto":
        # bf16 autocast is ~1.9x *slower* than fp32 on the 2-core CPUs we measured; on GPUs it is the fast path.
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    return accelerator, precision


def save_trained(model: FPT, path: Path, extra: dict[str, str] | None = None,
                 trained: dict[str, torch.Tensor] | None = None) -> None:
    """``model.safetensors``: trained parameters + the backbone identity (metadata strings).

    ``trained``: the tensors to write instead of ``model``'s own (FSDP: gathered from the shards)."""
    from safetensors.torch import save as safetensors_bytes

    from fpt.io import atomic_write_bytes
    from fpt.rundir import spec_dict

    trained = model.trainable_state_dict() if trained is None else trained
    tensors = {n: t.detach().cpu().contiguous() for n, t in trained.items()}
    metadata = {"format": CHECKPOINT_FORMAT, **model.backbone.identity(),
                "task_spec": json.dumps(spec_dict(model.spec)), **(extra or {})}
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata=metadata))  # tmp + fsync + rename


def save_prediction_layout(task, run_dir: Path) -> None:
    """How raw arrays become this task's inputs (patching, scaling, normalisation), for ``fpt predict``."""
    if hasattr(task, "prediction_layout"):
        atomic_write_json(Path(run_dir) / "prediction_layout.json", task.prediction_layout().to_dict())


def load_trained(model: FPT, path: Path) -> None:
    """Load ``model.safetensors`` onto a freshly built model, checking identity and completeness."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated / corrupt files
        run_dir = Path(path).parent
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupted. Rewrite it from the "
            f"run's checkpoint with fpt fit --resume {run_dir} (it re-saves model.safetensors from "
            f"{run_dir / 'checkpoints' / 'last.ckpt'})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an fpt checkpoint (format {metadata.get('format')!r})")
    check_identity(metadata, model.backbone.identity())
    from fpt.rundir import check_task_spec

    check_task_spec(json.loads(metadata["task_spec"]) if "task_spec" in metadata else None, model.spec, str(path))
    expected = model.trainable_state_dict()
    if set(tensors) != set(expected):
        raise ValueError(f"{path}: missing {sorted(set(expected) - set(tensors))[:5]}, "
                         f"unexpected {sorted(set(tensors) - set(expected))[:5]}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the model needs {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)


class _ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run keeps the rows logged before its checkpoint.

    (Lightning's writer deletes an existing ``metrics.csv``; rows logged after the checkpoint by a
    run that then died are dropped, since the resumed run logs those steps again.)
    """

    def __init__(self, save_dir: str, keep_before_step: int | None):
        super().__init__(save_dir=save_dir, name="", version="")
        self.keep_before_step = keep_before_step

    @property
    def experiment(self):
        if self._experiment is None:
            keep = self.keep_before_step

            class Writer(ExperimentWriter):
                def _check_log_dir_exists(self):
                    if not os.path.isfile(self.metrics_file_path):
                        return
                    with open(self.metrics_file_path, newline="") as f:
                        reader = csv.DictReader(f)
                        header = list(reader.fieldnames or [])
                        rows = [r for r in reader if keep is not None and r.get("step") and int(float(r["step"])) < keep]
                    with open(self.metrics_file_path, "w", newline="") as f:
                        writer = csv.DictWriter(f, fieldnames=header)
                        writer.writeheader()
                        writer.writerows(rows)
                    self.metrics_keys = sorted(header)

            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = Writer(log_dir=self.log_dir)
        return self._experiment


class _Progress(Callback):
    """Prints one line per validation, for logs that are read after the fact (no progress bar in files)."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        if "val/accuracy" in m:
            print(f"step {trainer.global_step:>6}  val accuracy {float(m['val/accuracy']):.4f}  "
                  f"exact {float(m['val/exact_accuracy']):.4f}  loss {float(m['val/loss']):.4f}", flush=True)


def _progress_bar(refresh_rate: int) -> Callback:
    """Lightning's tqdm bar, also showing the train loss and accuracy, read when it refreshes."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class _ProgressBar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            for name in ("train/loss", "train/accuracy"):
                value = trainer.callback_metrics.get(name)  # device tensors: reading them is the sync
                if value is not None:
                    metrics[name.split("/")[1]] = f"{float(value):.3f}"
            return metrics

    return _ProgressBar(refresh_rate=refresh_rate)


# -- the two entry points -----------------------------------------------------------------------
def _trainer(config: RunConfig, run_dir: Path, enable_progress_bar: bool | None = None,
             resumed_step: int | None = None, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    from fpt.rundir import AtomicCheckpointIO, FlushLogsOnCheckpoint, ResumeCheckpoint

    accelerator, precision = resolve_device(config)
    callbacks: list[Callback] = [
        _Progress(),
        *(extra_callbacks or []),
    ]
    if enable_progress_bar is None:
        enable_progress_bar = os.isatty(2)
    if enable_progress_bar:
        # The bar reads its metrics on the host; on a GPU, refreshing every step would sync every step.
        callbacks.append(_progress_bar(1 if accelerator == "cpu" else min(50, config.eval_every)))
    # checkpoints/last.ckpt after each validation and the final step (fpt.rundir.ResumeCheckpoint says why
    # not ModelCheckpoint); last, so that it includes every callback's state after a validation.
    callbacks += [ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt", config.eval_every),
                  FlushLogsOnCheckpoint()]  # metrics.csv rows up to a checkpoint survive a kill right after it
    loggers: list = [_ResumableCSVLogger(str(run_dir), keep_before_step=resumed_step)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    except ImportError:
        pass
    from fpt.distributed import make_strategy

    return L.Trainer(
        accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=make_strategy(config, accelerator), precision=precision, max_steps=config.steps,
        max_epochs=-1, check_val_every_n_epoch=None,
        # val_check_interval counts batches, not optimizer steps: with accumulation, A batches per step
        val_check_interval=config.eval_every * config.accumulate_grad_batches,
        accumulate_grad_batches=config.accumulate_grad_batches,
        plugins=[AtomicCheckpointIO()],  # checkpoints: temp file + fsync + rename, read with weights_only=True
        num_sanity_val_steps=0, callbacks=callbacks, logger=loggers, log_every_n_steps=min(50, config.eval_every),
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, default_root_dir=str(run_dir),
        deterministic=False, use_distributed_sampler=False, enable_checkpointing=False,
    )


def _quiet_lightning():
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*infinite.*")
    # _log_eval logs values torchmetrics already reduced across ranks; Lightning cannot tell.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level in distributed.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__`.*")
    # Lightning 2.6 calls a deprecated torch pytree API internally; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


def fit(config: RunConfig, resume: bool = False, enable_progress_bar: bool | None = None,
        overwrite: bool = False, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train, test and write the run directory; returns the contents of ``results.json``.

    ``callbacks``: more Lightning callbacks for this run (e.g. ``fpt bench``'s step timer).

    An existing run in ``config.run_dir`` is never overwritten: ``resume=True`` continues it,
    ``overwrite=True`` moves it aside to ``RUN_DIR.old-<timestamp>`` first. The run directory is
    locked (``RUN_DIR/.lock``) while this runs. SIGINT/SIGTERM save a checkpoint and raise
    :class:`fpt.health.TrainingInterrupted`.
    """
    from fpt.rundir import RunLock, check_task_spec, is_run_dir, prepare_run_dir, read_checkpoint

    _quiet_lightning()
    config.validate()
    run_dir = Path(config.run_dir or config.default_run_dir())
    config.run_dir = str(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # Under torchrun / srun every process runs this function; only rank 0 checks and writes the run
    # directory (another rank could otherwise find rank 0's fresh config.yaml and refuse to start).
    from fpt.distributed import global_rank_from_env, local_processes

    rank_zero = global_rank_from_env() == 0
    if resolve_device(config)[0] == "cpu":
        torch.set_num_threads(fastpath.cpu_threads(config.num_threads, local_processes(config)))
    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(last)  # missing, truncated, foreign: a clear error before any work
    elif rank_zero:
        prepare_run_dir(run_dir, resume=False, overwrite=overwrite, move=False)  # only checks, moves nothing yet
    if rank_zero:
        RunLock(run_dir).check()  # a live run in this directory: say so before the slow model build
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.time()
    # Build task and model before writing anything: a bad option (task, preset, --layers) must not
    # leave a config.yaml behind that makes the run directory refuse the corrected command.
    module = FPTModule(config)
    counts = module.model.parameter_counts()
    if rank_zero:
        print(f"fpt: {config.task} on {config.backbone} ({config.init}, {module.model.backbone.num_layers} layers), "
              f"freeze={config.freeze}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
              f"({100 * counts['trainable'] / counts['total']:.3f}%)", flush=True)
    resumed_step = None
    if checkpoint is not None:  # refuse another backbone or task shape before config.yaml is overwritten
        check_identity(checkpoint["fpt"].get("identity", {}), module.model.backbone.identity())
        check_task_spec(checkpoint["fpt"].get("task_spec"), module.task.spec, str(last))
        resumed_step = int(checkpoint["global_step"])
        checkpoint = None
    lock = RunLock(run_dir)
    if rank_zero:
        moved = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        if moved is not None:
            print(f"fpt: --overwrite: moved the previous run in {run_dir} to {moved}", flush=True)
        lock.acquire()
        if lock.took_over:
            print(f"fpt: removed a stale lock of pid {lock.took_over.get('pid')} (no longer running) in {run_dir}",
                  flush=True)
        if not resume and is_run_dir(run_dir):  # another run finished in between the check and the lock
            lock.release()
            prepare_run_dir(run_dir, resume=False, overwrite=False, move=False)
    try:
        return _fit_locked(config, module, run_dir, resume, resumed_step, enable_progress_bar, rank_zero, start,
                           list(callbacks or []))
    finally:
        lock.release()


def _checkpoint_note(last: Path, config: RunConfig) -> str:
    """Which step the last good checkpoint holds, for error messages."""
    if not last.exists():
        return (f" No checkpoint had been written yet (the first is taken at step {config.eval_every}): fix the cause "
                f"and start again (--overwrite moves this run aside).")
    try:
        step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    except Exception:
        return ""
    return (f" It holds step {step}. A resumed run repeats the same steps with the same settings, so fix the cause "
            f"in a new run (another --run-dir, or --overwrite) unless it was transient.")


def _fit_locked(config, module, run_dir: Path, resume: bool, resumed_step, enable_progress_bar, rank_zero, start,
                user_callbacks: list[Callback]):
    from fpt.health import (ChanceWarning, GracefulStop, PhaseTracker, StopForSignal, TrainingInterrupted,
                            is_out_of_memory, out_of_memory_error)
    from fpt.rundir import read_checkpoint, save_checkpoint_file

    last = run_dir / "checkpoints" / "last.ckpt"
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero:
        save_config(config, run_dir / "config.yaml")
    stopper = GracefulStop(last, config.eval_every)
    phases = PhaseTracker()
    callbacks: list[Callback] = [phases]
    chance = None
    if config.chance_warning_evals > 0:
        spec = module.task.spec
        n_val = len(module.task.val()) * spec.num_labels
        chance = ChanceWarning(spec.num_classes, n_val, config.chance_warning_evals,
                               hints={"lr": config.lr, "layers": module.model.backbone.num_layers})
        callbacks.append(chance)
    from fpt.best import BEST_WEIGHTS, BestValidationWeights

    best = BestValidationWeights(run_dir / BEST_WEIGHTS, enabled=config.strategy != "fsdp")
    callbacks.append(best)  # before the checkpoint writers: its best step is in each checkpoint
    callbacks += user_callbacks
    callbacks.append(stopper)  # after the callbacks whose state its checkpoint must include
    trainer = _trainer(config, run_dir, enable_progress_bar, resumed_step, extra_callbacks=callbacks)
    resume_command = f"fpt fit --resume {run_dir} --steps {config.steps}"
    try:
        with stopper.installed():
            trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    except StopForSignal as stop:
        name = signal.Signals(stop.signum).name
        raise TrainingInterrupted(
            f"stopped by {name} at step {stop.step} of {config.steps}; checkpoint written to {last}.\n"
            f"Resume with: {resume_command}", stop.signum, stop.step, resume_command) from None
    except NonFiniteGradientError as err:
        raise NonFiniteGradientError(str(err) + _checkpoint_note(last, config)) from None
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory_error(err, phases.phase, config) from err
        raise
    # A signal after the last checkpoint: stop before testing (one process; with several, the ranks could
    # disagree here, so they test together: the run is complete and the test takes seconds).
    if stopper.signum is not None and trainer.world_size <= 1:
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(stopper.signum).name} after the last training step ({trainer.global_step}); "
            f"checkpoint written to {last}, the test did not run.\nResume with: {resume_command}",
            stopper.signum, int(trainer.global_step), resume_command)
    # ResumeCheckpoint wrote the end state (optimizer, loops) inside the loop (a checkpoint taken after
    # trainer.fit returns holds a finished epoch, which resumes with every logged step one late);
    # refresh fpt's own counters (best_val, first_step_at_target) in it.
    if trainer.is_global_zero and last.exists():
        checkpoint = read_checkpoint(last)
        checkpoint["fpt"] = module.checkpoint_meta()
        save_checkpoint_file(checkpoint, last)  # temp file + fsync + rename
    train_seconds = time.time() - start
    trained = None
    if config.strategy == "fsdp":  # parameters are sharded: gather full ones (every rank takes part; rank 0 gets them)
        names = set(module.model.trainable_state_dict())
        full = trainer.strategy.lightning_module_state_dict()
        trained = {k[len("model."):]: v for k, v in full.items() if k[len("model."):] in names}
    if trainer.is_global_zero:
        save_trained(module.model, run_dir / "model.safetensors", trained=trained)
        save_prediction_layout(module.task, run_dir)
    try:
        with stopper.installed():  # a signal now lets the test finish (seconds): the run completes
            test_metrics = _test(trainer, module)
            at_best = best.test_at_best(trainer, module, test_metrics)  # fpt.best: test at the best validation
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory_error(err, "test", config) from err
        raise
    results = _results(config, module, trainer, test_metrics, train_seconds, time.time() - start)
    adjust = getattr(module.task, "adjust_test_metrics", None)  # e.g. homology's paper-scaled accuracy
    if adjust is not None:
        adjust({k: v for k, v in at_best.items() if isinstance(v, dict)})
    results["at_best_val"] = at_best
    if chance is not None and chance.message:
        results["warnings"] = [chance.message]
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "results.json", results)
    return results


def _test(trainer: L.Trainer, module: FPTModule) -> dict[str, dict[str, float]]:
    out = trainer.test(module, verbose=False)
    metrics: dict[str, dict[str, float]] = {}
    merged = {k: v for d in out for k, v in d.items()}
    for key, value in merged.items():
        split, name = key.split("/", 1)
        metrics.setdefault(split, {})[name] = float(value)
    return metrics


def _results(config, module, trainer, test_metrics, train_seconds, seconds) -> dict[str, Any]:
    counts = module.model.parameter_counts()
    accelerator, precision = resolve_device(config)
    device = torch.cuda.get_device_name(0) if accelerator == "gpu" else f"cpu ({torch.get_num_threads()} threads)"
    results = {
        "task": config.task, "task_options": module.task.options.__dict__, "backbone": config.backbone,
        "init": config.init, "freeze": config.freeze, "layers": module.model.backbone.num_layers,
        "steps": int(trainer.global_step), "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        "seconds": round(seconds, 2), "train_seconds": round(train_seconds, 2),
        "device": device, "precision": precision, "label": config.label,
        "world_size": int(trainer.world_size),  # processes that shared each global batch (DDP)
        "backbone_identity": module.model.backbone.identity(),  # incl. source_* for run:PATH backbones
        "skipped_steps": module.bad_steps_total,
        "protocol": _protocol_record(config, module.task),  # fpt.protocol: what --protocol set, and what was used
        "val": {
            "best_accuracy": module.best_val[0] if module.best_val else None,
            "best_step": module.best_val[1] if module.best_val else None,
            "target_accuracy": config.target_accuracy,
            "first_step_at_target": module.first_step_at_target,
        },
    }
    adjust = getattr(module.task, "adjust_test_metrics", None)
    if adjust is not None:
        adjust(test_metrics)
    results.update(test_metrics)
    data = getattr(module.task, "preprocessing", None)  # what the data options changed (ListOps, homology)
    if data:
        results["data"] = data
    if config.backbone == "lstm":
        results["lstm_kind"] = config.lstm_kind
    return results


def _protocol_record(config: RunConfig, task) -> dict[str, Any]:
    from fpt.protocol import record

    return record(config, dict(task.options.__dict__))


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[RunConfig, FPT]:
    """A trained run's config and model (backbone rebuilt, trained parameters loaded and checked)."""
    from fpt.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} does not exist: the run did not finish; resume it with "
                                f"fpt fit --resume {run_dir}")
    model = build_model(config)
    load_trained(model, weights)
    return config, model.to(device).eval()


def test_run(run_dir: str | Path, enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run on its test splits (``fpt test``); updates nothing on disk."""
    _quiet_lightning()
    config, model = load_run(run_dir)
    module = FPTModule(config, model=model)
    accelerator, precision = resolve_device(config)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_progress_bar=bool(enable_progress_bar), enable_model_summary=False)
    return _test(trainer, module)


def read_results(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "results.json").read_text())
