"""Where a step's time goes: profiled operators (CPU) or kernels (GPU), sorted into categories.

The ``USDT:`` lines that torch's profiler (Kineto) writes to stderr at every start and stop are
filtered out (:func:`fpt.model.step.no_profiler_chatter`): they say nothing to a user.
"""

from __future__ import annotations

import time
from typing import Any

from fpt.model.step import OPTIMIZER_RANGE, PHASE_RANGES, no_profiler_chatter

# Where the time goes: profiled operators (CPU) or kernels (GPU) sorted into these, first match wins.
# Names are matched lower-cased; GPU kernel names come from cuBLAS/cuDNN/flash/Triton and vary by
# version, so the patterns are broad. "optimizer" is decided first, by the profiler range the work ran in.
CATEGORIES = (
    ("attention", r"scaled_dot_product|flash|fmha|attention|softmax"),  # fused kernels (eager's are matmuls)
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|_addmm_activation|_int_mm)$|gemm|cutlass|xmma|nvjet|cublas|wgmma"),
    ("elementwise/norms", r"^triton_"),  # torch.compile's fusions (norms, RoPE, SiLU, and the casts inside them)
    ("copies/casts", r"copy|memcpy|memset|^aten::(to|_to_copy|clone|contiguous|cat)$"),
)  # anything else: "elementwise/norms"
HOST_CATEGORY = "host"  # Python, dispatch, autograd engine: time between operators


def categorize(name: str, in_optimizer: bool, cpu: bool) -> str:
    """The category of one profiled CPU operator or GPU kernel (see ``CATEGORIES``)."""
    import re

    if in_optimizer:
        return "optimizer+clip"
    lowered = name.lower()
    if cpu and lowered.startswith("## call compiledfxgraph"):
        return "elementwise/norms"  # a compiled graph's own time is its fused C++ kernels (matmuls are aten::mm)
    if cpu and not lowered.startswith("aten::"):
        return HOST_CATEGORY  # ranges, autograd-engine and module wrappers: time between operators
    for category, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return category
    return "elementwise/norms"


def _in_optimizer(event) -> bool:
    """Ran inside the optimizer phase: the nearest enclosing phase range is the optimizer's.

    (Lightning runs the forward and backward inside ``optimizer.step(closure)``, so the
    ``Optimizer.step`` range encloses them too: their own ranges, nearer, decide.)
    """
    while event is not None:
        if event.name in PHASE_RANGES:
            return False
        if event.name == OPTIMIZER_RANGE or event.name.startswith("Optimizer."):
            return True
        event = event.cpu_parent
    return False


def profile_breakdown(step, device, steps: int, step_ms: float) -> dict[str, Any]:
    """Where a step's time goes: ``steps`` steps under ``torch.profiler``, in ms per step by category.

    On a GPU the categories are kernel time (the device's busy time, which the profiler barely
    inflates) and the rest of the median step is ``device idle``: the GPU waiting for the host
    (Python, dispatch, kernel launches, synchronisations). On a CPU they are operators' self time;
    time outside any operator is ``host``. The profiler slows the host side, so the CPU numbers
    are shares of the profiled steps, scaled to the unprofiled median step ``step_ms``.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with no_profiler_chatter(), profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    profiled_ms = (time.perf_counter() - t0) * 1000 / steps
    return breakdown_from_events(prof.events(), cuda, steps, profiled_ms, step_ms)


def breakdown_from_events(events, cuda: bool, steps: int, profiled_ms: float, step_ms: float) -> dict[str, Any]:
    """``profile_breakdown``'s sorting of profiled events (also used for the ``fit`` path's profile)."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = {}
    if cuda:
        cpu_by_id = {e.id: e for e in events if e.device_type == DeviceType.CPU}
        for e in events:
            if e.device_type != DeviceType.CUDA:
                continue
            owner = cpu_by_id.get(getattr(e, "linked_correlation_id", 0))
            category = categorize(e.name, _in_optimizer(owner), cpu=False)
            totals[category] = totals.get(category, 0.0) + (e.time_range.end - e.time_range.start) / 1000 / steps
        busy = sum(totals.values())
        totals["device idle"] = max(0.0, step_ms - busy)
        basis = "GPU kernel time per step; device idle = median step - kernel time"
    else:
        for e in events:
            if e.device_type != DeviceType.CPU or e.self_cpu_time_total <= 0:
                continue
            category = categorize(e.name, _in_optimizer(e), cpu=True)
            totals[category] = totals.get(category, 0.0) + e.self_cpu_time_total / 1000 / steps
        traced = sum(totals.values())
        totals[HOST_CATEGORY] = totals.get(HOST_CATEGORY, 0.0) + max(0.0, profiled_ms - traced)
        scale = step_ms / profiled_ms if profiled_ms > 0 else 1.0
        totals = {k: v * scale for k, v in totals.items()}
        basis = "CPU operators' self time, scaled from the profiled steps to the median step"
    order = list(dict.fromkeys(["matmul"] + [c for c, _ in CATEGORIES] + ["optimizer+clip", HOST_CATEGORY, "device idle"]))
    ms = {c: totals[c] for c in order if totals.get(c, 0.0) > 0}
    return {"ms_per_step": ms, "profiled_steps": steps, "profiled_step_ms": profiled_ms, "basis": basis}
