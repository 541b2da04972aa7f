"""Issue 12's evidence: frozen MiniLM (an encoder) next to frozen SmolLM2 (a decoder), pretrained vs frozen random.

Runs exactly this grid, one run at a time (72 runs):

* presets: ``bit-xor-small``, ``bit-memory-small``, ``fashion-mnist-small``, ``listops-small`` (ListOps generated
  offline; Fashion-MNIST from ``/usr/share/datasets/fashion-mnist`` or ``--data-dir`` in the preset's usual way);
* variants (``fpt/presets/experiments/encoder.yaml``): MiniLM-L6 with all 6 layers, SmolLM2 with 2 and with 6
  layers, each pretrained and frozen random (``--init random``); every one trains the FPT groups only
  (``--freeze fpt``) with the preset's steps, batch and learning rate;
* seeds 0, 1, 2;

into ``runs/sweeps/encoder/<preset>/`` (each an ordinary ``fpt sweep PRESET --experiment encoder`` directory:
``sweep.json``, ``sweep.md``, one run directory per trial), then writes ``docs/reports/encoder/README.md``
(the comparison table: test accuracy mean +- std over seeds, the pretrained - random gap, steps to the
target, CPU seconds per run) and, with ``fpt report``, ``report.md``, ``report.csv`` and learning curves
beside it.

Command (from the repository root, offline, on a quiet machine)::

    python benchmarks/encoder_evidence.py --threads 1              # everything, then the report
    python benchmarks/encoder_evidence.py --dry-run                # the 72 trials and their state
    python benchmarks/encoder_evidence.py --render-only            # the report from what has finished
    python benchmarks/encoder_evidence.py --set bit-memory-small:steps=300   # one preset's trials shortened

Re-running skips finished runs and resumes interrupted ones (``fpt sweep``'s rules), so the grid can be
run in pieces (``--presets``, ``--variants``, ``--seeds``).

Cost, measured on one thread of a *busy* 2-core machine (load ~4-5; seed 0, pretrained, ``--threads 1``),
seconds per run: MiniLM-L6 / SmolLM2 6 layers -- bit-xor-small 68 / 104 (both stop at 100% after 100
steps), fashion-mnist-small 466 / ~810 (300 steps + a 10k-image test), listops-small 580 / ~870 (139 of 200
steps in 600 s), bit-memory-small ~930 / ~1830 (393 and 200 of 600 steps in 600 s). SmolLM2 2 layers costs
about a third of 6. Frozen random runs that do not reach the target run every step (bit-xor-small: up to
1000). The whole grid is then roughly 4-5 hours per seed there, 12-14 hours for 3 seeds; a quiet machine is
faster (and ``fpt sweep``'s ``--parallel 2`` is not used here, to keep the timing clean).
Expected: no published number; the question is whether the encoder's pretrained - random gap differs from
the decoder's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

PRESETS = ("bit-xor-small", "bit-memory-small", "fashion-mnist-small", "listops-small")
EXPERIMENT = "encoder"
BACKBONES = (("minilm-L6", "MiniLM-L6 (encoder), 6 layers"), ("smollm2-L2", "SmolLM2 (decoder), 2 layers"),
             ("smollm2-L6", "SmolLM2 (decoder), 6 layers"))


def _plans(args):
    from fpt.experiments.plan import make_plan

    plans = []
    for preset in args.presets:
        sets = dict(args.set.get(preset, {}))
        plan = make_plan(preset, experiment=EXPERIMENT, seeds=args.seeds, sweep_dir=Path(args.sweep_root) / preset,
                         threads=args.threads, sets=sets, command=" ".join(["python", *sys.argv]))
        if args.variants:
            plan.trials = [t for t in plan.trials if t.variant in args.variants]
        plans.append(plan)
    return plans


def _fmt(stats: dict) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    text = f"{100 * stats['mean']:.1f}"
    return text + (f" ± {100 * stats['std']:.1f}" if stats["n"] > 1 else "") + f" (n={stats['n']})"


def _gap(pre: dict, rand: dict) -> tuple[str, str]:
    """Pretrained - random, in points, and whether it exceeds twice its standard error."""
    if not pre or not rand or pre.get("mean") is None or rand.get("mean") is None:
        return "-", "-"
    gap = 100 * (pre["mean"] - rand["mean"])
    if pre["n"] < 2 or rand["n"] < 2:
        return f"{gap:+.1f}", "n < 2"
    se = 100 * math.sqrt(pre["std"] ** 2 / pre["n"] + rand["std"] ** 2 / rand["n"])
    verdict = "pretrained better" if gap > 2 * se else ("random better" if gap < -2 * se else "no clear difference")
    return f"{gap:+.1f} ± {se:.1f}", verdict


def _steps(stats: dict, done: int) -> str:
    if not stats or stats.get("mean") is None:
        return f"not reached (0/{done})" if done else "-"
    return f"{stats['mean']:.0f} ({stats['n']}/{done})"


def render(summaries: dict[str, dict], out: Path) -> str:
    lines = [
        "# Encoder vs decoder as the frozen engine (issue 12)", "",
        "Frozen MiniLM-L6 (all-MiniLM-L6-v2: a BERT encoder, 6 x 384, learned positions, LayerNorm, fp32) next to "
        "frozen SmolLM2-135M (a Llama-style decoder: RoPE, RMSNorm, Q4_1 GGUF) cut to 2 and 6 of its 30 blocks. "
        "Every run trains only the FPT groups (input layer, output head, layer norms, positions) with the `-small` "
        "preset's steps, batch size and learning rate; *random* is the same architecture frozen at seeded random "
        "weights. Read-outs: per-token tasks (Bit XOR, Bit Memory) read their tokens on both; single-label tasks "
        "read the last token on SmolLM2 and the mean of the tokens on MiniLM (the BERT family's default, the pooling "
        "MiniLM was trained with).", "",
        "These are `-small` settings for a CPU, **not** the paper's (GPT-2, all layers, full step counts): no "
        "published number applies. Test accuracy in %, mean ± std over seeds (n = seeds finished). "
        "Gap: pretrained − random in points ± its standard error; the verdict needs |gap| > 2 s.e.", "",
        "| task | backbone | pretrained | frozen random | gap | verdict | steps to target, pretrained / random "
        "(reached/runs) | seconds per run, pretrained / random |",
        "|---|---|---|---|---|---|---|---|",
    ]
    devices, commands = set(), set()
    for preset, summary in summaries.items():
        settings = {s["setting"]: s for s in summary["settings"]}
        commands.add(summary.get("command") or "")
        for key, title in BACKBONES:
            pre, rand = settings.get(f"{key}-pretrained"), settings.get(f"{key}-random")
            if pre is None and rand is None:
                continue
            gap, verdict = _gap((pre or {}).get("test"), (rand or {}).get("test"))
            seconds = " / ".join(f"{s['seconds'] / s['done']:.0f}" if s and s["done"] else "-" for s in (pre, rand))
            steps = " / ".join(_steps(s["steps_to_target"], s["done"]) if s else "-" for s in (pre, rand))
            lines.append(f"| {preset} | {title} | {_fmt((pre or {}).get('test'))} | {_fmt((rand or {}).get('test'))} | "
                         f"{gap} | {verdict} | {steps} | {seconds} |")
        for trial in summary["trials"]:
            results_path = Path(trial["run_dir"]) / "results.json"
            if results_path.exists():
                devices.add(json.loads(results_path.read_text()).get("device", ""))
    lines += ["", f"Devices: {', '.join(sorted(d for d in devices if d)) or '-'}. "
              f"Rendered {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/encoder_evidence.py`; per-run rows, "
              "learning curves and the runs' labels: `report.md`, `report.csv`, `curves-*.png` (fpt report). "
              "Seconds: results.json `seconds`, mean over seeds (every invocation of a resumed run).", ""]
    incomplete = [(p, t["run_dir"], t["status"]) for p, s in summaries.items() for t in s["trials"] if t["status"] != "done"]
    if incomplete:
        lines += [f"Not complete: {len(incomplete)} runs are not finished (run the command again to finish them):", ""]
        lines += [f"- {preset}/{Path(run_dir).parent.name}/{Path(run_dir).name}: {status}"
                  for preset, run_dir, status in incomplete[:20]]
        if len(incomplete) > 20:
            lines.append(f"- ... and {len(incomplete) - 20} more")
    text = "\n".join(lines).rstrip() + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(text)
    return text


def _preset_set(text: str) -> tuple[str, str, object]:
    from fpt.experiments.files import parse_assignment

    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected PRESET:KEY=VALUE, got {text!r}")
    preset, assignment = text.split(":", 1)
    try:
        key, value = parse_assignment(assignment, many=False)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return preset, key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sweep-root", default="runs/sweeps/encoder", help="one sweep directory per preset under it")
    parser.add_argument("--out", default="docs/reports/encoder", help="where the report goes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (1 on a shared machine)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--presets", type=lambda s: s.split(","), default=list(PRESETS), help="comma separated")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=None,
                        help="comma separated subset of the experiment's variants (default: all six)")
    parser.add_argument("--set", action="append", default=[], type=_preset_set, metavar="PRESET:KEY=VALUE",
                        help="an override for one preset's trials, e.g. bit-memory-small:steps=300 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and their state; run nothing")
    parser.add_argument("--render-only", action="store_true", help="write the report from finished runs only")
    args = parser.parse_args(argv)
    overrides: dict[str, dict] = {}
    for preset, key, value in args.set:
        overrides.setdefault(preset, {})[key] = value
    args.set = overrides

    from fpt.experiments.plan import describe_plan
    from fpt.experiments.execute import run_plan
    from fpt.experiments.summary import write_summary

    plans = _plans(args)
    if args.dry_run:
        for plan in plans:
            print(describe_plan(plan))
        return 0
    summaries = {}
    for plan in plans:
        summaries[plan.preset] = write_summary(plan) if args.render_only else run_plan(plan)
    from fpt.results.report import write_report

    finished = [str(plan.sweep_dir) for plan in plans if any((t.run_dir / "results.json").exists() for t in plan.trials)]
    if finished:
        write_report(finished, args.out, attention=False)
    print(render(summaries, Path(args.out)))
    return 0 if all(s["complete"] for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
