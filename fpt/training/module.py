"""The Lightning module that trains an FPT, and the samplers that feed it (docs/architecture.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fpt.model import fastpath
from fpt.runs.checkpoint import CHECKPOINT_FORMAT, build_model, check_compatible, check_parameter_names, spec_dict
from fpt.config.run import RunConfig
from fpt.data.splits import LengthBucketedStream, Split, by_length
from fpt.model.features import FeatureCache
from fpt.runs.health import NonFiniteGradientError
from fpt.model.network import FPT
from fpt.model.objectives import make_objective
from fpt.model.step import BACKWARD_RANGE, FORWARD_RANGE, logits_and_loss
from fpt.tasks.registry import task_of


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
        self.task = task_of(config)
        # precision, frozen-weight storage, attention and compile for this machine (fpt.model.fastpath.plan_speed)
        self.plan = fastpath.plan_for(config, self.task.spec)
        if model is None:
            model = build_model(config, self.task)  # built as self.plan says (the same fastpath.plan_for)
        self.model = model
        self.strict_loading = False  # frozen weights are rebuilt, not loaded; on_load_checkpoint checks the rest
        spec = self.task.spec
        self.test_names = list(self.task.test().keys())
        self.metric_prefixes = ["val"] + self.test_names
        # loss, metrics and model selection of the task's output type (fpt.model.objectives)
        self.objective = make_objective(spec, self.task)
        self.eval_metrics = torch.nn.ModuleDict({p: self.objective.metrics() for p in self.metric_prefixes})
        self.train_acc = self.objective.train_metric() if hasattr(self.objective, "train_metric") else None
        self.cpu_start = time.process_time()  # results.json cpu_seconds: this process's CPU time for the run
        # results.json seconds over every invocation of a resumed run: the earlier ones (from the checkpoint, each
        # counted up to its last checkpoint) and this one, from run_start (fit sets it) at step start_step
        self.run_start = time.time()
        self.start_step = 0
        self.earlier_invocations: list[dict[str, Any]] = []
        # clip + skip non-finite steps; counters live on the device (fpt.model.fastpath.StepGuard)
        self.guard = fastpath.StepGuard(config.grad_clip, config.max_bad_steps)
        self.feature_cache = None  # fpt.model.features.FeatureCache when config.cache_features
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
        if self.plan.compile and not getattr(self, "_compiled", False):
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

    # steps: the parts of fpt.model.step, in Lightning's hooks
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

        With a fused optimizer nothing here waits for the device (see fpt.model.fastpath.StepGuard): the
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
            "fast_path": self.plan.record(),  # how it computes: a resumed run keeps auto's choices (keep_choices)
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
