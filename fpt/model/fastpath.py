"""The fast path: what fpt does beyond a plain PyTorch loop, each part switchable from the config.

* ``precision``: bf16 autocast (``bf16-mixed``) or fp32; auto: bf16-mixed on CUDA and on a CPU with a
  bf16 matrix engine (AMX-BF16 or AVX512-BF16), fp32 on other CPUs. Under bf16 the frozen matmul
  weights are *stored* in bf16 (half the memory, no per-step casts; the same numbers, since autocast
  rounds them to bf16 anyway); what trains (input layer, norms, positions, head) and the optimizer state
  stay fp32, norms and the loss compute in fp32;
* ``attn_implementation``: ``sdpa`` (fused attention kernels) or ``eager``; auto: eager on the CPU's
  bf16 path for short sequences (CPU flash attention's bf16 backward is slow), else sdpa;
* ``compile``: ``torch.compile`` of the backbone, in place; auto: on on CUDA, and on a CPU's bf16 path
  where compiling measured faster, for runs long enough to repay the compile time;
* ``fused_optimizer``: fused Adam/AdamW + sync-free skipping of bad steps; auto: on on CUDA;
* ``num_threads``: CPU intra-op threads; default: physical cores / local processes.

No host synchronisation per step: the gradient norm, the "skip this step" decision and the
bad-step counters stay on the device (:class:`StepGuard`); the host reads them every
``log_every_n_steps`` steps and at validation. A fused Adam/AdamW honours ``optimizer.found_inf``
(the tensor ``torch.amp.GradScaler`` uses to skip steps without a sync): when it is 1 the kernel
leaves parameters and moments untouched and undoes the step count.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
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


# -- what `auto` picks: the CPU's capabilities, and measurements -----------------------------------------
# One full fpt training step (fpt bench's shape: SmolLM2-135M, 4 layers, 49 tokens x 16 features, batch 32,
# freeze fpt, one thread), ms per step, on each kind of CPU; the source of each row is named with it.
# "bf16" is the path auto takes there: frozen weights stored in bf16, bf16 autocast, eager attention.
MEASURED_CPU_STEP_MS = {
    # issue 23: a 2-vCPU Intel Xeon (Sapphire Rapids class), torch 2.13; bf16 with SDPA 450, eager 317,
    # eager + bf16 weights 304, + torch.compile 168 (32 s to compile)
    "AMX-BF16": {"fp32": 746.0, "bf16": 304.0, "bf16_compiled": 168.0, "compile_s": 32.0,
                 "source": "issue 23, Intel Xeon with AMX-BF16"},
    # docs/performance.md "bf16 on the CPU": this project's 2-vCPU AMD EPYC (Zen 5), torch 2.13, best of 8
    # steps; bf16 with SDPA 419; 2048^2 matmul fp32 ~100 GFLOP/s, bf16 ~420
    # compiled, two runs on the busy machine (benchmarks/cpu_bf16_variants.py 49 32 bf16w-eager,c-bf16w-eager):
    # medians 701 -> 623 and 1371 -> 1069 ms (best-of disagreed: 468 -> 545, 1071 -> 860), 39 s to compile cold;
    # taken as the smaller median gain, x0.89: 308 -> 274 ms
    "AVX512-BF16": {"fp32": 1024.0, "bf16": 308.0, "bf16_compiled": 274.0, "compile_s": 39.0,
                    "source": "docs/performance.md, AMD EPYC (Zen 5) with AVX512-BF16"},
    # no bf16 matrix engine: relative step times (the ms were not recorded), bf16 ~1.9x slower than fp32
    None: {"fp32": 1.0, "bf16": 1.9, "source": "issue 23: the AVX2 CPU fpt's fp32 default was measured on"},
}
# auto compiles on a CPU only where compiling measured faster, and only a run of at least this many times the
# steps that repay the compile time at the measured shape (evaluation compiles its own graph; a real task's
# shape differs from the bench's), on a task of fixed sequence length (padded tasks would recompile).
COMPILE_MARGIN = 3
# The CPU's bf16 path runs eager attention up to this many tokens per sequence and SDPA above it: CPU flash
# attention's bf16 backward costs more than eager's two matmuls on short sequences (docs/performance.md,
# "bf16 on the CPU": eager faster at 49-256 tokens on the AVX512-BF16 CPU, SDPA from 512).
CPU_BF16_EAGER_MAX_TOKENS = 256
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model name, the flags that decide fpt's CPU path, torch's SIMD level, and its bf16 matrix
    engine: ``AMX-BF16``, ``AVX512-BF16`` or None. torch's own checks (which also ask the OS) win over
    /proc/cpuinfo where torch has them."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:  # the first CPU's entry is enough
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux
        pass
    model = model or platform.processor() or platform.machine()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    has_amx = ("amx_bf16" in flags) and (amx() if amx is not None else True)
    has_avx512_bf16 = avx512_bf16() if avx512_bf16 is not None else "avx512_bf16" in flags
    return {"model": model, "flags": [f for f in _CPU_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_matrix_engine": "AMX-BF16" if has_amx else ("AVX512-BF16" if has_avx512_bf16 else None)}


def accelerator_for(device: str) -> str:
    """``gpu`` or ``cpu`` for a ``device`` option (auto: cuda when torch sees one)."""
    return "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


@dataclasses.dataclass(frozen=True)
class SpeedPlan:
    """What a run executes with: each ``auto`` resolved once (:func:`plan_speed`), with the reason."""

    precision: str  # Lightning's precision name
    frozen_dtype: str  # the storage of the frozen matmul weights: "bfloat16" or "float32"
    attention: str  # "sdpa" or "eager"
    compile: bool
    reasons: dict[str, str]  # per choice: why (auto's rule and its measurement) or "set explicitly"
    cpu: dict[str, Any] | None  # cpu_info() on a CPU run

    def record(self) -> dict[str, Any]:
        """For results.json."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line per choice (``fpt fit`` prints them once)."""
        where = f" on {self.cpu['model']} ({', '.join(self.cpu['flags']) or 'no AVX2'})" if self.cpu else ""
        return "\n".join([f"fpt: fast path{where}:",
                          f"  precision {self.precision}, frozen weights stored as {self.frozen_dtype}: "
                          f"{self.reasons['precision']}",
                          f"  attention {self.attention}: {self.reasons['attention']}",
                          f"  compile {'on' if self.compile else 'off'}: {self.reasons['compile']}"])


def choose_precision(setting: str, accelerator: str, cpu: dict[str, Any] | None = None) -> tuple[str, str]:
    """(Lightning precision, why). auto: bf16-mixed on GPUs and on CPUs whose bf16 matrix engine made the bf16
    step faster where measured (:data:`MEASURED_CPU_STEP_MS`); 32-true on other CPUs."""
    if setting != "auto":
        return setting, "set explicitly"
    if accelerator == "gpu":
        return "bf16-mixed", "auto on a GPU: bf16 autocast"
    engine = (cpu or cpu_info())["bf16_matrix_engine"]
    m = MEASURED_CPU_STEP_MS.get(engine, MEASURED_CPU_STEP_MS[None])
    if engine is not None and m["bf16"] < m["fp32"]:
        return "bf16-mixed", (f"auto: this CPU has {engine}; there a bf16 step took {m['bf16']:.0f} ms against "
                              f"{m['fp32']:.0f} in fp32 (x{m['fp32'] / m['bf16']:.1f}; {m['source']})")
    return "32-true", ("auto: no bf16 matrix engine (AMX-BF16 or AVX512-BF16) on this CPU; without one bf16 was "
                       f"~{m['bf16'] / m['fp32']:.1f}x slower than fp32 ({MEASURED_CPU_STEP_MS[None]['source']})")


def frozen_storage(precision: str, strategy: str = "auto") -> str:
    """bf16 storage for the frozen matmul weights under bf16 autocast (which rounds them to bf16 in every
    step anyway: the same numbers, half the memory, no casts). Not under FSDP, whose flat shards need one
    dtype per wrapped module (a block's trained norms are fp32)."""
    return "bfloat16" if str(precision) in ("bf16-mixed", "bf16") and strategy != "fsdp" else "float32"


def choose_attention(setting: str, accelerator: str, precision: str, tokens: int) -> tuple[str, str]:
    """(``sdpa`` | ``eager``, why). auto: eager on the CPU's bf16 path up to :data:`CPU_BF16_EAGER_MAX_TOKENS`."""
    if setting != "auto":
        return setting, "set explicitly"
    if accelerator == "cpu" and str(precision) in ("bf16-mixed", "bf16") and tokens <= CPU_BF16_EAGER_MAX_TOKENS:
        return "eager", (f"auto: {tokens} tokens <= {CPU_BF16_EAGER_MAX_TOKENS}; on a CPU in bf16, eager attention's "
                         "backward beats flash attention's up to there (docs/performance.md)")
    return "sdpa", "auto: fused attention kernels"


def choose_compile(setting: Any, accelerator: str, precision: str, cpu: dict[str, Any] | None, steps: int,
                   padded: bool) -> tuple[bool, str]:
    """(compile?, why). auto: on GPUs; on a CPU's bf16 path where compiling measured faster and the run is long
    enough to repay the compile time :data:`COMPILE_MARGIN` times over; never for padded (variable-length) tasks."""
    if setting != "auto":
        return bool(setting), "set explicitly"
    if accelerator == "gpu":
        return True, "auto: on on a GPU"
    m = MEASURED_CPU_STEP_MS.get((cpu or {}).get("bf16_matrix_engine"), MEASURED_CPU_STEP_MS[None])
    if str(precision) not in ("bf16-mixed", "bf16"):
        return False, "auto: off for fp32 on a CPU (compiled fp32 steps gained x1.1-1.16 after 18-27 s: docs/performance.md)"
    if not m.get("bf16_compiled") or m["bf16_compiled"] >= m["bf16"]:
        return False, "auto: off on this CPU (no compiled bf16 step measured faster on it: docs/performance.md)"
    repay = math.ceil(m["compile_s"] / ((m["bf16"] - m["bf16_compiled"]) / 1000))
    if padded:
        return False, "auto: off for a task of variable sequence length (each new length would compile again)"
    if steps < COMPILE_MARGIN * repay:
        return False, (f"auto: off for {steps} steps; compiling ({m['compile_s']:.0f} s) saved "
                       f"{m['bf16'] - m['bf16_compiled']:.0f} of {m['bf16']:.0f} ms per step ({m['source']}), on from "
                       f"{COMPILE_MARGIN * repay} steps ({COMPILE_MARGIN}x the {repay} that repay it)")
    return True, (f"auto: {steps} steps >= {COMPILE_MARGIN} x {repay}, the steps that repay compiling "
                  f"({m['compile_s']:.0f} s; {m['bf16']:.0f} -> {m['bf16_compiled']:.0f} ms per step, {m['source']})")


def plan_speed(*, precision: str, attention: str, compile: Any, accelerator: str, tokens: int, steps: int = 0,
               padded: bool = False, strategy: str = "auto", cpu: dict[str, Any] | None = None) -> SpeedPlan:
    """Every ``auto`` of the fast path resolved for this machine and this task's sequence length."""
    cpu = (cpu or cpu_info()) if accelerator == "cpu" else None
    precision, why_precision = choose_precision(precision, accelerator, cpu)
    attention, why_attention = choose_attention(attention, accelerator, precision, tokens)
    compiled, why_compile = choose_compile(compile, accelerator, precision, cpu, steps, padded)
    return SpeedPlan(precision, frozen_storage(precision, strategy), attention, compiled,
                     {"precision": why_precision, "attention": why_attention, "compile": why_compile}, cpu)


def plan_for(config, spec) -> SpeedPlan:
    """:func:`plan_speed` for a run's config (``fpt.config.RunConfig``) and its task's shape (``TaskSpec``)."""
    return plan_speed(precision=config.precision, attention=config.attn_implementation, compile=config.compile,
                      accelerator=accelerator_for(config.device), tokens=spec.max_tokens, steps=config.steps,
                      padded=spec.padded, strategy=config.strategy)


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
