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
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """Consecutive batches over ``range(n)``, this rank's share only (ranks take every world-th batch)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.b, self.rank, self.world = n, batch_size, rank, world

    def _starts(self):
        return list(range(0, self.n, self.b))[self.rank::self.world]

    def __iter__(self):
        for s in self._starts():
            yield np.arange(s, min(s + self.b, self.n), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._starts())


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
            p: torchmetrics.classification.MulticlassAccuracy(spec.num_classes, average="micro")
            for p in self.metric_prefixes
        })
        self.exact = torch.nn.ModuleDict({p: torchmetrics.MeanMetric() for p in self.metric_prefixes})
        self.eval_loss = torch.nn.ModuleDict({p: torchmetrics.MeanMetric() for p in self.metric_prefixes})
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(spec.num_classes, average="micro")
        self.bad_steps_in_a_row = 0
        self.bad_steps_total = 0
        self.first_step_at_target: int | None = None
        self.best_val: tuple[float, int] | None = None  # (accuracy, step)

    # data
    def _rank_world(self):
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: Split, batch_sampler: Sampler) -> DataLoader:
        return DataLoader(
            _SplitDataset(split), batch_size=None, sampler=batch_sampler, num_workers=self.config.num_workers,
            pin_memory=self.config.device != "cpu" and torch.cuda.is_available(),
            persistent_workers=self.config.num_workers > 0,
        )

    def train_dataloader(self):
        rank, world = self._rank_world()
        sampler = StreamBatchSampler(self.config.batch_size // world, lambda: self.trainer.global_step, rank, world)
        return self._loader(self.task.train(), sampler)

    def _eval_loader(self, split: Split):
        rank, world = self._rank_world()
        return self._loader(split, EvalBatchSampler(len(split), self.config.eval_batch_size, rank, world))

    def val_dataloader(self):
        return self._eval_loader(self.task.val())

    def test_dataloader(self):
        return [self._eval_loader(s) for s in self.task.test().values()]

    # steps
    def _logits_and_loss(self, batch):
        logits = self.model(batch["x"], batch.get("mask"))
        y = batch["y"].reshape(logits.shape[0], -1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return logits, y, loss

    def training_step(self, batch, batch_idx):
        logits, y, loss = self._logits_and_loss(batch)
        self.train_acc(logits.detach().argmax(-1).reshape(-1), y.reshape(-1))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/accuracy", self.train_acc, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch, prefix: str):
        logits, y, loss = self._logits_and_loss(batch)
        pred = logits.argmax(-1)
        self.acc[prefix].update(pred.reshape(-1), y.reshape(-1))
        self.exact[prefix].update((pred == y).all(1).float())
        self.eval_loss[prefix].update(loss, weight=y.shape[0])

    def _log_eval(self, prefix: str):
        values = {
            f"{prefix}/accuracy": self.acc[prefix].compute(),
            f"{prefix}/exact_accuracy": self.exact[prefix].compute(),
            f"{prefix}/loss": self.eval_loss[prefix].compute(),
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
        if self.first_step_at_target is None and acc >= self.config.target_accuracy - 1e-12:
            self.first_step_at_target = step

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
        fused = self.config.device != "cpu" and torch.cuda.is_available()
        if self.config.weight_decay:
            return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay, fused=fused or None)
        return torch.optim.Adam(params, lr=self.config.lr, fused=fused or None)

    def on_before_optimizer_step(self, optimizer):
        """Clip the gradient norm; a non-finite norm skips the step (grads dropped), counted and logged."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(norm))
        if finite:
            self.bad_steps_in_a_row = 0
        else:
            for p in params:
                p.grad = None  # Adam skips parameters without a gradient: the step changes nothing
            self.bad_steps_in_a_row += 1
            self.bad_steps_total += 1
            if self.bad_steps_in_a_row >= self.config.max_bad_steps:
                raise NonFiniteGradientError(
                    f"{self.bad_steps_in_a_row} steps in a row had a non-finite gradient norm (last at step "
                    f"{self.global_step}). Likely causes: a learning rate too high (now {self.config.lr}); "
                    "an input that is exactly zero at every position (normalise inputs, keep learned positions on); "
                    "fp16 overflow (use bf16 or 32-bit precision). The last good checkpoint is "
                    f"{Path(self.config.run_dir) / 'checkpoints' / 'last.ckpt'}."
                )
        self.log("train/grad_norm", norm if finite else torch.tensor(float("nan")), on_step=True, on_epoch=False)
        self.log("train/skipped_steps", float(self.bad_steps_total), on_step=True, on_epoch=False)

    # checkpoints: trained parameters only, plus the backbone's identity
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        checkpoint["fpt"] = {
            "format": CHECKPOINT_FORMAT,
            "identity": self.model.backbone.identity(),
            "bad_steps_total": self.bad_steps_total,
            "first_step_at_target": self.first_step_at_target,
            "best_val": list(self.best_val) if self.best_val else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("fpt")
        if not meta or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an fpt checkpoint (no 'fpt' section of format fpt-1)")
        check_identity(meta["identity"], self.model.backbone.identity())
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


def check_identity(saved: dict[str, str], current: dict[str, str]) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in ("backbone", "arch", "init", "layers", "hidden_size", "fingerprint") if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("checkpoint belongs to another backbone: " + "; ".join(diffs))


# -- building blocks ---------------------------------------------------------------------------
def model_config(config: RunConfig) -> ModelConfig:
    return ModelConfig(freeze=config.freeze, freeze_rules=config.freeze_rules, readout=config.readout,
                       learned_positions=config.learned_positions, input_init=config.input_init)


def build_model(config: RunConfig, task=None) -> FPT:
    """The FPT model of a config, with seeded new layers (same seed, same initial weights)."""
    task = task or make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
    backbone = load_backbone(
        config.backbone, init=config.init, layers=config.layers, seed=config.seed,
        attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code,
        lstm_width=config.lstm_width,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return FPT(backbone, task.spec, model_config(config))


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(accelerator, precision) for Lightning."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    accelerator = "gpu" if (config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())) else "cpu"
    precision = config.precision
    if precision == "auto":
        # bf16 autocast is ~1.9x *slower* than fp32 on the 2-core CPUs we measured; on GPUs it is the fast path.
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    return accelerator, precision


def save_trained(model: FPT, path: Path, extra: dict[str, str] | None = None) -> None:
    """``model.safetensors``: trained parameters + the backbone identity (metadata strings)."""
    tensors = {n: t.detach().cpu().contiguous() for n, t in model.trainable_state_dict().items()}
    metadata = {"format": CHECKPOINT_FORMAT, **model.backbone.identity(), **(extra or {})}
    tmp = Path(path).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_trained(model: FPT, path: Path) -> None:
    """Load ``model.safetensors`` onto a freshly built model, checking identity and completeness."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupted") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an fpt checkpoint (format {metadata.get('format')!r})")
    check_identity(metadata, model.backbone.identity())
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


# -- the two entry points -----------------------------------------------------------------------
def _trainer(config: RunConfig, run_dir: Path, enable_progress_bar: bool | None = None,
             resumed_step: int | None = None) -> L.Trainer:
    accelerator, precision = resolve_device(config)
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True, save_top_k=0,
                        every_n_train_steps=config.eval_every, auto_insert_metric_name=False),
        _Progress(),
    ]
    if config.stop_at_target:
        callbacks.append(EarlyStopping("val/accuracy", mode="max", patience=10**9,
                                       stopping_threshold=config.target_accuracy - 1e-12, check_on_train_epoch_end=False))
    if enable_progress_bar is None:
        enable_progress_bar = os.isatty(2)
    loggers: list = [_ResumableCSVLogger(str(run_dir), keep_before_step=resumed_step)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    except ImportError:
        pass
    return L.Trainer(
        accelerator=accelerator, devices=config.devices, precision=precision, max_steps=config.steps,
        max_epochs=-1, val_check_interval=config.eval_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, callbacks=callbacks, logger=loggers, log_every_n_steps=min(50, config.eval_every),
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, default_root_dir=str(run_dir),
        deterministic=False, use_distributed_sampler=False,
    )


def _quiet_lightning():
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*infinite.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__`.*")
    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


def fit(config: RunConfig, resume: bool = False, enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Train, test and write the run directory; returns the contents of ``results.json``."""
    _quiet_lightning()
    config.validate()
    run_dir = Path(config.run_dir or config.default_run_dir())
    config.run_dir = str(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"nothing to resume in {run_dir}: {last} does not exist")
    elif (run_dir / "config.yaml").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")

    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.time()
    module = FPTModule(config)
    counts = module.model.parameter_counts()
    print(f"fpt: {config.task} on {config.backbone} ({config.init}, {module.model.backbone.num_layers} layers), "
          f"freeze={config.freeze}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
          f"({100 * counts['trainable'] / counts['total']:.3f}%)", flush=True)
    resumed_step = None
    if resume:
        resumed_step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    trainer = _trainer(config, run_dir, enable_progress_bar, resumed_step)
    trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    # Lightning's ModelCheckpoint only saves on its interval; make sure the end state is resumable.
    trainer.save_checkpoint(last, weights_only=False)  # full resume state (optimizer, loops)
    train_seconds = time.time() - start
    if trainer.is_global_zero:
        save_trained(module.model, run_dir / "model.safetensors")
    test_metrics = _test(trainer, module)
    results = _results(config, module, trainer, test_metrics, train_seconds, time.time() - start)
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
        "skipped_steps": module.bad_steps_total,
        "val": {
            "best_accuracy": module.best_val[0] if module.best_val else None,
            "best_step": module.best_val[1] if module.best_val else None,
            "target_accuracy": config.target_accuracy,
            "first_step_at_target": module.first_step_at_target,
        },
    }
    results.update(test_metrics)
    return results


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
