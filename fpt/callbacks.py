"""Every Lightning callback, logger and plugin fpt adds to a training run, in one place.

* :class:`Progress` (one line per validation) and :func:`progress_bar` (Lightning's bar, with the
  train loss and accuracy read only when it refreshes);
* :class:`ResumableCSVLogger`: ``metrics.csv``, keeping a resumed run's earlier rows;
* :class:`ResumeCheckpoint`, :class:`FlushLogsOnCheckpoint`, :class:`AtomicCheckpointIO`: the
  resume checkpoint, written after each validation, atomically (see :mod:`fpt.checkpoint`);
* :class:`ChanceWarning`, :class:`GracefulStop`, :class:`PhaseTracker`: training health (see
  :mod:`fpt.health` for the errors they lead to);
* :class:`BestValidationWeights`: the trained weights of the best validation (``best.safetensors``),
  tested again at the end;
* :class:`StepTimer`: ``fpt bench``'s timing and profiling of the ``fit`` path;
* :class:`AdaptiveThreads`: CPU threads follow the cores other processes leave free.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fpt.checkpoint import read_checkpoint, save_checkpoint_file, save_trained
from fpt.health import STOP_SIGNALS, StopForSignal, say
from fpt.objectives import better
from fpt.step import no_profiler_chatter

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
        elif "val/rmse" in m:  # regression (fpt.objectives): original units
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


class GracefulStop(Callback):
    """Catches SIGINT/SIGTERM/SIGUSR2 (fpt.health.STOP_SIGNALS) during ``fit``; saves ``last.ckpt`` at a step boundary and stops.

    Installed with :meth:`installed` around training. Lightning registers its own SIGTERM notifier
    when ``trainer.fit`` starts (it raises ``SIGTERMException`` at the end of the next batch, before
    that step's validation and without a checkpoint); ``on_train_start`` puts this handler back in
    its place, so a stop always happens where Lightning's own checkpoints are taken.
    """

    def __init__(self, last: Path, eval_every: int):
        self.last = Path(last)
        self.eval_every = eval_every
        self.signum: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    # handler
    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            say(f"fpt: second {signal.Signals(signum).name}: stopping now; the last checkpoint ({self.last}) stays intact")
            self._restore()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        say(f"fpt: received {signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
             "(send it again to stop at once)")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in STOP_SIGNALS:
            if s not in self._previous:
                self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @contextmanager
    def installed(self):
        self._install()
        try:
            yield self
        finally:
            self._restore()

    # callback
    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                signal.signal(s, self._handler)  # replaces Lightning's SIGTERM notifier for the training loop

    on_test_start = on_train_start  # a signal during the test lets it finish (seconds), then the run ends normally

    def _stop(self, trainer) -> None:
        trainer.save_checkpoint(self.last, weights_only=False)
        self.saved_step = int(trainer.global_step)
        # Leave by an exception, not trainer.should_stop: stopping "normally" runs the epoch-end and
        # train-end hooks (a checkpoint callback's on_train_end would overwrite last.ckpt with the
        # state of a finished epoch, which resumes with every logged step one late).
        raise StopForSignal(self.signum, self.saved_step)

    def _requested(self, trainer, sync_point: bool) -> bool:
        """Whether to stop here. With several processes every rank must decide alike (they save and
        leave together), so the flag is reduced across ranks, only at ``sync_point``s: steps where
        fpt reads device values anyway (every ``log_every_n_steps``) and validation ends."""
        if self.saved_step is not None:
            return False
        if trainer.world_size <= 1:
            return self.signum is not None
        if not sync_point:
            return False
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            self.signum = self.signum or int(signal.SIGTERM)  # another rank received it
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None and trainer.world_size <= 1:
            return
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # mid-accumulation: stop at the optimizer step
        step = int(trainer.global_step)
        if step % self.eval_every == 0 or is_final_step(trainer):
            return  # a validation runs after this batch: save after it (where fpt's checkpoints are taken)
        if self._requested(trainer, sync_point=step % max(1, trainer.log_every_n_steps) == 0):
            self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._requested(trainer, sync_point=True):
            self._stop(trainer)


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


# -- best-validation weights ----------------------------------------------------------------
BEST_WEIGHTS = "best.safetensors"


# Best-validation weights: keep the trained parameters of the best validation, test them at the end.
#
# :class:`BestValidationWeights` is a self-contained Lightning callback. After every validation
# whose headline value (accuracy; RMSE for regression, lower) beats every earlier one, or equals the
# best with a lower validation loss (small validation sets tie often), it copies the trained
# parameters (input layer, head, norms, positions: ~100 KB for FPT; everything for ``--freeze full``)
# to CPU memory on every process and, on rank 0, writes them to
# ``RUN_DIR/best.safetensors`` (the ``model.safetensors`` format, with ``best_step`` and
# ``val_<metric>`` in its metadata; written atomically). Its best value and step live in the
# resume checkpoint, so a resumed run keeps the best it had.
#
# After training and the usual test at the final weights, :meth:`BestValidationWeights.test_at_best`
# loads the best weights, runs the test splits again, and restores the final weights; results.json
# gets both (``test`` at the final step, ``at_best_val`` at the best validation, which is how
# Rothermel et al. 2021 select and evaluate). Not under ``--strategy fsdp`` (sharded parameters):
# there ``at_best_val`` says so.
class BestValidationWeights(Callback):
    """Keeps the trained parameters of the best validation and tests them at the end (see above)."""

    def __init__(self, path: str | Path, metric: str = "val/accuracy", higher_is_better: bool = True,
                 enabled: bool = True):
        self.path = Path(path)
        self.metric = metric  # the objective's headline validation metric (accuracy, or rmse for regression)
        self.higher_is_better = higher_is_better
        self.enabled = enabled
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_loss: float | None = None  # breaks ties of the metric: the lower validation loss wins
        self._weights: dict[str, torch.Tensor] | None = None  # CPU copy on every process

    # -- resume state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value", state_dict.get("best_accuracy"))
        self.best_step = state_dict.get("best_step")
        self.best_loss = state_dict.get("best_loss")
        self._weights = None  # read back from best.safetensors when needed

    # -- during training -------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        value, step = float(value), int(trainer.global_step)  # the same global value on every rank
        loss = trainer.callback_metrics.get("val/loss")
        loss = float(loss) if loss is not None else None
        if math.isnan(value):
            return
        if not better(value, self.best_value, self.higher_is_better, loss, self.best_loss):
            return  # an equal value wins only with a lower validation loss (as FPTModule's val.best)
        self.best_value, self.best_step, self.best_loss = value, step, loss
        self._weights = {n: t.detach().to("cpu", copy=True) for n, t in pl_module.model.trainable_state_dict().items()}
        if trainer.is_global_zero:
            save_trained(pl_module.model, self.path, extra={"best_step": str(step), self._value_key: repr(value)},
                         trained=self._weights, step=step)

    @property
    def _value_key(self) -> str:
        return "val_" + self.metric.split("/", 1)[-1]  # val_accuracy, val_rmse

    # -- after training --------------------------------------------------------------------------
    def _best_weights(self) -> dict[str, torch.Tensor] | None:
        if self._weights is None and self.best_step is not None and self.path.exists():
            from safetensors.torch import load_file

            self._weights = load_file(str(self.path))
        return self._weights

    def test_at_best(self, trainer, module, final_metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Test metrics at the best validation (``{"step", "val_<metric>", "weights", <test split>: {...}}``)."""
        if not self.enabled:
            return {"unavailable": "not kept under --strategy fsdp (sharded parameters)"}
        if self.best_step is None:
            return {"unavailable": "no validation ran (steps < eval_every)"}
        out: dict[str, Any] = {"step": self.best_step, self._value_key: self.best_value, "weights": self.path.name}
        if self.best_step == int(trainer.global_step):  # the final weights are the best ones
            out.update({k: dict(v) for k, v in final_metrics.items()})
            return out
        weights = self._best_weights()
        if weights is None:
            return {"unavailable": f"{self.path} is missing", "step": self.best_step, self._value_key: self.best_value}
        model = module.model
        final = {n: t.detach().clone() for n, t in model.trainable_state_dict().items()}
        if set(weights) != set(final):
            raise ValueError(f"{self.path}: its tensors do not match this model's trained parameters")
        model.load_state_dict({k: v.to(final[k].device, final[k].dtype) for k, v in weights.items()}, strict=False)
        module.eval_tag = "best/"
        try:
            results = trainer.test(module, verbose=False)
        finally:
            module.eval_tag = ""
            model.load_state_dict(final, strict=False)
        for key, value in {k: v for d in results for k, v in d.items()}.items():
            if key.startswith("best/"):
                split, name = key[len("best/"):].split("/", 1)
                out.setdefault(split, {})[name] = float(value)
        return out


ADAPT_EVERY_S = 10.0  # seconds between two looks at the other processes' CPU use


class AdaptiveThreads(Callback):
    """CPU threads that follow the cores other processes leave free (``fpt.cpu``: why).

    Every ``every_s`` seconds of training, between two steps, this reads how many CPUs other processes
    used since the last look and sets ``torch.set_num_threads`` to the cores left (1 ..
    ``most``). Only when the run chose its threads itself (no ``--num-threads``, ``$OMP_NUM_THREADS``
    or ``$SLURM_CPUS_PER_TASK``). Each change is printed and kept in ``changes`` (step, threads,
    other CPUs busy) for results.json. Thread counts change no result: the same run computes the
    same numbers up to floating-point summation order.
    """

    def __init__(self, most: int, every_s: float | None = None):
        from fpt.cpu import OtherLoad

        self.most = int(most)
        self.every_s = ADAPT_EVERY_S if every_s is None else float(every_s)
        self.load = OtherLoad()
        self.next_look = time.monotonic() + self.every_s
        self.changes: list[dict[str, Any]] = []
        self.start_threads: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_threads = torch.get_num_threads()

    def look(self, step: int) -> None:
        from fpt.cpu import threads_beside

        others = self.load.cpus()
        threads = threads_beside(others, self.most)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append({"step": step, "threads": threads, "other_cpus_busy": round(others or 0.0, 2)})
            say(f"fpt: other processes keep {others:.1f} CPUs busy: {threads} thread(s) from step {step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + self.every_s
            self.look(int(trainer.global_step))
