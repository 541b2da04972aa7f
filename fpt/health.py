"""Training health: say plainly when a run is not learning, was stopped, or ran out of memory.

* :class:`ChanceWarning`: validation accuracy at chance (``1/num_classes``) for the first K
  validations -> one warning, printed, logged (logger ``fpt``) and kept in ``results.json``.
* :class:`GracefulStop`: SIGINT (Ctrl-C) or SIGTERM during training -> the current step finishes
  (and its validation, if one is due), ``checkpoints/last.ckpt`` is written, training stops and
  ``fit`` raises :class:`TrainingInterrupted`, whose message is the exact command that resumes.
  The ``fpt`` command then exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM),
  the shell convention for "stopped by a signal", so job scripts can tell an interrupted run from
  a finished one (0). A second signal stops at once (the last checkpoint stays intact).
* :func:`out_of_memory_error`: turns ``torch.OutOfMemoryError`` / CPU allocation failures into
  :class:`OutOfMemory` with what to change.

The non-finite-gradient guard itself lives in ``FPTModule.on_before_optimizer_step``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("fpt")


def _say(text: str) -> None:
    """Print to stderr from anywhere, signal handlers included (os.write is re-entrant; print is not)."""
    try:
        os.write(2, (text.rstrip("\n") + "\n").encode())
    except OSError:
        pass


# -- not learning -----------------------------------------------------------------------------------
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
            _say("fpt: warning: " + message)


# -- signals ----------------------------------------------------------------------------------------
class TrainingInterrupted(Exception):
    """Training was stopped by a signal after writing a checkpoint; ``str(err)`` says how to resume."""

    def __init__(self, message: str, signum: int, step: int | None, resume_command: str):
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.resume_command = resume_command
        self.exit_code = 128 + int(signum)


class StopForSignal(Exception):
    """Raised inside the training loop, after the checkpoint is written, to leave ``trainer.fit``."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step


_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class GracefulStop(Callback):
    """Catches SIGINT/SIGTERM during ``fit``; saves ``last.ckpt`` at a step boundary and stops.

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
            _say(f"fpt: second {signal.Signals(signum).name}: stopping now; the last checkpoint ({self.last}) stays intact")
            self._restore()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        _say(f"fpt: received {signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
             "(send it again to stop at once)")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in _STOP_SIGNALS:
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
            for s in _STOP_SIGNALS:
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
        if step % self.eval_every == 0:
            return  # a validation runs after this batch: save after it (where fpt's checkpoints are taken)
        final = trainer.max_steps > 0 and step >= trainer.max_steps
        if self._requested(trainer, sync_point=final or step % max(1, trainer.log_every_n_steps) == 0):
            self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._requested(trainer, sync_point=True):
            self._stop(trainer)


# -- memory -----------------------------------------------------------------------------------------
class OutOfMemory(RuntimeError):
    """A batch did not fit in memory; the message says what to change."""


_OOM_TEXTS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory",
              "failed to allocate", "defaultcpuallocator")


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(t in str(err).lower() for t in _OOM_TEXTS)


def out_of_memory_error(err: BaseException, phase: str | None, config) -> OutOfMemory:
    device = "GPU" if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available() else "memory"
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    if phase in ("validation", "test"):
        advice = (f"the {phase} batch did not fit: use a smaller --eval-batch-size (now {config.eval_batch_size}, "
                  f"e.g. {max(1, config.eval_batch_size // 4)})")
    else:
        b, acc = config.batch_size, getattr(config, "accumulate_grad_batches", 1)
        half = max(1, b // 2)
        advice = (f"the training batch did not fit: use a smaller --batch-size (now {b}, e.g. {half}) with "
                  f"--accumulate-grad-batches {acc * b // half} to keep the effective batch of {b * acc}")
    if torch.cuda.is_available():
        with_ctx = " (torch.cuda.empty_cache() was called)"
        torch.cuda.empty_cache()
    else:
        with_ctx = ""
    return OutOfMemory(f"out of {device} during {phase or 'training'} ({first}){with_ctx}; {advice}; fewer --layers "
                       "or shorter sequences (a larger patch size) also help.")


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


__all__ = ["ChanceWarning", "GracefulStop", "StopForSignal", "TrainingInterrupted", "OutOfMemory", "is_out_of_memory",
           "out_of_memory_error", "PhaseTracker"]

