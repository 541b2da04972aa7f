"""``fpt bench``: time full FPT training steps, the 2021 way against fpt's default path for the device.

One process, one table::

    fpt bench --backbone smollm2-135m --layers 12 --task bit-xor --batch-size 32
    fpt bench --backbone smollm2-135m --layers 12,30 --tokens 64 --input-dim 16 --batch-size 64,256 --device cuda --json b.json

A step is what training does, run by the same code (:class:`fpt.model.step.TrainingStep`): forward through
the real ``FPT`` module (with its real freezing, so frozen weights get no weight gradients),
cross-entropy, backward, gradient-norm clip with the non-finite check, optimizer step. Paths:

* ``naive`` — what the 2021 code did: fp32, eager attention, the for-loop Adam
  (``foreach=False``), a plain ``nn.Module`` (no compile), and host reads every step (the loss for
  logging and the finiteness of the gradient norm);
* ``fast`` — fpt's defaults for the device (``fpt.model.fastpath``): on CUDA bf16 autocast, SDPA
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

Modules: :mod:`~fpt.bench.paths` (building and timing each path), :mod:`~fpt.bench.measure`
(memory, FLOPs, peak, syncs), :mod:`~fpt.bench.profile` (where the time goes), :mod:`~fpt.bench.table`
(the printed tables); this one holds the command line and runs the paths.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from fpt.model import fastpath
from fpt.base.cpu import openmp_wait
from fpt.backbones import load_backbone
from fpt.bench.load import Competitors
from fpt.bench.measure import flops_per_step, matmul_params, measured_bf16_peak_tflops  # noqa: F401
from fpt.bench.paths import CHOICES, PLANNED_STEPS, FitPath, StepPath, auto_plan, spec_and_batch
from fpt.bench.profile import (  # noqa: F401  (tests and tools import these from fpt.bench)
    CATEGORIES,
    HOST_CATEGORY,
    _in_optimizer,
    breakdown_from_events,
    categorize,
    profile_breakdown,
)
from fpt.bench.table import format_table
from fpt.base.io import atomic_write_json
from fpt.model.step import OPTIMIZER_RANGE, PHASE_RANGES  # noqa: F401

PATHS = ("naive", "fast", "fit", "cached", *CHOICES)


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
    b.add_argument("--paths", default="naive,fast", help="comma-separated: naive, fast (what auto picks here), fit (the "
                                                           "whole fpt fit loop), cached (output-only: the head on "
                                                           "precomputed features), fp32, bf16-sdpa, bf16-eager (the paths "
                                                           "auto chooses between; 'choices' is all three)")
    b.add_argument("--compile", default="auto", help="fast path: auto | true | false")
    b.add_argument("--fused-optimizer", default="auto", help="fast path: auto | true | false")
    b.add_argument("--precision", default="auto", help="fast path: auto | 32-true | bf16-mixed")
    b.add_argument("--attn-implementation", default="auto", help="fast path: auto | sdpa | eager")
    b.add_argument("--num-threads", type=int, default=None, help="CPU threads (unset: physical cores)")
    b.add_argument("--profile", type=int, default=3, help="steps per path under torch.profiler after the timed ones, "
                                                        "for the 'where the time goes' table (0: skip)")
    b.add_argument("--load", type=int, default=0, metavar="N",
                   help="CPU: N other processes run the fast path's step in a loop meanwhile (a machine shared with "
                        "other fpt jobs); the table adds their step times and the samples/s of all processes")
    b.add_argument("--load-threads", type=int, default=None, metavar="K",
                   help="with --load: CPU threads of each competing process (default: as --num-threads), e.g. a job "
                        "that started second and took the one free core")
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    return b


def bench(args) -> dict[str, Any]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if not use_cuda:
        torch.set_num_threads(fastpath.cpu_threads(args.num_threads))
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    paths = list(dict.fromkeys(c for p in paths for c in (CHOICES if p == "choices" else [p])))
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise ValueError(f"--paths: unknown {bad}; choose from {', '.join(PATHS)}")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.profile < 0:
        raise ValueError("--batch-size and --steps must be >= 1, --warmup and --profile >= 0")
    load = getattr(args, "load", 0) or 0
    if load < 0 or (load and use_cuda):
        raise ValueError("--load N: N >= 0 competing processes, on the CPU only")
    if getattr(args, "load_threads", None) is not None and (args.load_threads < 1 or not load):
        raise ValueError("--load-threads K: K >= 1 threads per competing process, with --load N")
    competitors = Competitors(args, load) if load else None  # they load while this process builds its paths
    try:
        return _bench(args, device, use_cuda, paths, competitors)
    finally:
        if competitors is not None:
            competitors.close()


def _bench(args, device, use_cuda: bool, paths: list[str], competitors: Competitors | None) -> dict[str, Any]:
    spec, batch, shape, objective = spec_and_batch(args, device)
    out: dict[str, Any] = {
        "backbone": args.backbone, "init": args.init, "layers": args.layers, "freeze": args.freeze, "shape": shape,
        "tokens": int(batch["x"].shape[1]), "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "device": torch.cuda.get_device_name(device) if use_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "paths": {},
    }
    if not use_cuda:  # how idle OpenMP threads wait: what decides how a shared CPU is used (fpt/base/cpu.py)
        out["openmp"] = openmp_wait()
    # what `fpt fit` runs with here (the fast path), why, and the CPU's flags
    out["auto_for_steps"] = PLANNED_STEPS
    out["auto"] = auto_plan(args, "gpu" if use_cuda else "cpu", int(batch["x"].shape[1]), spec.padded).record()
    if use_cuda:
        if getattr(args, "_peak", None) is None:
            args._peak = measured_bf16_peak_tflops(device)
        out["bf16_matmul_peak_tflops"] = args._peak
    # Built and warmed up one after the other (each path's peak memory is what it adds), then timed
    # in alternation, step by step, so that a machine whose load changes slows both paths alike.
    if not use_cuda:
        # One throwaway 1-block load first: imports and one-off allocations would otherwise count
        # in the resident-set growth of whichever path is built first.
        del_me = load_backbone(args.backbone, init=args.init, layers=1, seed=0)
        del del_me
    step_paths = [p for p in paths if p != "fit"]
    if "fit" in paths and not {"naive", "fast"} & set(step_paths):
        step_paths.append("fast")  # built, not timed: the fit path takes its FLOP count and tokens from it
    built = {name: StepPath(name, args, device, spec, batch, objective) for name in step_paths}
    timed = [p for p in built.values() if p.name in paths]
    if competitors is not None:
        competitors.wait_ready()
        competitors.start_timing()
    for _ in range(args.steps):
        for p in timed:
            p.timed_step()
    if competitors is not None:
        competitors.stop_timing()
    if args.profile > 0:  # after the timing, so that the profiler cannot disturb it
        for p in timed:
            p.breakdown = profile_breakdown(p.step, device, args.profile, statistics.median(p.times) * 1000)
    for p in timed:
        out["paths"][p.name] = p.result(args.batch_size)
    if "fit" in paths:
        reference = built.get("fast") or built["naive"]
        out["paths"]["fit"] = FitPath(args, device).result_for(reference, args.batch_size)
    if competitors is not None:
        others = competitors.finish()
        out["load"] = {"processes": competitors.n, "others": others,
                       "others_samples_per_s": sum(o.get("samples_per_s", 0.0) for o in others)}
    if "naive" in out["paths"] and "fast" in out["paths"]:
        out["speedup_fast_over_naive"] = out["paths"]["naive"]["step_ms"] / out["paths"]["fast"]["step_ms"]
    if "cached" in out["paths"]:
        other = "fast" if "fast" in out["paths"] else ("naive" if "naive" in out["paths"] else None)
        if other:
            out["speedup_cached_over_" + other] = out["paths"][other]["step_ms"] / out["paths"]["cached"]["step_ms"]
    if "fp32" in out["paths"]:  # the acceptance ratio of issue 23: each path against --precision 32-true
        out["speedup_over_fp32"] = {name: out["paths"]["fp32"]["step_ms"] / r["step_ms"]
                                    for name, r in out["paths"].items() if name != "fp32"}
    if "naive" in out["paths"] and "fit" in out["paths"]:
        out["speedup_fit_over_naive"] = out["paths"]["naive"]["step_ms"] / out["paths"]["fit"]["step_ms"]
    if use_cuda:
        for r in out["paths"].values():
            r["fraction_of_bf16_peak"] = r["tflops"] / out["bf16_matmul_peak_tflops"]
    return out


def _int_list(text, name: str, allow_none: bool = False) -> list:
    if text is None and allow_none:
        return [None]
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes integers separated by commas, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name}: no value given")
    if min(values) < 1:
        raise ValueError(f"--{name} takes integers >= 1, got {text!r}")
    return values


def main(args) -> int:
    """Every combination of --layers and --batch-size, one table each (and one JSON file for all)."""
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
        atomic_write_json(Path(args.json), runs[0] if len(runs) == 1 else {"runs": runs})
        print(f"wrote {args.json}")
    sys.stdout.flush()
    return 0
