"""The Lightning callbacks, loggers and plugins fpt adds to a training run (some in their own module, named below).

* :class:`Progress` (one line per validation) and :func:`progress_bar` (Lightning's bar, with the
  train loss and accuracy read only when it refreshes);
* :class:`ResumableCSVLogger`: ``metrics.csv``, keeping a resumed run's earlier rows;
* :class:`ResumeCheckpoint`, :class:`FlushLogsOnCheckpoint`, :class:`AtomicCheckpointIO`: the
  resume checkpoint, written after each validation, atomically (see :mod:`fpt.runs.checkpoint`);
* :class:`ChanceWarning`, :class:`PhaseTracker`, :class:`GracefulStop` (stopping.py): training health (see
  :mod:`fpt.runs.health` for the errors they lead to);
* :class:`BestValidationWeights` (best.py): the trained weights of the best validation (``best.safetensors``),
  tested again at the end;
* :class:`StepTimer`: ``fpt bench``'s timing and profiling of the ``fit`` path;
* :class:`AdaptiveThreads` (threads.py): CPU threads follow the cores other processes leave free.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fpt.runs.checkpoint import read_checkpoint, save_checkpoint_file
from fpt.runs.health import say
from fpt.model.step import no_profiler_chatter

log = logging.getLogger("fpt")


# -- progress and logs ------------------------------------------------------------------------------
class ResumableCSVLogger(CSVLogger):
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
                        rows = [r for r in reader if keep is not None and r.get("step") and _kept(r, keep)]
                    with open(self.metrics_file_path, "w", newline="") as f:
                        writer = csv.DictWriter(f, fieldnames=header)
                        writer.writeheader()
                        writer.writerows(rows)
                    self.metrics_keys = sorted(header)

            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = Writer(log_dir=self.log_dir)
        return self._experiment


def _kept(row: dict[str, str], keep: int) -> bool:
    """A metrics.csv row from before a checkpoint at step ``keep``: training rows of steps < ``keep``, and the
    validation after ``keep`` steps (labelled ``keep``; the checkpoint is taken after it, so a resumed run does
    not repeat it)."""
    step = int(float(row["step"]))
    if step < keep:
        return True
    return step == keep and any(v not in ("", None) for k, v in row.items() if k.startswith("val/")) \
        and not any(v not in ("", None) for k, v in row.items() if k.startswith("train/"))


class Progress(Callback):
    """Prints one line per validation, for logs that are read after the fact (no progress bar in files)."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        if "val/accuracy" in m:
            print(f"step {trainer.global_step:>6}  val accuracy {float(m['val/accuracy']):.4f}  "
                  f"exact {float(m['val/exact_accuracy']):.4f}  loss {float(m['val/loss']):.4f}", flush=True)
        elif "val/mse" in m:  # forecasting (fpt.model.objectives.Forecast): z-scored, as published
            print(f"step {trainer.global_step:>6}  val mse {float(m['val/mse']):.4f}  mae {float(m['val/mae']):.4f}",
                  flush=True)
        elif "val/rmse" in m:  # regression (fpt.model.objectives): original units
            print(f"step {trainer.global_step:>6}  val rmse {float(m['val/rmse']):.6g}  mae {float(m['val/mae']):.6g}  "
                  f"loss {float(m['val/loss']):.4f}", flush=True)


def progress_bar(refresh_rate: int) -> Callback:
    """Lightning's tqdm bar, also showing the train loss and accuracy, read when it refreshes."""
    class _ProgressBar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            for name in ("train/loss", "train/accuracy"):
                value = trainer.callback_metrics.get(name)  # device tensors: reading them is the sync
                if value is not None:
                    metrics[name.split("/")[1]] = f"{float(value):.3f}"
            return metrics

    return _ProgressBar(refresh_rate=refresh_rate)


# -- the resume checkpoint ---------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO plugin, writing atomically (see the module doc) and reading with
    :func:`read_checkpoint` (``weights_only=True``, clear errors for broken files)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        save_checkpoint_file(checkpoint, Path(path), keep_previous=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return read_checkpoint(Path(path))


class FlushLogsOnCheckpoint(Callback):
    """Writes the loggers' buffered rows (metrics.csv) whenever a checkpoint is taken, so a run killed
    after a checkpoint still has every row up to it (a resumed run re-logs only the later steps)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()


def is_final_step(trainer) -> bool:
    return trainer.max_steps > 0 and int(trainer.global_step) >= trainer.max_steps


class ResumeCheckpoint(Callback):
    """Writes ``checkpoints/last.ckpt``, the resume state: after every validation inside ``fit`` (every
    ``eval_every`` steps, and the last step, which it makes Lightning validate too).

    Why not Lightning's ModelCheckpoint: it saves at the end of the training batch, *before* that
    step's validation, and skips its validation-end save (already saved at this step). A run killed
    after that checkpoint resumes without the validation's effects (best accuracy, first step at the
    target, early-stopping and chance-level counters) and Lightning does not run it again. Saved after
    the validation, a checkpoint includes it; killed during it, the run resumes from the previous
    checkpoint and repeats the (deterministic) steps. Its ``on_train_end`` would also overwrite a
    stop-on-signal checkpoint with a finished-epoch state that resumes with logged steps one late.

    Add it after every callback whose state changes at a validation (its checkpoint includes them).
    """

    def __init__(self, path: Path, eval_every: int):
        self.path = Path(path)
        self.eval_every = eval_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if is_final_step(trainer) and step % self.eval_every != 0 and not trainer.fit_loop.epoch_loop._should_accumulate():
            # The last step is always validated (and checkpointed after it, in on_validation_end): Lightning runs
            # a validation before it honours should_stop. Without it a run with steps < eval_every (or not a
            # multiple of it) would end with no validation at all, or with its last steps never validated.
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not fpt test / trainer.validate
            return
        trainer.save_checkpoint(self.path, weights_only=False)


# -- training health ------------------------------------------------------------------------------------
class ChanceWarning(Callback):
    """Warns once when validation accuracy stayed at chance for each of the first ``evals`` validations.

    "At chance" means within ``margin`` of ``1/num_classes``; by default the margin is three
    standard deviations of a chance-level accuracy over the validation labels (at least 0.01).
    """

    def __init__(self, num_classes: int, n_val_labels: int, evals: int, hints: dict[str, Any] | None = None,
                 margin: float | None = None):
        self.chance = 1.0 / num_classes
        p = self.chance
        self.margin = margin if margin is not None else max(0.01, 3 * math.sqrt(p * (1 - p) / max(1, n_val_labels)))
        self.evals = evals
        self.hints = hints or {}
        self.seen = 0
        self.all_at_chance = True
        self.message: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "all_at_chance": self.all_at_chance, "message": self.message}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state.get("seen", 0))
        self.all_at_chance = bool(state.get("all_at_chance", True))
        self.message = state.get("message")

    def observe(self, accuracy: float, step: int) -> str | None:
        """Record one validation; returns the warning when this one completes the pattern."""
        if self.evals <= 0 or self.message is not None or not self.all_at_chance:
            return None
        self.seen += 1
        if not abs(accuracy - self.chance) <= self.margin:  # NaN counts as "not learning" too
            self.all_at_chance = math.isnan(accuracy)
        if self.all_at_chance and self.seen >= self.evals:
            h = self.hints
            self.message = (
                f"validation accuracy has stayed at chance ({self.chance:.3f} +- {self.margin:.3f}; now {accuracy:.4f}) "
                f"for the first {self.seen} validations (to step {step}): the model is not learning. Try: "
                f"another learning rate (--lr, now {h.get('lr', '?')}; the paper uses 1e-3, try 3e-4 and 3e-3); "
                "inputs of unit scale (normalise them; all-zero or huge inputs stall the frozen blocks); "
                f"fewer frozen layers (--layers, now {h.get('layers', 'all')}) or more --steps; "
                "--freeze full on a small model to check that the task is learnable at all."
            )
            return self.message
        return None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get("val/accuracy")
        if value is None:
            return
        message = self.observe(float(value), int(trainer.global_step))
        if message:
            if log.hasHandlers():  # the application configured logging: it gets the warning too
                log.warning(message)
            say("fpt: warning: " + message)


class PhaseTracker(Callback):
    """Remembers whether training, validation or test was running (for error messages)."""

    def __init__(self):
        self.phase: str | None = None

    def on_train_start(self, trainer, pl_module):
        self.phase = "training"

    def on_validation_start(self, trainer, pl_module):
        self.phase = "validation"

    def on_validation_end(self, trainer, pl_module):
        self.phase = "training"

    def on_test_start(self, trainer, pl_module):
        self.phase = "test"


class StepTimer(Callback):
    """``fpt bench``'s fit path: the wall-clock time of steps ``[start, end)`` (the device synchronised at
    both ends) and a ``torch.profiler`` profile of the ``profiled`` steps after them."""

    def __init__(self, start: int, end: int, profiled: int, device: torch.device):
        self.start, self.end, self.profiled, self.device = start, end, profiled, device
        self.t0 = self.t1 = self.p0 = self.profiler = self.profiled_ms = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.start and self.t0 is None:
            self.t0 = self._now()
        if trainer.global_step == self.end and self.profiled and self.profiler is None:
            from torch.profiler import ProfilerActivity, profile

            cuda = [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
            self.profiler = profile(activities=[ProfilerActivity.CPU] + cuda)
            self.p0 = self._now()
            with no_profiler_chatter():
                self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.end and self.t1 is None:
            self.t1 = self._now()
        if trainer.global_step == self.end + self.profiled and self.profiler is not None and self.profiled_ms is None:
            self.profiled_ms = (self._now() - self.p0) * 1000 / self.profiled
            with no_profiler_chatter():
                self.profiler.__exit__(None, None, None)
