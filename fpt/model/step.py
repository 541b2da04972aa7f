"""The training step, defined once: forward + loss, backward, clip and skip bad steps, optimizer step.

Inside ``fpt fit`` Lightning drives the step and calls these parts from ``FPTModule``'s hooks
(``training_step`` -> :func:`logits_and_loss`, ``backward``, ``on_before_optimizer_step`` ->
:class:`fpt.model.fastpath.StepGuard`); Lightning's precision plugin supplies the autocast.
:class:`TrainingStep` runs the same parts in the same order without Lightning, for ``fpt bench``.
Each phase runs inside a named ``torch.profiler`` range (free when nothing profiles), which is how
``fpt bench`` splits a step into forward / backward / optimizer, for both; :func:`no_profiler_chatter`
keeps the profiler's own ``USDT:`` lines off the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Callable

import torch

FORWARD_RANGE = "fpt::forward"
BACKWARD_RANGE = "fpt::backward"
OPTIMIZER_RANGE = "fpt::optimizer"  # clipping, the skip decision, the optimizer step and zero_grad
PHASE_RANGES = (FORWARD_RANGE, BACKWARD_RANGE)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on GPUs and on CPUs with a bf16 matrix engine, else fp32
    (:func:`fpt.model.fastpath.choose_precision` says why)."""
    from fpt.model.fastpath import choose_precision

    return choose_precision(precision, accelerator)[0]


def autocast_for(precision: str, device_type: str) -> Callable[[], Any]:
    """A context factory for a Lightning precision name, as Lightning's precision plugin applies it."""
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision in dtypes:
        return lambda: torch.autocast(device_type, dtype=dtypes[precision])
    return contextlib.nullcontext


def logits_and_loss(model, batch: dict[str, torch.Tensor], objective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's outputs ``[B, labels, classes]``, targets ``[B, labels]`` and the objective's loss
    (:mod:`fpt.model.objectives`: cross-entropy for classification, standardised MSE for regression).

    A batch with ``features`` (cached-feature mode, :mod:`fpt.model.features`) skips the frozen part."""
    if "features" in batch:
        logits = model.head_logits(batch["features"])
    else:
        logits = model(batch["x"], batch.get("mask"))
    y = batch["y"].reshape(logits.shape[0], -1)
    return logits, y, objective.loss(logits, y)


def _no_mark(phase: str) -> None:
    pass


class TrainingStep:
    """One full training step outside Lightning (``fpt bench``): the parts ``fpt fit`` runs, in its order.

    ``read_loss_each_step``: read the loss on the host every step, as the 2021 loop did for logging
    (the guard reads the gradient norm on the host too unless the optimizer is fused)."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, guard, autocast: Callable[[], Any] = contextlib.nullcontext,
                 read_loss_each_step: bool = False, objective=None):
        from fpt.model.objectives import make_objective

        self.model, self.optimizer, self.guard, self.autocast = model, optimizer, guard, autocast
        # the loss of the model's task (classification unless given; regression needs the task's target statistics)
        self.objective = objective if objective is not None else make_objective(model.spec)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.read_loss_each_step = read_loss_each_step

    def __call__(self, batch: dict[str, torch.Tensor], mark: Callable[[str], None] = _no_mark) -> torch.Tensor:
        """``mark(phase)`` is called as each phase ends (for per-phase timings)."""
        record = torch.profiler.record_function
        with record(FORWARD_RANGE):
            with self.autocast():
                _, _, loss = logits_and_loss(self.model, batch, self.objective)
        mark("forward")
        with record(BACKWARD_RANGE):
            loss.backward()
        mark("backward")
        with record(OPTIMIZER_RANGE):
            self.guard.before_step(self.optimizer, self.params)
            self.optimizer.step()
            if self.read_loss_each_step:
                float(loss.item())
            self.optimizer.zero_grad(set_to_none=True)
        mark("optimizer")
        return loss


@contextlib.contextmanager
def no_profiler_chatter(noise: tuple[str, ...] = ("USDT:",)):
    """Run the block with file descriptor 2 caught in a temporary file, then pass on every line but
    the profiler's ``noise`` (Kineto writes it from C++, so Python's ``sys.stderr`` cannot filter it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [ln for ln in caught.read().splitlines(keepends=True) if not ln.startswith(tuple(n.encode() for n in noise))]
            if kept:
                os.write(2, b"".join(kept))
