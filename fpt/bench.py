"""``fpt bench``: time full FPT training steps, the 2021 way against fpt's default path for the device.

One process, one table::

    fpt bench --backbone smollm2-135m --layers 12 --task bit-xor --batch-size 32
    fpt bench --backbone smollm2-135m --layers 12,30 --tokens 64 --input-dim 16 --batch-size 64,256 --device cuda --json b.json

A step is what training does: forward through the real ``FPT`` module (with its real freezing, so
frozen weights get no weight gradients), cross-entropy, backward, gradient-norm clip with the
non-finite check, optimizer step. Paths:

* ``naive`` — what the 2021 code did: fp32, eager attention, the for-loop Adam
  (``foreach=False``), a plain ``nn.Module`` (no compile), and host reads every step (the loss for
  logging and the finiteness of the gradient norm);
* ``fast`` — fpt's defaults for the device (``fpt.fastpath``): on CUDA bf16 autocast, SDPA
  attention, ``torch.compile`` of the backbone, fused Adam with the sync-free step guard; on CPU
  fp32, SDPA attention, no compile, unfused Adam, threads = physical cores.

Both paths are built and warmed up one after the other, then timed in alternation (one step of
each, ``--steps`` times), so that a shared machine whose load changes slows both alike. Reported
per path: median step time (CUDA events on GPU, ``perf_counter`` on CPU), samples/s, tokens/s,
matmul TFLOP/s, and the peak memory the path adds while it is built and warmed up
(``torch.cuda.max_memory_allocated`` above what was already allocated, on GPU; on CPU the growth
of the process's resident set: approximate, allocator-dependent).

Matmul FLOPs per step = ``B x T x (2 P + 2 P [activation gradients] + 2 P_trained)`` with ``P`` the
backbone's matmul weights (``Linear``/``Conv1D``; embedding tables excluded), ``P_trained`` those
of them that train (0 under the paper's ``fpt`` preset). For ``fpt`` that is **4 x frozen matmul
parameters x tokens** per sample: forward plus activation gradients, no weight gradients. Under
``output-only`` no gradient enters the backbone: 2 x. Attention's score and context products
(``4 T^2 H`` per layer forward) and the new input/output layers are not counted. On a GPU the
table also gives each path's share of the card's bf16 matmul peak, measured in the same process
(an 8192^3 bf16 matmul), and the host synchronisations in one step (``torch.cuda.set_sync_debug_mode``;
the fast path should have none). It is a benchmark: it never fails on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PATHS = ("naive", "fast", "fit", "cached")


def add_bench_parser(sub, parse_task_option) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="time training steps: the 2021 naive path vs fpt's default path",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--backbone", default="smollm2-135m", help="as for fpt fit")
    b.add_argument("--init", default="pretrained", help="pretrained | random")
    b.add_argument("--layers", default=None, help="keep only the first K blocks; a list (12,30) runs each")
    b.add_argument("--freeze", default="fpt", help="freeze preset")
    b.add_argument("--task", default=None, help="take shape and one real batch from this task (default: bit-xor, "
                                                 "unless --tokens is given)")
    b.add_argument("-o", "--task-option", action="append", default=[], type=parse_task_option, metavar="KEY=VALUE",
                   help="task option, e.g. -o n_bits=32 (repeatable)")
    b.add_argument("--tokens", type=int, default=None, help="synthetic continuous input: tokens per sample")
    b.add_argument("--input-dim", type=int, default=16, help="synthetic continuous input: features per token")
    b.add_argument("--batch-size", default="32", help="a list (64,256) runs each, with every --layers value")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda")
    b.add_argument("--steps", type=int, default=10, help="timed steps per path")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    b.add_argument("--paths", default="naive,fast", help="comma-separated: naive, fast, fit (the whole fpt fit loop), "
                                                           "cached (output-only: the head on precomputed features)")
    b.add_argument("--compile", default="auto", help="fast path: auto | true | false")
    b.add_argument("--fused-optimizer", default="auto", help="fast path: auto | true | false")
    b.add_argument("--precision", default="auto", help="fast path: auto | 32-true | bf16-mixed")
    b.add_argument("--attn-implementation", default="sdpa", help="fast path: sdpa | eager")
    b.add_argument("--num-threads", type=int, default=None, help="CPU threads (unset: physical cores)")
    b.add_argument("--profile", type=int, default=3, help="steps per path under torch.profiler after the timed ones, "
                                                        "for the 'where the time goes' table (0: skip)")
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    return b


# -- memory ---------------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Memory:
    """Peak memory a path adds: CUDA allocator peak, or on CPU the resident-set high-water mark."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def start(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()  # what earlier paths still hold
        else:
            _malloc_trim()  # hand freed heap back to the OS, so this path's growth is its own
            self.hwm_reset = _reset_peak_rss()
            self.base = _proc_status_kb("VmRSS") or 0

    def peak_mb(self) -> float | None:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        peak = _proc_status_kb("VmHWM") if self.hwm_reset else _proc_status_kb("VmRSS")
        return None if peak is None else max(0, peak - self.base) / 1024


# -- the model and data ----------------------------------------------------------------------------
def _spec_and_batch(args, device):
    import numpy as np
    import torch

    from fpt.tasks import make_task
    from fpt.tasks.base import TaskSpec

    if args.tokens is not None and args.task is None:
        spec = TaskSpec(input_type="continuous", input_dim=args.input_dim, max_tokens=args.tokens, num_classes=2,
                        num_labels=1, readout="last")
        g = torch.Generator().manual_seed(0)
        batch = {"x": torch.randn(args.batch_size, args.tokens, args.input_dim, generator=g),
                 "y": torch.randint(0, 2, (args.batch_size, 1), generator=g)}
        shape = f"{args.tokens} tokens x {args.input_dim}"
    else:
        task = make_task(args.task or "bit-xor", dict(args.task_option), seed=0)
        spec = task.spec
        batch = task.train().batch(np.arange(args.batch_size, dtype=np.int64))
        t = batch["x"].shape[1]
        shape = f"{args.task or 'bit-xor'}: {t} tokens" + (f" x {spec.input_dim}" if spec.input_type == "continuous" else "")
    batch = {k: v.to(device) for k, v in batch.items()}
    return spec, batch, shape


def matmul_params(model) -> tuple[int, int]:
    """(all, trained) matmul weights of the backbone: Linear / Conv1D weights, embedding tables excluded."""
    from torch import nn

    total = trained = 0
    for module in model.backbone.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            n = module.weight.numel()
            total += n
            trained += n if module.weight.requires_grad else 0
        elif isinstance(module, nn.LSTM):
            for name, p in module.named_parameters():
                if name.startswith("weight"):
                    total += p.numel()
                    trained += p.numel() if p.requires_grad else 0
    return total, trained


def gradients_enter_backbone(model) -> bool:
    """True when something at or before the blocks trains (input layer, positions, norms...)."""
    return any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head."))


def flops_per_step(model, batch_size: int, tokens: int) -> float:
    p_all, p_trained = matmul_params(model)
    per_token = 2 * p_all + (2 * p_all if gradients_enter_backbone(model) else 0) + 2 * p_trained
    return float(per_token) * batch_size * tokens


def measured_bf16_peak_tflops(device, n: int = 8192, iters: int = 10) -> float:
    """Throughput of a large bf16 matmul on this GPU, measured now (the practical peak)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000 / iters
    del a, b
    return 2 * n**3 / seconds / 1e12


def count_host_syncs(step, device) -> int | None:
    """Host synchronisations in one call of ``step`` (CUDA's sync debug mode; None on CPU)."""
    if device.type != "cuda":
        return None
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


OPTIMIZER_RANGE = "fpt::optimizer"  # profiler range around clipping, the optimizer step and zero_grad
PHASE_RANGES = ("fpt::forward", "fpt::backward")  # also recorded by fpt.training's training step


def _no_mark(phase: str) -> None:
    pass


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
    with profile(activities=activities) as prof:
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


def path_settings(path: str, args, accelerator: str) -> dict[str, Any]:
    """naive: the 2021 loop; fast (and cached, which trains the head on precomputed features): fpt's defaults."""
    from fpt import fastpath

    if path == "naive":
        return {"precision": "32-true", "attn": "eager", "compile": False, "fused": False, "naive_optimizer": True,
                "sync_each_step": True}
    precision = args.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    return {"precision": precision, "attn": args.attn_implementation,
            "compile": fastpath.use_compile(fastpath.parse_tristate(args.compile, "compile"), accelerator),
            "fused": fastpath.use_fused(fastpath.parse_tristate(args.fused_optimizer, "fused_optimizer"), accelerator,
                                        precision),
            "naive_optimizer": False, "sync_each_step": False}


def _throughput(step_s: float, batch_size: int, tokens: int, flops: float,
                breakdown: dict[str, Any] | None) -> dict[str, Any]:
    """The rate columns of every path, from its step time and its matmul work per step."""
    matmul_ms = (breakdown or {}).get("ms_per_step", {}).get("matmul")
    return {
        "step_ms": step_s * 1000, "samples_per_s": batch_size / step_s, "tokens_per_s": batch_size * tokens / step_s,
        "matmul_tflop_per_step": flops / 1e12, "tflops": flops / step_s / 1e12,
        # the matmul work over the time of the matmul kernels (operators on CPU) alone
        "matmul_kernel_tflops": flops / (matmul_ms / 1000) / 1e12 if flops and matmul_ms else None,
    }


def _optimizer_label(settings: dict[str, Any]) -> str:
    if settings["naive_optimizer"]:
        return "adam (for-loop)"
    return "adam fused" if settings["fused"] else "adam foreach"


class _Path:
    """One path's model, optimizer and step function, built and warmed up (memory measured meanwhile)."""

    def __init__(self, name: str, args, device, spec, batch):
        import contextlib

        import torch
        import torch.nn.functional as F

        from fpt import fastpath
        from fpt.backbones import load_backbone
        from fpt.model import FPT, ModelConfig

        self.name, self.device = name, device
        accelerator = "gpu" if device.type == "cuda" else "cpu"
        s = self.settings = path_settings(name, args, accelerator)
        memory = _Memory(device)
        memory.start()
        t0 = time.perf_counter()
        backbone = load_backbone(args.backbone, init=args.init, layers=args.layers, seed=0, attn_implementation=s["attn"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = FPT(backbone, spec, ModelConfig(freeze=args.freeze)).to(device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = fastpath.make_optimizer(params, args.lr, fused=s["fused"], naive=s["naive_optimizer"])
        guard = fastpath.StepGuard(1.0, 10**9)
        if s["compile"]:
            fastpath.compile_in_place(model.backbone)
        if s["precision"] == "bf16-mixed":
            autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        elif s["precision"] == "16-mixed":
            autocast = lambda: torch.autocast(device.type, dtype=torch.float16)  # noqa: E731
        else:
            autocast = contextlib.nullcontext
        x, y, mask = batch["x"], batch["y"], batch.get("mask")
        self.feature_ms = None
        if name == "cached":  # output-only: the frozen network's read-out features, computed once
            from fpt.features import check_cacheable

            try:
                check_cacheable(model)
            except ValueError as err:
                raise ValueError(f"--paths cached needs --freeze output-only: {err}") from None
            with torch.no_grad(), autocast():
                model.features(x, mask)  # warm-up (and compilation)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_features = time.perf_counter()
                features = model.features(x, mask).float()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.feature_ms = (time.perf_counter() - t_features) * 1000
        self.build_seconds = time.perf_counter() - t0

        record = torch.profiler.record_function

        def step(mark=_no_mark):
            """One training step; ``mark(phase)`` is called as each phase ends (for the phase timings)."""
            with record("fpt::forward"):
                if name == "cached":
                    logits = model.head_logits(features)
                else:
                    with autocast():
                        logits = model(x, mask)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       y.reshape(logits.shape[0], -1).reshape(-1))
            mark("forward")
            with record("fpt::backward"):
                loss.backward()
            mark("backward")
            with record(OPTIMIZER_RANGE):
                if s["sync_each_step"]:
                    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                    if not bool(torch.isfinite(norm)):  # the 2021 loop: checked (and logged) on the host
                        for p in params:
                            p.grad = None
                    optimizer.step()
                    float(loss.item())
                else:
                    guard.before_step(optimizer, params)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            mark("optimizer")

        self.step = step
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.warmup_seconds = time.perf_counter() - t0
        self.peak_memory_mb = memory.peak_mb()
        self.host_syncs = count_host_syncs(step, device)
        self.model, self.tokens = model, int(x.shape[1])
        # the cached path runs no backbone matmul per step (its one-off feature pass is feature_ms)
        self.flops = 0.0 if name == "cached" else flops_per_step(model, args.batch_size, self.tokens)
        self.trainable = sum(p.numel() for p in params)
        self.times: list[float] = []
        self.phase_times: dict[str, list[float]] = {}
        self.breakdown: dict[str, Any] | None = None

    def timed_step(self):
        """One step, timed whole and by phase (CUDA events on the GPU: no host sync until it ends)."""
        import torch

        if self.device.type == "cuda":
            def event():
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                return e
        else:
            event = time.perf_counter
        marks = [("start", event())]
        self.step(lambda phase: marks.append((phase, event())))
        if self.device.type == "cuda":
            marks[-1][1].synchronize()  # after the interval: the events time the device's work
            elapsed = lambda a, b: a.elapsed_time(b) / 1000  # noqa: E731
        else:
            elapsed = lambda a, b: b - a  # noqa: E731
        self.times.append(elapsed(marks[0][1], marks[-1][1]))
        for (_, a), (phase, b) in zip(marks, marks[1:]):
            self.phase_times.setdefault(phase, []).append(elapsed(a, b))

    def result(self, batch_size: int) -> dict[str, Any]:
        s, times = self.settings, self.times
        step_s = statistics.median(times)
        return {
            "precision": s["precision"], "attention": s["attn"], "compile": s["compile"],
            "optimizer": _optimizer_label(s), "host_sync_each_step": s["sync_each_step"],
            "host_syncs_per_step": self.host_syncs,  # CUDA only: torch.cuda.set_sync_debug_mode counts
            **_throughput(step_s, batch_size, self.tokens, self.flops, self.breakdown),
            "step_ms_min": min(times) * 1000, "step_ms_max": max(times) * 1000,
            "feature_ms": self.feature_ms,  # cached: the one-off forward that computed this batch's features
            "peak_memory_mb": self.peak_memory_mb, "build_seconds": self.build_seconds,
            "warmup_seconds": self.warmup_seconds, "timed_steps": len(times), "trainable_params": self.trainable,
            "backbone_matmul_params": matmul_params(self.model)[0],
            # median time of each phase (the medians need not add up to the median step exactly)
            "phase_ms": {k: statistics.median(v) * 1000 for k, v in self.phase_times.items()},
            "breakdown": self.breakdown,
        }


class _FitPath:
    """``fpt fit`` itself on the same shape: Lightning, data loading, logging, the step guard, fast-path defaults.

    Timed by wall clock from the start of step ``--warmup`` to the end of step ``--warmup + --steps``
    (the device synchronised at both ends), so the step time is a mean, not a median; it runs after
    the other paths, not interleaved with them. With ``--tokens`` the data is a random ``.npz`` of
    that shape read by the ``array`` task; with ``--task``, that task's own data.
    """

    def __init__(self, args, device):
        import contextlib
        import io
        import tempfile

        import lightning as L
        import numpy as np
        import torch

        from fpt import fastpath
        from fpt.config import build_config
        from fpt.training import fit, resolve_device

        self.name, self.device = "fit", device
        total, b = args.warmup + args.steps, args.batch_size
        cuda = device.type == "cuda"

        timed_end = total
        total += args.profile  # then --profile steps under torch.profiler

        class StepTimer(L.Callback):
            t0 = t1 = profiler = profiled_ms = None

            def _now(self):
                if cuda:
                    torch.cuda.synchronize(device)
                return time.perf_counter()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == args.warmup and self.t0 is None:
                    self.t0 = self._now()
                if trainer.global_step == timed_end and args.profile and self.profiler is None:
                    from torch.profiler import ProfilerActivity, profile

                    self.profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
                    self.p0 = self._now()
                    self.profiler.__enter__()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == timed_end and self.t1 is None:
                    self.t1 = self._now()
                if trainer.global_step == total and self.profiler is not None and self.profiled_ms is None:
                    self.profiled_ms = (self._now() - self.p0) * 1000 / args.profile
                    self.profiler.__exit__(None, None, None)

        with tempfile.TemporaryDirectory(prefix="fpt-bench-") as tmp:
            if args.tokens is not None and args.task is None:
                rng = np.random.default_rng(0)
                n = total * b + 2 * b
                x = rng.standard_normal((n, args.tokens, args.input_dim), dtype=np.float32)
                y = rng.integers(0, 2, n)
                m = total * b
                np.savez(f"{tmp}/data.npz", x_train=x[:m], y_train=y[:m], x_val=x[m:m + b], y_val=y[m:m + b],
                         x_test=x[m + b:], y_test=y[m + b:])
                task, options = "array", {"path": f"{tmp}/data.npz", "kind": "tokens", "normalize": False}
            else:
                task, options = args.task or "bit-xor", dict(args.task_option)
            config = build_config(dict(
                task=task, task_options=options, backbone=args.backbone, init=args.init, layers=args.layers,
                freeze=args.freeze, steps=total, batch_size=b, eval_every=total, eval_batch_size=b, lr=args.lr,
                device="cuda" if cuda else "cpu", run_dir=f"{tmp}/run", precision=args.precision, compile=args.compile,
                fused_optimizer=args.fused_optimizer, attn_implementation=args.attn_implementation,
                num_threads=args.num_threads, chance_warning_evals=0))
            accelerator, precision = resolve_device(config)
            fused = fastpath.use_fused(config.fused_optimizer, accelerator, precision)
            self.settings = {"precision": precision, "attn": config.attn_implementation,
                             "compile": fastpath.use_compile(config.compile, accelerator), "fused": fused,
                             "naive_optimizer": False, "sync_each_step": not fused}
            memory = _Memory(device)
            memory.start()
            timer = StepTimer()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # fit's own report lines would break the table
                results = fit(config, enable_progress_bar=False, callbacks=[timer])
            self.build_seconds = time.perf_counter() - t0  # the whole fit call: build, compile, steps, test
            self.peak_memory_mb = memory.peak_mb()
        self.tokens = args.tokens if task == "array" else None
        self.times = [(timer.t1 - timer.t0) / args.steps]
        self.breakdown = None
        if timer.profiled_ms is not None:
            self.breakdown = breakdown_from_events(timer.profiler.events(), cuda, args.profile, timer.profiled_ms,
                                                   self.times[0] * 1000)
        self.trainable = results["trainable_params"]
        self.results = results

    def result_for(self, reference: "_Path", batch_size: int) -> dict[str, Any]:
        """The same columns as the step paths' (FLOPs and tokens from ``reference``, which has the same shape)."""
        s = self.settings
        return {
            "precision": s["precision"], "attention": s["attn"], "compile": s["compile"],
            "optimizer": _optimizer_label(s), "host_sync_each_step": s["sync_each_step"], "host_syncs_per_step": None,
            **_throughput(self.times[0], batch_size, reference.tokens, reference.flops, self.breakdown),
            "step_ms_min": None, "step_ms_max": None, "step_time": "mean over the timed steps (wall clock)",
            "peak_memory_mb": self.peak_memory_mb, "build_seconds": self.build_seconds, "warmup_seconds": None,
            "timed_steps": None, "trainable_params": self.trainable,
            "backbone_matmul_params": matmul_params(reference.model)[0], "phase_ms": {}, "breakdown": self.breakdown,
        }


def bench(args) -> dict[str, Any]:
    import torch

    from fpt import fastpath

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if not use_cuda:
        torch.set_num_threads(fastpath.cpu_threads(args.num_threads))
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise ValueError(f"--paths: unknown {bad}; choose from {', '.join(PATHS)}")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.profile < 0:
        raise ValueError("--batch-size and --steps must be >= 1, --warmup and --profile >= 0")
    spec, batch, shape = _spec_and_batch(args, device)
    out: dict[str, Any] = {
        "backbone": args.backbone, "init": args.init, "layers": args.layers, "freeze": args.freeze, "shape": shape,
        "tokens": int(batch["x"].shape[1]), "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "device": torch.cuda.get_device_name(device) if use_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "paths": {},
    }
    if use_cuda:
        if getattr(args, "_peak", None) is None:
            args._peak = measured_bf16_peak_tflops(device)
        out["bf16_matmul_peak_tflops"] = args._peak
    # Built and warmed up one after the other (each path's peak memory is what it adds), then timed
    # in alternation, step by step, so that a machine whose load changes slows both paths alike.
    if not use_cuda:
        # One throwaway 1-block load first: imports and one-off allocations would otherwise count
        # in the resident-set growth of whichever path is built first.
        from fpt.backbones import load_backbone

        del_me = load_backbone(args.backbone, init=args.init, layers=1, seed=0)
        del del_me
    step_paths = [p for p in paths if p != "fit"]
    if "fit" in paths and not {"naive", "fast"} & set(step_paths):
        step_paths.append("fast")  # built, not timed: the fit path takes its FLOP count and tokens from it
    built = {name: _Path(name, args, device, spec, batch) for name in step_paths}
    timed = [p for p in built.values() if p.name in paths]
    for _ in range(args.steps):
        for p in timed:
            p.timed_step()
    if args.profile > 0:  # after the timing, so that the profiler cannot disturb it
        for p in timed:
            p.breakdown = profile_breakdown(p.step, device, args.profile, statistics.median(p.times) * 1000)
    for p in timed:
        out["paths"][p.name] = p.result(args.batch_size)
    if "fit" in paths:
        reference = built.get("fast") or built["naive"]
        out["paths"]["fit"] = _FitPath(args, device).result_for(reference, args.batch_size)
    if "naive" in out["paths"] and "fast" in out["paths"]:
        out["speedup_fast_over_naive"] = out["paths"]["naive"]["step_ms"] / out["paths"]["fast"]["step_ms"]
    if "cached" in out["paths"]:
        other = "fast" if "fast" in out["paths"] else ("naive" if "naive" in out["paths"] else None)
        if other:
            out["speedup_cached_over_" + other] = out["paths"][other]["step_ms"] / out["paths"]["cached"]["step_ms"]
    if "naive" in out["paths"] and "fit" in out["paths"]:
        out["speedup_fit_over_naive"] = out["paths"]["naive"]["step_ms"] / out["paths"]["fit"]["step_ms"]
    if use_cuda:
        for r in out["paths"].values():
            r["fraction_of_bf16_peak"] = r["tflops"] / out["bf16_matmul_peak_tflops"]
    return out


def format_table(out: dict[str, Any]) -> str:
    layers = out["layers"] if out["layers"] is not None else "all"
    lines = [f"fpt bench: {out['backbone']} ({out['init']}, {layers} layers, freeze {out['freeze']}), {out['shape']}, "
             f"batch {out['batch_size']}, {out['device']}, torch {out['torch']}; "
             f"median of {out['steps']} steps after {out['warmup']} warm-up"]
    head = ["path", "precision", "attention", "optimizer", "compile", "step ms", "samples/s", "tokens/s",
            "TFLOP/s", "peak MB"]
    peak = out.get("bf16_matmul_peak_tflops")
    if peak:
        head += ["of bf16 peak", "syncs/step"]
    rows = []
    for name, r in out["paths"].items():
        row = [name, r["precision"], r["attention"], r["optimizer"], "on" if r["compile"] else "off",
               f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:.0f}", f"{r['tflops']:.3f}",
               "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"]
        if peak:
            syncs = r.get("host_syncs_per_step")
            row += [f"{100 * r['fraction_of_bf16_peak']:.1f}%", "-" if syncs is None else str(syncs)]
        rows.append(row)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines.append(fmt.format(*head))
    lines += [fmt.format(*row) for row in rows]
    if "speedup_fast_over_naive" in out:
        n, f = out["paths"]["naive"], out["paths"]["fast"]
        mem = ""
        if n["peak_memory_mb"] and f["peak_memory_mb"]:
            mem = f", peak memory x{f['peak_memory_mb'] / n['peak_memory_mb']:.2f}"
        lines.append(f"fast / naive: x{out['speedup_fast_over_naive']:.2f} samples/s{mem}")
    for other in ("fast", "naive"):
        if f"speedup_cached_over_{other}" in out:
            c = out["paths"]["cached"]
            lines.append(f"cached / {other}: x{out[f'speedup_cached_over_{other}']:.0f} per training step "
                         f"(the head on precomputed features; computing them took {c['feature_ms']:.1f} ms for this "
                         f"batch, once)")
            break
    if "speedup_fit_over_naive" in out:
        lines.append(f"fit / naive: x{out['speedup_fit_over_naive']:.2f} samples/s (fit: the whole `fpt fit` loop, "
                     f"mean step by wall clock, run after the others)")
    if peak:
        lines.append(f"measured bf16 matmul peak of this GPU: {peak:.0f} TFLOP/s (8192^3)")
    lines += _time_table(out)
    lines.append("TFLOP/s counts backbone matmuls only: 4 x frozen matmul params x tokens per sample "
                 "(forward + activation gradients; 2 x under output-only); see fpt/bench.py")
    return "\n".join(lines)


def _time_table(out: dict[str, Any]) -> list[str]:
    """Where the time goes: phases (always) and profiled categories (``--profile``), ms per step."""
    paths = out["paths"]
    categories: list[str] = []
    for r in paths.values():
        for c in (r.get("breakdown") or {}).get("ms_per_step", {}):
            if c not in categories:
                categories.append(c)
    phases = ["forward", "backward", "optimizer"]
    head = ["ms per step"] + phases + categories + (["matmul-only TFLOP/s"] if categories else [])
    rows = []
    for name, r in paths.items():
        phase_ms = r.get("phase_ms", {})
        if not phase_ms and not r.get("breakdown"):  # the fit path without --profile: timed whole
            continue
        ms = (r.get("breakdown") or {}).get("ms_per_step", {})
        row = [name] + [f"{phase_ms[p]:.1f}" if p in phase_ms else "-" for p in phases]
        row += [f"{ms[c]:.1f} ({100 * ms[c] / r['step_ms']:.0f}%)" if c in ms else "-" for c in categories]
        if categories:
            row.append("-" if r.get("matmul_kernel_tflops") is None else f"{r['matmul_kernel_tflops']:.2f}")
        rows.append(row)
    if not rows:
        return []
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = ["where the time goes:", fmt.format(*head)] + [fmt.format(*row) for row in rows]
    basis = next(((r.get("breakdown") or {}).get("basis") for r in paths.values() if r.get("breakdown")), None)
    if basis:
        lines.append(f"(phases: median of the timed steps; categories: {basis})")
    return lines


def _int_list(text, name: str, allow_none: bool = False) -> list:
    if text is None and allow_none:
        return [None]
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes integers separated by commas, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name}: no value given")
    return values


def main(args) -> int:
    """Every combination of --layers and --batch-size, one table each (and one JSON file for all)."""
    import torch

    runs = []
    combos = [(layers, batch) for layers in _int_list(args.layers, "layers", allow_none=True)
              for batch in _int_list(args.batch_size, "batch-size")]
    for layers, batch_size in combos:
        one = argparse.Namespace(**vars(args))
        one.layers, one.batch_size = layers, batch_size
        try:
            out = bench(one)
        except torch.OutOfMemoryError as err:  # a benchmark reports, it does not fail
            out = {"layers": layers, "batch_size": batch_size, "error": f"out of memory: {str(err).splitlines()[0]}"}
            print(f"fpt bench: {layers} layers, batch {batch_size}: {out['error']}")
        else:
            print(format_table(out))
        args._peak = getattr(one, "_peak", None)
        runs.append(out)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(flush=True)
    if args.json:
        from fpt.io import atomic_write_json

        atomic_write_json(Path(args.json), runs[0] if len(runs) == 1 else {"runs": runs})
        print(f"wrote {args.json}")
    sys.stdout.flush()
    return 0
