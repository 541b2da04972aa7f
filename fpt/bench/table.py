"""``fpt bench``'s printed tables."""

from __future__ import annotations

from typing import Any

def format_table(out: dict[str, Any]) -> str:
    layers = out["layers"] if out["layers"] is not None else "all"
    lines = [f"fpt bench: {out['backbone']} ({out['init']}, {layers} layers, freeze {out['freeze']}), {out['shape']}, "
             f"batch {out['batch_size']}, {out['device']}, torch {out['torch']}; "
             f"median of {out['steps']} steps after {out['warmup']} warm-up"
             + (f"; OpenMP: {out['openmp']}" if out.get("openmp") else "")]
    head = ["path", "precision", "frozen weights", "attention", "optimizer", "compile", "step ms", "samples/s",
            "tokens/s", "TFLOP/s", "peak MB"]
    peak = out.get("bf16_matmul_peak_tflops")
    if peak:
        head += ["of bf16 peak", "syncs/step"]
    rows = []
    for name, r in out["paths"].items():
        row = [name, r["precision"], _dtype_name(r.get("frozen_weights")), r["attention"], r["optimizer"],
               "on" if r["compile"] else "off",
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
    if out.get("speedup_over_fp32"):
        lines.append("over fp32 (--precision 32-true): " + ", ".join(
            f"{name} x{ratio:.2f}" for name, ratio in out["speedup_over_fp32"].items()))
    auto = out.get("auto")
    if auto:
        same = [name for name, r in out["paths"].items() if name not in ("naive", "fast", "fit", "cached")
                and (r["precision"], r.get("frozen_weights"), r["attention"], bool(r["compile"]))
                == (auto["precision"], auto["frozen_dtype"], auto["attention"], bool(auto["compile"]))]
        lines.append(f"auto takes (the fast path{', = ' + same[0] if same else ''}; for a fit of "
                     f"{out.get('auto_for_steps')} steps): precision {auto['precision']}, "
                     f"frozen weights {_dtype_name(auto['frozen_dtype'])}, attention {auto['attention']}, compile "
                     f"{'on' if auto['compile'] else 'off'}; {auto['reasons']['precision']}")
        if auto.get("cpu"):
            cpu = auto["cpu"]
            lines.append(f"CPU: {cpu['model']}; flags {', '.join(cpu['flags']) or '-'}; torch {cpu['torch_capability']}; "
                         f"bf16 matrix engine: {cpu['bf16_matrix_engine'] or 'none'}")
    if "speedup_fit_over_naive" in out:
        lines.append(f"fit / naive: x{out['speedup_fit_over_naive']:.2f} samples/s (fit: the whole `fpt fit` loop, "
                     f"mean step by wall clock, run after the others)")
    if out.get("load"):
        load = out["load"]
        ms = ", ".join(f"{o['step_ms']:.0f}" if "step_ms" in o else "-" for o in load["others"])
        totals = "; ".join(f"{name} {r['samples_per_s'] + load['others_samples_per_s']:.1f}"
                           for name, r in out["paths"].items() if name != "fit")
        lines.append(f"under load: {load['processes']} other process(es) ran the fast step meanwhile "
                     f"({load['others'][0].get('threads', '?')} threads each), step ms {ms}; samples/s of all processes "
                     f"together: {totals}")
    if peak:
        lines.append(f"measured bf16 matmul peak of this GPU: {peak:.0f} TFLOP/s (8192^3)")
    lines += _time_table(out)
    lines.append("TFLOP/s counts backbone matmuls only: 4 x frozen matmul params x tokens per sample "
                 "(forward + activation gradients; 2 x under output-only); see fpt/bench/__init__.py")
    return "\n".join(lines)


def _dtype_name(dtype: str | None) -> str:
    return {"bfloat16": "bf16", "float32": "fp32"}.get(dtype or "", dtype or "-")


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
