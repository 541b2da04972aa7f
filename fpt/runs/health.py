"""Training health: say plainly when a run is not learning, was stopped, or ran out of memory.

The Lightning callbacks that watch a run live in :mod:`fpt.training.callbacks`; this module holds what
they raise and say, without Lightning:

* ``ChanceWarning``: validation accuracy at chance (``1/num_classes``) for the first K
  validations -> one warning, printed, logged (logger ``fpt``) and kept in ``results.json``.
* ``GracefulStop``: SIGINT (Ctrl-C), SIGTERM or SIGUSR2 (SLURM's warning before a time limit, as
  ``fpt sweep --launcher slurm`` asks for it) during training -> the current step finishes
  (and its validation, if one is due), ``checkpoints/last.ckpt`` is written, training stops and
  ``fit`` raises :class:`TrainingInterrupted`, whose message is the exact command that resumes.
  The ``fpt`` command then exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM, 140 for SIGUSR2),
  the shell convention for "stopped by a signal", so job scripts can tell an interrupted run from
  a finished one (0). A second signal stops at once (the last checkpoint stays intact).
* :func:`out_of_memory_error`: turns ``torch.OutOfMemoryError`` / CPU allocation failures into
  :class:`OutOfMemory` with what to change.

The non-finite-gradient guard itself is :class:`fpt.model.fastpath.StepGuard`.
"""

from __future__ import annotations

import os
import signal

import torch


def say(text: str) -> None:
    """Print to stderr from anywhere, signal handlers included (os.write is re-entrant; print is not)."""
    try:
        os.write(2, (text.rstrip("\n") + "\n").encode())
    except OSError:
        pass


class NonFiniteGradientError(RuntimeError):
    """``max_bad_steps`` steps in a row had a non-finite gradient norm; the message names the likely causes."""


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


# SIGUSR2: what SLURM sends before a job's time limit when asked to (sbatch --signal=USR2@SECONDS; submitit
# asks for it), and on preemption: checkpoint, then stop (fpt.experiments.slurm requeues the trial, which resumes).
STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR2")) if s is not None)


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
