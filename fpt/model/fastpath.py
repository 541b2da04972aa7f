"""The fast path: what fpt does beyond a plain PyTorch loop, each part switchable from the config.

* ``precision``: bf16 autocast (``bf16-mixed``) or fp32; auto: bf16-mixed on CUDA, fp32 on CPU;
* ``attn_implementation``: ``sdpa`` (fused attention kernels, the default) or ``eager``;
* ``compile``: ``torch.compile`` of the backbone, in place; auto: on on CUDA;
* ``fused_optimizer``: fused Adam/AdamW + sync-free skipping of bad steps; auto: on on CUDA;
* ``num_threads``: CPU intra-op threads; default: physical cores / local processes.

No host synchronisation per step: the gradient norm, the "skip this step" decision and the
bad-step counters stay on the device (:class:`StepGuard`); the host reads them every
``log_every_n_steps`` steps and at validation. A fused Adam/AdamW honours ``optimizer.found_inf``
(the tensor ``torch.amp.GradScaler`` uses to skip steps without a sync): when it is 1 the kernel
leaves parameters and moments untouched and undoes the step count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from fpt.base.options import coerce


def parse_tristate(value: Any, name: str) -> Any:
    """``auto`` | true | false (YAML booleans or the strings true/false/on/off/yes/no/1/0)."""
    return coerce(value, "tristate", name)


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def cpu_threads(requested: int | None, local_processes: int = 1) -> int:
    """Intra-op threads for one process: ``requested``, else ``$OMP_NUM_THREADS``, else the CPUs SLURM gave this
    task (``$SLURM_CPUS_PER_TASK``: clusters without CPU binding show every core), else physical cores shared
    among the local processes."""
    if requested:
        return int(requested)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        if int(os.environ["OMP_NUM_THREADS"]) < 1:  # torch.set_num_threads(0) is a traceback
            raise ValueError(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}: threads must be >= 1; unset it (fpt "
                             "then picks the threads) or give the number to use, e.g. OMP_NUM_THREADS=2 or --num-threads 2")
        return int(os.environ["OMP_NUM_THREADS"])
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit() and int(os.environ["SLURM_CPUS_PER_TASK"]) > 0:
        return min(int(os.environ["SLURM_CPUS_PER_TASK"]), physical_cores())
    return max(1, physical_cores() // max(1, local_processes))


def threads_are_fpts_choice(requested: int | None) -> bool:
    """True when nobody chose the CPU threads (no --num-threads, $OMP_NUM_THREADS or $SLURM_CPUS_PER_TASK): then
    fpt may follow the cores other processes leave free (fpt.training.callbacks.AdaptiveThreads)."""
    return not requested and not os.environ.get("OMP_NUM_THREADS", "").isdigit() \
        and not os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit()


def use_compile(setting: Any, accelerator: str) -> bool:
    return accelerator == "gpu" if setting == "auto" else bool(setting)


def use_fused(setting: Any, accelerator: str, precision: str) -> bool:
    if str(precision) in ("16-mixed", "16"):
        # fp16 uses a GradScaler, which sets found_inf itself and (for fused optimizers) leaves the
        # gradients scaled until the step: clipping would see scaled gradients. Keep the plain path.
        return False
    return accelerator == "gpu" if setting == "auto" else bool(setting)


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, fused: bool = False,
                   naive: bool = False) -> torch.optim.Optimizer:
    """Adam (or AdamW with weight decay). ``naive``: the per-parameter for-loop implementation of 2021."""
    kwargs: dict[str, Any] = {"lr": lr}
    if naive:
        kwargs.update(foreach=False, fused=False)
    elif fused:
        kwargs["fused"] = True
    if weight_decay:
        return torch.optim.AdamW(params, weight_decay=weight_decay, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def compile_in_place(module: nn.Module, **kwargs) -> nn.Module:
    """``module.compile()``: the module object, its parameter names and state_dict keys stay the same
    (``torch.compile(module)`` would wrap it and prefix every key with ``_orig_mod.``)."""
    module.compile(**kwargs)
    return module


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Adam/AdamW with ``fused=True`` skip a step on device when ``optimizer.found_inf`` is 1."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))


class StepGuard:
    """Clip the global gradient norm; a non-finite norm skips the step, is counted, and
    ``max_bad_steps`` of them in a row stop the run.

    With a fused Adam/AdamW this needs no host synchronisation: the decision is a device tensor
    handed to the optimizer as ``found_inf``, the counters are device tensors, and once
    ``max_bad_steps`` in a row have happened every later step is skipped too (``tripped``) until
    the host looks (``check``), so the parameters the run stops with are the last good ones even
    though the host only checks every few steps. Other optimizers take the plain path: the norm is
    read on the host and the gradients of a bad step are dropped (Adam then skips those parameters).
    """

    def __init__(self, max_norm: float, max_bad_steps: int, total: int = 0):
        self.max_norm = max_norm if max_norm and max_norm > 0 else math.inf
        self.max_bad_steps = int(max_bad_steps)
        self._initial_total = int(total)
        self.in_a_row: torch.Tensor | None = None  # consecutive bad steps, on device
        self.total: torch.Tensor | None = None  # all bad steps of the run, on device
        self.tripped: torch.Tensor | None = None  # max_bad_steps in a row happened
        self.trip_step: torch.Tensor | None = None  # the step at which they did
        self.sync_free = False  # the last step took the sync-free path

    def _ensure(self, device: torch.device) -> None:
        if self.total is None or self.total.device != device:
            prev_total = self.total_steps() if self.total is not None else self._initial_total
            prev_row = int(self.in_a_row) if self.in_a_row is not None else 0
            self.in_a_row = torch.tensor(prev_row, dtype=torch.int64, device=device)
            self.total = torch.tensor(prev_total, dtype=torch.int64, device=device)
            self.tripped = torch.zeros((), dtype=torch.bool, device=device)
            self.trip_step = torch.full((), -1, dtype=torch.int64, device=device)

    def set_total(self, total: int) -> None:
        self._initial_total = int(total)
        if self.total is not None:
            self.total.fill_(int(total))

    def total_steps(self) -> int:
        """All skipped steps so far (reads the device counter: a sync)."""
        return int(self.total) if self.total is not None else self._initial_total

    def in_a_row_steps(self) -> int:
        return int(self.in_a_row) if self.in_a_row is not None else 0

    def before_step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], step: int = 0) -> torch.Tensor:
        """Clip; decide whether the coming ``optimizer.step()`` applies. Returns the norm (NaN when skipped)."""
        if not params:
            return torch.zeros(())
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        self._ensure(norm.device)
        bad = ~torch.isfinite(norm)
        self.sync_free = supports_found_inf(optimizer)
        if self.sync_free:
            optimizer.found_inf = (bad | self.tripped).to(torch.float32)
        else:
            if hasattr(optimizer, "found_inf"):
                del optimizer.found_inf
            if not bool(torch.isfinite(norm)):  # host sync: fine on CPU
                for p in params:
                    p.grad = None  # Adam skips parameters without a gradient: the step changes nothing
        self.in_a_row = torch.where(bad, self.in_a_row + 1, torch.zeros_like(self.in_a_row))
        self.total = self.total + bad.to(self.total.dtype)
        now = self.in_a_row >= self.max_bad_steps
        self.trip_step = torch.where(now & ~self.tripped, torch.full_like(self.trip_step, step), self.trip_step)
        self.tripped = self.tripped | now
        return torch.where(bad, torch.full_like(norm, float("nan")), norm)

    def check(self) -> tuple[bool, int]:
        """(tripped, step): reads the device flags on the host (a sync); call it every few steps."""
        if self.tripped is None:
            return False, -1
        return bool(self.tripped), int(self.trip_step)
