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

import dataclasses
import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Sampler

from fpt import fastpath
from fpt.callbacks import (
    BEST_WEIGHTS, AdaptiveThreads, AtomicCheckpointIO, BestValidationWeights, ChanceWarning, FlushLogsOnCheckpoint, GracefulStop,
    PhaseTracker, Progress, ResumableCSVLogger, ResumeCheckpoint, progress_bar,
)
from fpt.checkpoint import (  # noqa: F401  (re-exported: these were defined here)
    CHECKPOINT_FORMAT, NonFiniteWeightsError, build_model, check_compatible, check_identity, check_parameter_names,
    checkpoint_step, load_run, load_trained, model_config, read_checkpoint, read_results, save_checkpoint_file,
    save_prediction_layout, save_trained, spec_dict,
)
from fpt.config import RunConfig, save_config
from fpt.cpu import threads_beside
from fpt.data.splits import LengthBucketedStream, Split, by_length
from fpt.distributed import global_rank_from_env, local_processes, make_strategy
from fpt.features import FeatureCache
from fpt.health import (  # noqa: F401  (NonFiniteGradientError: re-exported, it was defined here)
    NonFiniteGradientError, StopForSignal, TrainingInterrupted, is_out_of_memory, out_of_memory_error,
)
from fpt.io import WRITE_ERRNOS, WriteError, atomic_write_json, write_error
from fpt.model import FPT
from fpt.objectives import make_objective
from fpt.rundir import RunLock, is_run_dir, is_unstarted_run, prepare_run_dir
from fpt.step import BACKWARD_RANGE, FORWARD_RANGE, logits_and_loss, resolve_precision
from fpt.tasks import make_task
from fpt.tasks.base import make_options


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

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, order: np.ndarray | None = None):
        if world > 1:
            if n < world:
                raise ValueError(f"an evaluation split of {n} samples cannot be shared by {world} processes")
            batch_size = max(1, min(batch_size, n // world))
        self.n, self.b, self.rank, self.world = n, batch_size, rank, world
        self.order = order  # the indices in the order to batch them (fpt.data.splits.by_length), else 0..n-1

    def _starts(self):
        return list(range(0, self.n, self.b))[self.rank::self.world]

    def __iter__(self):
        for s in self._starts():
            batch = np.arange(s, min(s + self.b, self.n), dtype=np.int64)
            yield batch if self.order is None else self.order[batch]

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
        # loss, metrics and model selection of the task's output type (fpt.objectives)
        self.objective = make_objective(spec, self.task)
        self.eval_metrics = torch.nn.ModuleDict({p: self.objective.metrics() for p in self.metric_prefixes})
        self.train_acc = self.objective.train_metric() if hasattr(self.objective, "train_metric") else None
        self.cpu_start = time.process_time()  # results.json cpu_seconds: this process's CPU time for the run
        # results.json seconds over every invocation of a resumed run: the earlier ones (from the checkpoint, each
        # counted up to its last checkpoint) and this one, from run_start (fit sets it) at step start_step
        self.run_start = time.time()
        self.start_step = 0
        self.earlier_invocations: list[dict[str, Any]] = []
        # clip + skip non-finite steps; counters live on the device (fpt.fastpath.StepGuard)
        self.guard = fastpath.StepGuard(config.grad_clip, config.max_bad_steps)
        self.feature_cache = None  # fpt.features.FeatureCache when config.cache_features
        if config.cache_features:
            self.feature_cache = FeatureCache(self.model, config)
        self.first_step_at_target: int | None = None
        # (value, step, loss) of the best validation: the objective's metric, ties broken by the lower loss
        self.best_val: tuple[float, int, float] | None = None
        self.eval_tag = ""  # prefix of logged test metrics ("best/": the test at the best validation)

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
        train = self.task.train()
        source = self._source("train", train)
        if self.config.bucket_by_length and self.task.spec.padded and train.token_lengths(np.zeros(0, np.int64)) is not None:
            # batches of similar length, grouped by the task's own lengths (also when training on cached features, so
            # that both train on the same batches); global batch = consecutive stream positions (StreamBatchSampler)
            source = LengthBucketedStream(source, self.config.batch_size, self.config.bucket_by_length, self.config.seed,
                                          lengths=train.token_lengths)
        return self._loader(source, sampler)

    def _eval_loader(self, split: Split, name: str):
        rank, world = self._rank_world()
        # longest first, similar lengths together: less padding, and a batch that does not fit shows up at once
        order = by_length(split) if self.task.spec.padded else None
        split = self._source(name, split)
        return self._loader(split, EvalBatchSampler(len(split), self.config.eval_batch_size, rank, world, order=order))

    def val_dataloader(self):
        return self._eval_loader(self.task.val(), "val")

    def test_dataloader(self):
        return [self._eval_loader(s, "test-" + name) for name, s in self.task.test().items()]

    # steps: the parts of fpt.step, in Lightning's hooks
    def _logits_and_loss(self, batch):
        return logits_and_loss(self.model, batch, self.objective)

    def training_step(self, batch, batch_idx):
        with torch.profiler.record_function(FORWARD_RANGE):  # the phases `fpt bench` reports (free unprofiled)
            logits, y, loss = self._logits_and_loss(batch)
            # prog_bar=False: Lightning turns progress-bar metrics into Python numbers after every batch
            # (a host sync per step on a GPU); _ProgressBar shows them, read only when it refreshes.
            self.log("train/loss", loss, on_step=True, on_epoch=False)
            if self.train_acc is not None:
                self.train_acc(logits.detach().argmax(-1).reshape(-1), y.reshape(-1))
                self.log("train/accuracy", self.train_acc, on_step=True, on_epoch=False)
            for name, value in self.objective.train_values(logits, y).items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        return loss

    def backward(self, loss, *args, **kwargs):
        with torch.profiler.record_function(BACKWARD_RANGE):
            super().backward(loss, *args, **kwargs)

    def _eval_step(self, batch, prefix: str):
        logits, y, loss = self._logits_and_loss(batch)
        self.objective.update(self.eval_metrics[prefix], logits, y, loss)

    def _log_eval(self, prefix: str):
        # Global over all ranks: each rank evaluates its share of the batches (EvalBatchSampler) and
        # torchmetrics' compute() reduces the metric states across processes (sum of counts, weighted
        # means) before computing, so no sync_dist is needed (it would average the ranks' numbers).
        values = {f"{self.eval_tag}{prefix}/{k}": v for k, v in self.objective.compute(self.eval_metrics[prefix]).items()}
        self.log_dict(values, prog_bar=prefix == "val", sync_dist=False)
        return {k: float(v) for k, v in values.items()}

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        values = self._log_eval("val")
        if self.trainer.sanity_checking:
            return
        # metrics.csv: a validation after N optimizer steps is labelled N, as the console and results.json say
        # (Lightning's default label is its count of finished batches, which it increments after the validation)
        self.log("step", float(self.global_step), on_step=False, on_epoch=True, sync_dist=False)
        acc, step = values[f"val/{self.objective.metric}"], int(self.global_step)
        loss = values.get("val/loss", float("nan"))
        best, best_loss = (self.best_val[0], self.best_val[2]) if self.best_val else (None, None)
        if self.objective.better(acc, best, loss, best_loss):
            self.best_val = (acc, step, loss)
        if self.objective.kind != "classification":
            return  # target_accuracy, stop_at_target: accuracy only
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
            "task_spec": spec_dict(self.task.spec),  # checked on load: same task shape
            "bad_steps_total": self.bad_steps_total,
            "first_step_at_target": self.first_step_at_target,
            "best_val": list(self.best_val) if self.best_val else None,
            "invocations": self.invocations(),
        }

    def invocations(self, seconds: float | None = None, train_seconds: float | None = None) -> list[dict[str, Any]]:
        """Every invocation of this run so far (``fpt fit``, then each ``--resume``): steps, wall and CPU seconds;
        this one up to now, or with the given ``seconds`` (its whole time, test included)."""
        now = {"from_step": self.start_step, "to_step": int(self.global_step),
               "seconds": round(time.time() - self.run_start if seconds is None else seconds, 2),
               "cpu_seconds": round(time.process_time() - self.cpu_start, 2)}
        if train_seconds is not None:
            now["train_seconds"] = round(train_seconds, 2)
        return [*self.earlier_invocations, now]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("fpt") or {}
        check_compatible(meta, self.model, "the checkpoint")
        expected = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        check_parameter_names(set(checkpoint["state_dict"]), expected, "the checkpoint")
        self.bad_steps_total = meta.get("bad_steps_total", 0)
        self.first_step_at_target = meta.get("first_step_at_target")
        best = meta.get("best_val")
        # checkpoints from before the loss tie-break hold (value, step)
        self.best_val = (best[0], best[1], best[2] if len(best) > 2 else float("nan")) if best else None
        self.start_step = int(checkpoint.get("global_step", 0))
        loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        progress = (loop.get("epoch_loop.batch_progress") or {}).get("total") or {}
        counters = loop.get("epoch_loop.state_dict")
        if counters is not None and progress and progress.get("completed") == progress.get("processed") \
                and self.start_step % self.config.eval_every:
            # Saved after the validation of a last step that is not a multiple of eval_every: Lightning restores
            # its count of finished batches (the step label of training rows in metrics.csv) one short here; it
            # corrects the count only for checkpoints taken at its own validation steps.
            counters["_batches_that_stepped"] = int(counters.get("_batches_that_stepped", 0)) + 1
        self.earlier_invocations = [dict(i) for i in meta.get("invocations") or [
            {"from_step": 0, "to_step": self.start_step, "seconds": None, "cpu_seconds": None}]]  # older checkpoints


def ddp_ignored_names(module: FPTModule) -> list[str]:
    """Names DDP leaves alone: frozen parameters (no gradient to reduce, identical on every rank) and buffers."""
    return ([f"model.{n}" for n, p in module.model.named_parameters() if not p.requires_grad]
            + [f"model.{n}" for n, _ in module.model.named_buffers()])


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(accelerator, precision) for Lightning."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu (or auto)")
    accelerator = "gpu" if (config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())) else "cpu"
    return accelerator, resolve_precision(config.precision, accelerator)


# -- the two entry points -----------------------------------------------------------------------
def _trainer(config: RunConfig, run_dir: Path, enable_progress_bar: bool | None = None,
             resumed_step: int | None = None, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    accelerator, precision = resolve_device(config)
    callbacks: list[Callback] = [Progress(), *(extra_callbacks or [])]
    if enable_progress_bar is None:
        enable_progress_bar = os.isatty(2)
    if enable_progress_bar:
        # The bar reads its metrics on the host; on a GPU, refreshing every step would sync every step.
        callbacks.append(progress_bar(1 if accelerator == "cpu" else min(50, config.eval_every)))
    # checkpoints/last.ckpt after each validation and the final step (fpt.callbacks.ResumeCheckpoint says why
    # not ModelCheckpoint); last, so that it includes every callback's state after a validation.
    callbacks += [ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt", config.eval_every),
                  FlushLogsOnCheckpoint()]  # metrics.csv rows up to a checkpoint survive a kill right after it
    loggers: list = [ResumableCSVLogger(str(run_dir), keep_before_step=resumed_step)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    except ImportError:
        pass
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
    # On a machine with SLURM installed, Lightning suggests srun to every run; fpt's SLURM use is docs/distributed.md.
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system but is not used.*")
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
    _quiet_lightning()
    config.validate()
    run_dir = Path(config.run_dir or config.default_run_dir())
    config.run_dir = str(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # Under torchrun / srun every process runs this function; only rank 0 checks and writes the run
    # directory (another rank could otherwise find rank 0's fresh config.yaml and refuse to start).
    rank_zero = global_rank_from_env() == 0
    adaptive = None
    if resolve_device(config)[0] == "cpu":
        threads = fastpath.cpu_threads(config.num_threads, local_processes(config))
        if fastpath.threads_are_fpts_choice(config.num_threads) and local_processes(config) == 1:
            # threads follow the cores other processes leave free, at the start and while training (fpt.cpu)
            adaptive = AdaptiveThreads(most=threads)
            time.sleep(0.25)
            threads = threads_beside(adaptive.load.cpus(), threads)
        torch.set_num_threads(threads)
    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(last)  # missing, truncated, foreign: a clear error before any work
    if rank_zero:  # only checks (a run there, a file in the way, read-only or full), moves nothing yet
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, move=False)
    if rank_zero:
        RunLock(run_dir).check()  # a live run in this directory: say so before the slow model build
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.time()
    # Build task and model before writing anything: a bad option (task, preset, --layers) must not
    # leave a config.yaml behind that makes the run directory refuse the corrected command.
    module = FPTModule(config)
    module.run_start = start
    counts = module.model.parameter_counts()
    if rank_zero:
        print(f"fpt: {config.task} on {config.backbone} ({config.init}, {module.model.backbone.num_layers} layers), "
              f"freeze={config.freeze}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
              f"({100 * counts['trainable'] / counts['total']:.3f}%)", flush=True)
        if config.steps % config.eval_every:  # the last step is always validated (fpt.callbacks.ResumeCheckpoint)
            when_ = (f"every {config.eval_every} steps and at the last step ({config.steps})"
                     if config.steps > config.eval_every else f"at the last step ({config.steps}) only: --steps "
                     f"{config.steps} is below --eval-every {config.eval_every}")
            print(f"fpt: validating {when_}", flush=True)
    resumed_step = None
    if checkpoint is not None:  # refuse another backbone or task shape before config.yaml is overwritten
        check_compatible(checkpoint["fpt"], module.model, str(last))
        resumed_step = int(checkpoint["global_step"])
        checkpoint = None
    lock = _take_run_dir(run_dir, resume, overwrite) if rank_zero else RunLock(run_dir)
    try:
        return _fit_locked(config, module, run_dir, resume, resumed_step, enable_progress_bar, rank_zero, start,
                           list(callbacks or []) + ([adaptive] if adaptive else []))
    finally:
        lock.release()


def _take_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Rank 0, once every option has been checked: move an old run aside (``--overwrite``) and lock the directory."""
    unstarted = not resume and is_unstarted_run(run_dir)
    moved = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if unstarted:
        print(f"fpt: {run_dir} held a run that ended before its first checkpoint (nothing to resume); starting "
              "afresh there" + (f" (its files moved to {moved})" if moved is not None else ""), flush=True)
    elif moved is not None:
        print(f"fpt: --overwrite: moved the previous run in {run_dir} to {moved}", flush=True)
    lock = RunLock(run_dir).acquire()
    if lock.took_over:
        print(f"fpt: removed a stale lock of pid {lock.took_over.get('pid')} (no longer running) in {run_dir}", flush=True)
    if not resume and is_run_dir(run_dir):  # another run finished in between the check and the lock
        lock.release()
        prepare_run_dir(run_dir, resume=False, overwrite=False, move=False)
    return lock


def _checkpoint_note(last: Path, config: RunConfig) -> str:
    """Which step the last good checkpoint holds, for error messages."""
    if not last.exists():
        return (f" No checkpoint had been written yet (the first is taken at step {config.eval_every}), so there is "
                "nothing to resume: fix the cause and run the command again (the directory is reused).")
    step = checkpoint_step(last)
    if step is None:
        return ""
    return (f" It holds step {step}. A resumed run repeats the same steps with the same settings, so fix the cause "
            f"in a new run (another --run-dir, or --overwrite) unless it was transient.")


def _health_callbacks(config: RunConfig, module: FPTModule, last: Path) -> tuple[GracefulStop, PhaseTracker,
                                                                               ChanceWarning | None]:
    """The callbacks that watch a run: signals (checkpoint, then stop), the phase for messages, chance level."""
    chance = None
    if config.chance_warning_evals > 0 and module.objective.kind == "classification":
        spec = module.task.spec
        chance = ChanceWarning(spec.num_classes, len(module.task.val()) * spec.num_labels, config.chance_warning_evals,
                               hints={"lr": config.lr, "layers": module.model.backbone.num_layers})
    return GracefulStop(last, config.eval_every), PhaseTracker(), chance


def _train(trainer: L.Trainer, module: FPTModule, config: RunConfig, last: Path, resume: bool, stopper: GracefulStop,
           phases: PhaseTracker, resume_command: str) -> None:
    """``trainer.fit``, with its ways of ending turned into fpt's errors (each says what to do)."""
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
    except NonFiniteWeightsError as err:
        raise NonFiniteWeightsError(str(err) + _checkpoint_note(last, config)) from None
    except OSError as err:
        if isinstance(err, WriteError) or err.errno in WRITE_ERRNOS:  # e.g. metrics.csv on a full disk
            raise WriteError(f"{write_error(err, err.filename or last.parent.parent)}.{_checkpoint_note(last, config)}") \
                from None
        raise
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


def _save_trained_state(trainer: L.Trainer, module: FPTModule, config: RunConfig, run_dir: Path, last: Path) -> None:
    """The end of training on disk: fpt's counters in last.ckpt, model.safetensors, the prediction layout."""
    # ResumeCheckpoint wrote the end state (optimizer, loops) inside the loop (a checkpoint taken after
    # trainer.fit returns holds a finished epoch, which resumes with every logged step one late);
    # refresh fpt's own counters (best_val, first_step_at_target) in it.
    if trainer.is_global_zero and last.exists():
        checkpoint = read_checkpoint(last)
        checkpoint["fpt"] = module.checkpoint_meta()
        save_checkpoint_file(checkpoint, last)  # temp file + fsync + rename
    trained = None
    if config.strategy == "fsdp":  # parameters are sharded: gather full ones (every rank takes part; rank 0 gets them)
        names = set(module.model.trainable_state_dict())
        full = trainer.strategy.lightning_module_state_dict()
        trained = {k[len("model."):]: v for k, v in full.items() if k[len("model."):] in names}
    if trainer.is_global_zero:
        save_trained(module.model, run_dir / "model.safetensors", trained=trained, step=int(trainer.global_step))
        save_prediction_layout(module.task, run_dir)


def _fit_locked(config, module, run_dir: Path, resume: bool, resumed_step, enable_progress_bar, rank_zero, start,
                user_callbacks: list[Callback]):
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, run_dir) from None
    if rank_zero:
        save_config(config, run_dir / "config.yaml")
    stopper, phases, chance = _health_callbacks(config, module, last)
    # the trained weights of the best validation (best.safetensors), tested at the end too
    best = BestValidationWeights(run_dir / BEST_WEIGHTS, metric=f"val/{module.objective.metric}",
                                 higher_is_better=module.objective.higher_is_better,
                                 enabled=config.strategy != "fsdp")
    # best before the checkpoint writers (its best step is in each checkpoint); the stopper last: its
    # checkpoint must include the state of every other callback
    callbacks = [phases, *([chance] if chance else []), best, *user_callbacks, stopper]
    trainer = _trainer(config, run_dir, enable_progress_bar, resumed_step, extra_callbacks=callbacks)
    _train(trainer, module, config, last, resume, stopper, phases, f"fpt fit --resume {run_dir} --steps {config.steps}")
    _save_trained_state(trainer, module, config, run_dir, last)
    train_seconds = time.time() - start
    try:
        with stopper.installed():  # a signal now lets the test finish (seconds): the run completes
            test_metrics = _test(trainer, module)
            at_best = best.test_at_best(trainer, module, test_metrics)  # the test at the best validation
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
    adaptive = next((c for c in user_callbacks if isinstance(c, AdaptiveThreads)), None)
    if adaptive is not None:  # the threads this invocation started with, and each change (other jobs came or went)
        results["cpu_threads"] = {"start": adaptive.start_threads, "changes": adaptive.changes}
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
    invocations = module.invocations(seconds, train_seconds)
    accelerator, precision = resolve_device(config)
    device = torch.cuda.get_device_name(0) if accelerator == "gpu" else f"cpu ({torch.get_num_threads()} threads)"
    results = {
        "task": config.task, "task_options": module.task.options.__dict__, "backbone": config.backbone,
        "init": config.init, "freeze": config.freeze, "layers": module.model.backbone.num_layers,
        "steps": int(trainer.global_step), "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        # wall seconds of every invocation (a resumed run's earlier ones counted up to their last checkpoint)
        "seconds": round(sum(i["seconds"] or 0 for i in invocations), 2),
        "train_seconds": round(sum(i.get("train_seconds", i["seconds"]) or 0 for i in invocations), 2),
        "invocations": invocations,
        "device": device, "precision": precision, "label": config.label,
        "world_size": int(trainer.world_size),  # processes that shared each global batch (DDP)
        "backbone_identity": module.model.backbone.identity(),  # incl. source_* for run:PATH backbones
        "skipped_steps": module.bad_steps_total,
        # all threads of the process, every invocation
        "cpu_seconds": round(sum(i["cpu_seconds"] or 0 for i in invocations), 2),
        "objective": module.objective.describe(),  # output type, headline metric and its direction
        # metrics.csv labels a validation with the optimizer steps completed before it, as the console does
        "metrics_step": "completed",
        "protocol": _protocol_record(config, module.task),  # fpt.protocol: what --protocol set, and what was used
        "val": {
            "best_accuracy": (module.best_val[0] if module.best_val else None)
            if module.objective.kind == "classification" else None,
            "metric": module.objective.metric,  # the value model selection uses: val.best, in this direction
            "higher_is_better": module.objective.higher_is_better,
            "best": module.best_val[0] if module.best_val else None,
            "best_step": module.best_val[1] if module.best_val else None,
            "best_loss": module.best_val[2] if module.best_val else None,  # ties of val.best: the lower loss wins
            "target_accuracy": config.target_accuracy if module.objective.kind == "classification" else None,
            "first_step_at_target": module.first_step_at_target,
        },
    }
    adjust = getattr(module.task, "adjust_test_metrics", None)
    if adjust is not None:
        adjust(test_metrics)
    results.update(test_metrics)
    # which data exactly (time series: problem, files, split sizes; reports match on it) and what the data
    # options changed (ListOps' brackets and cuts, homology's dropped sequences)
    data = {**(module.task.describe_data() if hasattr(module.task, "describe_data") else {}),
            **(getattr(module.task, "preprocessing", None) or {})}
    if data:
        results["data"] = data
    if config.backbone == "lstm":
        results["lstm_kind"] = config.lstm_kind
    return results


def _protocol_record(config: RunConfig, task) -> dict[str, Any]:
    from fpt.protocol import record

    defaults = dataclasses.asdict(make_options(type(task), {}))  # the task's own defaults: what fpt does
    return record(config, dict(task.options.__dict__), defaults)


def test_run(run_dir: str | Path, enable_progress_bar: bool | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run on its test splits (``fpt test``); updates nothing on disk."""
    _quiet_lightning()
    config, model = load_run(run_dir)
    module = FPTModule(config, model=model)
    accelerator, precision = resolve_device(config)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_progress_bar=bool(enable_progress_bar), enable_model_summary=False)
    return _test(trainer, module)
