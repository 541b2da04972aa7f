"""``fpt report`` and ``fpt plot``: our results next to the published ones, and figures.

::

    fpt report runs/xor-pretrained runs/xor-random runs/xor-lstm --out reports/xor
    fpt report runs/sweeps/bit-xor-small-table1 --out reports/table1    # a sweep (or any folder of runs)
    fpt plot runs/xor-pretrained                                         # -> runs/xor-pretrained/figures/

``fpt report`` writes, in ``--out`` (default ``report/``):

* ``report.md`` and ``report.csv``: one row per run: task, backbone, init, freeze, layers, protocol,
  our test accuracy at the final weights and at the best validation, and the published number for
  the same setting *and task variant* (:func:`fpt.reference.compare`: the same data and evaluation,
  e.g. ListOps with the 2021 loader's 512-token cut is compared only with numbers measured that
  way), which table it is from and with which model, and every way the run differs from it (model
  size, depth, protocol, ``-small``); validation accuracy, steps to the target accuracy (ours, first
  validation at or above ``target_accuracy``) and the paper's steps to converge, trainable
  parameters, time, device, and the run's label;
* ``curves-<task>.png``: validation accuracy against optimizer steps, one line per run, pretrained
  and random (and LSTM) on the same axes;
* ``convergence.png``: steps to target, ours next to the paper's, per task and setting;
* ``attention-<run>.png`` for every Bit XOR transformer run: attention weights from each output
  token to every input token, per layer and head (as the paper's Bit XOR figure), averaged over
  held-out examples. The model is rebuilt with ``attn_implementation="eager"`` (SDPA returns no
  weights).

Steps: curves use optimizer steps, the convention of the console, ``results.json``
(``val.first_step_at_target``) and, since fpt labels its validation rows itself (``results.json``
``metrics_step: "completed"``), ``metrics.csv``: the validation after 50 optimizer steps is step 50.
Older runs' ``metrics.csv`` (Lightning's count of finished batches: 49) are read with the offset.

Plotting functions return ``matplotlib.figure.Figure`` objects (no pyplot, no global state; PNGs
are written with the Agg canvas).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import yaml

from fpt import reference
from fpt.checkpoint import build_model, load_trained, read_results
from fpt.config import load_config
from fpt.tasks import make_task

# -- finding runs -------------------------------------------------------------------------------


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding results.json) given directly, or found under the given folders
    (sweeps, folders of runs); directories moved aside (``*.old-*``) are skipped."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "results.json").exists():
            found.append(p)
            continue
        if not p.is_dir():
            raise ValueError(f"{p} is not a run directory")
        below = sorted(r.parent for r in p.rglob("results.json") if ".old-" not in str(r.parent))
        if not below:
            hint = " (the run has not finished: fpt fit --resume it)" if (p / "config.yaml").exists() else ""
            raise FileNotFoundError(f"no finished run (results.json) in {p}{hint}")
        found.extend(below)
    unique = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def _eval_every(run_dir: Path) -> int | None:
    try:
        return int((yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("eval_every") or 0) or None
    except (OSError, ValueError, TypeError):
        return None


def _labels_completed_steps(run_dir: Path, steps: list[int]) -> bool:
    """Whether ``metrics.csv`` labels a validation with the optimizer steps before it (fpt's convention since
    results.json has ``metrics_step``), or, in older runs, with Lightning's count of finished batches (one less)."""
    try:
        marker = json.loads((run_dir / "results.json").read_text()).get("metrics_step")
    except (OSError, ValueError, AttributeError):
        marker = None
    if marker is not None:
        return marker == "completed"
    if not steps or 0 in steps:  # a validation after 0 steps is an old label (after step 1)
        return False
    every = _eval_every(run_dir)
    if not every or every == 1:
        return True
    # every validation but the last one (the last step, always validated now) at a multiple of eval_every
    return all(s % every == 0 for s in steps[:-1]) and not all((s + 1) % every == 0 for s in steps)


def read_curve(run_dir: str | Path, metric: str = "val/accuracy") -> tuple[list[int], list[float]]:
    """(optimizer steps, values) of a logged metric from ``metrics.csv`` (one value per step, the last
    logged; see the module doc for the step convention)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return [], []
    by_step: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value, step = row.get(metric), row.get("step")
            if value not in (None, "") and step not in (None, ""):
                by_step[int(float(step))] = float(value)
    steps = sorted(by_step)
    offset = 0 if _labels_completed_steps(Path(run_dir), steps) else 1
    return [s + offset for s in steps], [by_step[s] for s in steps]


# -- the table ------------------------------------------------------------------------------------
def _short_backbone(results: dict[str, Any]) -> str:
    backbone = str(results.get("backbone", ""))
    if backbone.startswith("run:"):
        ident = results.get("backbone_identity") or {}
        source = str(ident.get("source_backbone", ""))
        source = Path(source).name if Path(source).is_absolute() or Path(source).exists() else source
        return f"run:{Path(backbone[4:]).name} ({ident.get('source_task', '?')}-trained {source})"
    if Path(backbone).is_absolute() or backbone.startswith("."):
        return Path(backbone).name
    return backbone


def _freeze_text(freeze: Any) -> str:
    return freeze if isinstance(freeze, str) else "+".join(freeze)


def _pct(x: Any) -> float | None:
    return None if x is None else 100 * float(x)


def run_row(run_dir: Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """One report row: our numbers and the published one for the same setting and task variant."""
    r = results or read_results(run_dir)
    task = r.get("task", "")
    comparison = reference.compare(r)
    setting, ref = comparison.setting, comparison.reference
    val = r.get("val") or {}
    test = r.get("test") or {}
    at_best = (r.get("at_best_val") or {}).get("test") or {}
    if ref is None:
        paper_note = comparison.note
    else:
        paper_note = "; ".join([ref.note] if ref.note else []
                               + [f"also {o.accuracy:g} ({o.label()})" for o in comparison.others])
    return {
        "run": str(run_dir),
        "label": r.get("label", ""),
        "task": task,
        "backbone": _short_backbone(r),
        "init": r.get("init"),
        "freeze": _freeze_text(r.get("freeze", "")),
        "layers": r.get("layers"),
        "seed": r.get("seed"),
        "setting": setting or "",
        "protocol": reference.protocol_of(r),
        "variant": comparison.variant,
        "test_accuracy": _pct(test.get("accuracy")),
        "test_accuracy_at_best_val": _pct(at_best.get("accuracy")),
        # the paper's own form where it scaled its numbers (remote homology: x 0.9739), else None
        "test_accuracy_as_published": _pct(test.get("accuracy_as_published")),
        "paper_accuracy": ref.accuracy if ref else None,
        "paper_source": ref.label() if ref else "",
        "differences": "; ".join(comparison.differences) if ref else "",
        "paper_note": paper_note,
        "val_best_accuracy": None if val.get("best_accuracy") is None else 100 * val["best_accuracy"],
        "target_accuracy": None if val.get("target_accuracy") is None else 100 * val["target_accuracy"],
        "steps_to_target": val.get("first_step_at_target"),
        "paper_steps_to_converge": reference.paper_steps(task, setting),
        "batch_size": r.get("batch_size"),
        "steps": r.get("steps"),
        "trainable_params": r.get("trainable_params"),
        "total_params": r.get("total_params"),
        "seconds": r.get("seconds"),
        "device": r.get("device", ""),
    }


COLUMNS = ("run", "label", "task", "backbone", "init", "freeze", "layers", "seed", "setting", "protocol", "variant",
           "test_accuracy", "test_accuracy_at_best_val", "test_accuracy_as_published", "paper_accuracy", "paper_source",
           "differences", "val_best_accuracy", "target_accuracy", "steps_to_target", "paper_steps_to_converge", "steps",
           "trainable_params", "total_params", "seconds", "device", "paper_note")


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _steps(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    return f"{x:.0e}".replace("e+0", "e") if x >= 1e4 else f"{x:.0f}"


def _paper_steps(r: dict[str, Any]) -> str:
    """The paper's steps to converge, flagged when our batch size is not the 2021 code's 4 (steps are per batch)."""
    text = _steps(r["paper_steps_to_converge"])
    if r["paper_steps_to_converge"] is not None and r.get("batch_size") not in (None, 4):
        text += f" (at batch 4; ours {r['batch_size']})"
    return text


def render_markdown(rows: list[dict[str, Any]], figures: dict[str, str] | None = None) -> str:
    lines = ["# fpt report", "",
             "Test accuracy in %: ours at the final weights and at the best validation (`best.safetensors`), next to "
             "the published number for the same setting (task + init + freeze + backbone kind) measured on the same "
             "task variant (`fpt/reference.py`: e.g. ListOps with the 2021 loader's cut only beside numbers measured "
             "that way). *How it differs* lists every other difference (model size, depth, protocol, `-small`); "
             "empty means none. "
             "Steps to target: our first validation at or above the run's target accuracy; the paper's: steps to converge.",
             ""]
    if any(str(r["label"]).startswith("-small") for r in rows):
        lines += ["Runs labelled `-small` are scaled down for a CPU (fewer layers, steps, shorter inputs): "
                  "they are **not** the paper's setting, so their numbers are not expected to match it.", ""]
    lines += ["| task | run | label | backbone | init | freeze | layers | protocol | setting | test acc (final) | "
              "test acc (best val) | paper | how it differs | val acc | steps to target (target) | paper steps | "
              "trainable params | time (s) | device |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = f"{_steps(r['steps_to_target'])} ({_num(r['target_accuracy'], 0)}%)" if r["steps_to_target"] is not None \
            else f"not reached in {r['steps']} ({_num(r['target_accuracy'], 0)}%)"
        if r["target_accuracy"] is None:  # regression: no accuracy target
            target = "-"
        paper = _num(r["paper_accuracy"]) + (f" ({r['paper_source']})" if r["paper_source"] else "")
        ours = _num(r["test_accuracy"])
        if r.get("test_accuracy_as_published") is not None:
            ours += f" (x 0.9739 as published: {_num(r['test_accuracy_as_published'])})"
        differs = r.get("differences") or ("-" if r["paper_accuracy"] is None else "")
        lines.append(
            f"| {r['task']} | {r.get('name') or Path(r['run']).name} | {r['label'] or '-'} | {r['backbone']} | "
            f"{r['init']} | {r['freeze']} | "
            f"{r['layers']} | {r.get('protocol', 'fpt')} | {r['setting'] or '-'} | {ours} | "
            f"{_num(r.get('test_accuracy_at_best_val'))} | {paper} | {differs} | {_num(r['val_best_accuracy'])} | "
            f"{target} | {_paper_steps(r)} | {_num(r['trainable_params'])} | "
            f"{_num(r['seconds'], 0)} | {r['device']} |")
    notes = sorted({(r["task"], r["setting"], r["paper_note"]) for r in rows if r["paper_note"]})
    if notes:
        lines += ["", "Notes on the published numbers:", ""]
        lines += [f"- {task} / {setting or 'no setting'}: {note}" for task, setting, note in notes]
    lines += ["", "Sources:", ""] + [f"- `{k}`: {v}" for k, v in reference.CITATIONS.items()]
    if figures:
        lines += ["", "Figures:", ""] + [f"- {name}: `{path}`" for name, path in figures.items()]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in COLUMNS})


# -- figures ---------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def run_legend(r: dict[str, Any]) -> str:
    backbone = _short_backbone(r)
    return f"{backbone} {r.get('init')} {_freeze_text(r.get('freeze', ''))} s{r.get('seed')}"


# What tells runs with the same backbone, init, freeze and seed apart, in the order legends add them.
_DISTINGUISHING = (("layers", "{} layers"), ("lr", "lr {:g}"), ("batch_size", "batch {}"), ("steps", "{} steps"),
                   ("protocol", "protocol {}"), ("task_options", "{}"), ("label", "{}"))


def run_legends(results: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    """A legend entry per run that tells it from every other: :func:`run_legend`, plus what differs among runs
    that would read the same (layers, learning rate...), else the run's directory name."""
    base = {d: run_legend(r) if r else str(d) for d, r in results.items()}
    out = dict(base)
    for text in set(base.values()):
        same = [d for d in results if base[d] == text]
        if len(same) < 2:
            continue
        extra = {d: [] for d in same}
        for key, fmt in _DISTINGUISHING:
            values = [results[d].get(key) if key != "protocol" else reference.protocol_of(results[d]) for d in same]
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
                for d, v in zip(same, values):
                    if key == "task_options" and isinstance(v, dict):
                        others = [results[o].get(key) or {} for o in same if o != d]
                        v = ", ".join(f"{k}={x}" for k, x in v.items() if any(o.get(k) != x for o in others))
                    if v not in (None, ""):
                        extra[d].append(fmt.format(v) if not (isinstance(v, str) and fmt == "lr {:g}") else str(v))
        for d in same:
            out[d] = " ".join([text, *extra[d]])
        if len({out[d] for d in same}) < len(same):  # still alike: their folders tell them apart
            for d in same:
                out[d] = f"{out[d]} ({Path(d).name})"
    return out


def learning_curve_figure(run_dirs: list[Path], title: str | None = None):
    """Validation accuracy (%) against optimizer steps, one line per run (x, y: ``read_curve``)."""
    fig = _figure()
    ax = fig.add_subplot()
    tasks = set()
    results = {Path(d): (read_results(d) if (Path(d) / "results.json").exists() else {}) for d in run_dirs}
    legends = run_legends(results)
    lowest = 100.0
    for run_dir in run_dirs:
        steps, acc = read_curve(run_dir)
        if not steps:
            continue
        r = results[Path(run_dir)]
        tasks.add(r.get("task", ""))
        style = "-" if r.get("init") == "pretrained" and reference.backbone_kind(r) != "lstm" else "--"
        ax.plot(steps, [100 * a for a in acc], style, marker="o", markersize=3, label=legends[Path(run_dir)],
                clip_on=False)  # points at 100% are drawn whole on the top edge
        lowest = min(lowest, 100 * min(acc))
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or ("learning curves: " + ", ".join(sorted(t for t in tasks if t))))
    ax.grid(True, alpha=0.3)
    if ax.lines:
        _accuracy_axis(ax, lowest)
        ax.legend(fontsize=7)
    return fig


def _accuracy_axis(ax, lowest: float) -> None:
    """A percentage axis that ends at 100 (never at 104: no accuracy is above 100%), from a round number below
    the lowest value."""
    bottom = max(0.0, 10 * math.floor((lowest - 2) / 10))
    ax.set_ylim(bottom, 100)


def convergence_figure(rows: list[dict[str, Any]]):
    """Steps to the target accuracy (ours; hatched where not reached, drawn at the steps trained)
    next to the paper's steps to converge, per task and setting (log scale)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["setting"] or f"{r['init']}/{r['freeze']}"), []).append(r)
    keys = sorted(groups)
    ours, reached, runs, paper = [], [], [], []
    for key in keys:
        rs = groups[key]
        hit = [float(r["steps_to_target"]) for r in rs if r["steps_to_target"] is not None]
        ours.append(float(np.mean(hit)) if hit else float(max(r["steps"] or 0 for r in rs)))
        reached.append(len(hit))
        runs.append(len(rs))
        paper.append(rs[0]["paper_steps_to_converge"])
    fig = _figure(max(6.4, 1.1 * len(keys) + 2), 4.4)
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    bars = ax.bar(x - 0.2, ours, 0.4, color="tab:blue",
                  label="ours: mean steps to target of the runs that reached it (k/n: runs that did; "
                        "hatched: none, drawn at the steps trained)")
    for bar, hit, n in zip(bars, reached, runs):
        if not hit:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        text = "not reached" if not hit else (f"{hit}/{n}" if hit < n else (f"{n}/{n}" if n > 1 else ""))
        if text:
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=6, xytext=(0, 2), textcoords="offset points")
    ax.bar(x + 0.2, [p if p is not None else 0 for p in paper], 0.4, label="paper: steps to converge", color="tab:orange")
    ax.set_xticks(x, [f"{t}\n{s}" for t, s in keys], fontsize=7)
    positive = [v for v in ours + [p for p in paper if p] if v and v > 0]
    if positive:
        ax.set_yscale("log")
        ax.set_ylim(top=max(positive) * 3)  # room for the k/n labels above the bars
    ax.set_ylabel("optimizer steps")
    ax.set_title("convergence speed")
    ax.legend(fontsize=6, loc="upper left")
    fig.fpt_data = {"keys": keys, "ours": ours, "reached": [h == n for h, n in zip(reached, runs)],
                    "reached_runs": reached, "runs": runs, "paper": paper}  # for tests and callers
    return fig


def attention_maps(run_dir: str | Path, examples: int = 64):
    """Attention from the read-out (output) tokens to every token, averaged over held-out examples:
    a tensor ``[layers, heads, output tokens, tokens]`` and the run's config."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    config.attn_implementation = "eager"  # SDPA returns no attention weights
    model = build_model(config)
    load_trained(model, run_dir / "model.safetensors")
    model.eval()
    if model.backbone.arch == "lstm":
        raise ValueError(f"{run_dir}: an LSTM has no attention")
    task = make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
    split = task.val()
    batch = split.batch(np.arange(min(examples, len(split))))
    with torch.no_grad():
        h = model.embed(batch["x"])
        out = model.backbone.model(inputs_embeds=h, attention_mask=batch.get("mask"), output_attentions=True,
                                   use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError(f"{run_dir}: the backbone returned no attention weights")
    att = torch.stack([a.float().mean(0) for a in out.attentions])  # [L, H, T, T]
    n_out = model.readout_tokens
    return att[:, :, -n_out:, :].numpy(), config


def attention_figure(maps, config=None, title: str | None = None):
    """A grid of heat maps, layers x heads: rows = output tokens, columns = input tokens (``maps``:
    ``[layers, heads, output tokens, tokens]`` from :func:`attention_maps`)."""
    layers, heads, n_out, n_tokens = maps.shape
    fig = _figure(max(6.0, 1.7 * heads), max(2.6, 1.8 * layers + 0.8))
    axes = fig.subplots(layers, heads, squeeze=False)
    xlabels = ylabels = None
    subtitle = ""
    if config is not None and config.task == "bit-xor":
        patch = int(config.task_options.get("patch_size", 1))
        half = n_tokens // 2
        if n_tokens <= 24:
            xlabels = [f"a{i + 1}" for i in range(half)] + [f"b{i + 1}" for i in range(n_tokens - half)]
            ylabels = [f"out{i + 1}" for i in range(n_out)]
        subtitle = (f"Bit XOR ({patch} bit(s) per token): tokens a1-a{half} hold string a, b1-b{n_tokens - half} string b; "
                    "output i should attend to a_i and b_i")
    vmax = float(maps.max()) if maps.size else 1.0
    image = None
    for l in range(layers):
        for h in range(heads):
            ax = axes[l][h]
            image = ax.imshow(maps[l, h], vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
            ax.set_title(f"layer {l + 1} head {h + 1}", fontsize=7)
            if xlabels and l == layers - 1:
                ax.set_xticks(range(n_tokens), xlabels, fontsize=5, rotation=90)
            else:
                ax.set_xticks([])
            if ylabels and h == 0:
                ax.set_yticks(range(n_out), ylabels, fontsize=5)
            else:
                ax.set_yticks([])
            if h == 0:
                ax.set_ylabel("output token", fontsize=7)
            if l == layers - 1:
                ax.set_xlabel("input token", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle((title or "attention from output tokens") + ("\n" + subtitle if subtitle else ""), fontsize=8)
    return fig


# -- entry points ----------------------------------------------------------------------------------
def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return str(path)


def write_report(paths: Iterable[str | Path], out_dir: str | Path = "report", attention: bool = True) -> dict[str, Any]:
    """Table (md + csv) and figures for the runs in ``paths``; returns what was written."""
    run_dirs = find_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {d: read_results(d) for d in run_dirs}
    rows = [run_row(d, results[d]) for d in run_dirs]
    names = _short_names(run_dirs)
    for row, d in zip(rows, run_dirs):
        row["name"] = names[d]
    rows.sort(key=lambda r: (r["task"], r["label"], r["setting"], r["run"]))
    figures: dict[str, str] = {}
    for task in sorted({r["task"] for r in rows} - {"timeseries"}):  # timeseries: per problem, in its own section
        dirs = [d for d in run_dirs if results[d].get("task") == task]
        figures[f"learning curves, {task}"] = _save(learning_curve_figure(dirs, f"{task}: validation accuracy"),
                                                    out / f"curves-{task}.png")
    figures["convergence speed"] = _save(convergence_figure(rows), out / "convergence.png")
    skipped = []
    if attention:
        for d in run_dirs:
            r = results[d]
            if r.get("task") != "bit-xor" or reference.backbone_kind(r) == "lstm":
                continue
            try:
                maps, config = attention_maps(d)
            except Exception as err:  # e.g. a backbone that is not available here any more
                skipped.append(f"{d}: {err}")
                continue
            name = _slug_path(d)
            figures[f"attention, {name}"] = _save(attention_figure(maps, config, f"attention: {run_legend(r)}"),
                                                  out / f"attention-{name}.png")
    ts_markdown, ts_figures = timeseries_section(run_dirs, results, out)
    figures.update(ts_figures)
    (out / "report.md").write_text(render_markdown(rows, {k: Path(v).name for k, v in figures.items()}) + ts_markdown)
    write_csv(rows, out / "report.csv")
    return {"rows": rows, "figures": figures, "markdown": str(out / "report.md"), "csv": str(out / "report.csv"),
            "skipped": skipped}


def _short_names(run_dirs: list[Path]) -> dict[Path, str]:
    """Each run's path relative to the deepest folder holding all of them (``sweep/lr=0.001/s0``)."""
    import os

    resolved = [str(Path(d).resolve()) for d in run_dirs]
    if len(resolved) == 1:
        return {run_dirs[0]: Path(resolved[0]).name}
    root = os.path.commonpath(resolved)
    return {d: os.path.relpath(r, root) for d, r in zip(run_dirs, resolved)}


def _slug_path(run_dir: Path) -> str:
    parts = [p for p in Path(run_dir).parts[-3:] if p not in ("/", "")]
    return "-".join(parts).replace(" ", "_")


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, str]:
    """``fpt plot``: learning curve (and attention maps for Bit XOR) of one run, in RUN_DIR/figures."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    out = Path(out_dir) if out_dir else run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = {"learning curve": _save(learning_curve_figure([run_dir], f"{run_dir.name}: validation accuracy"),
                                       out / "curve.png")}
    results = read_results(run_dir) if (run_dir / "results.json").exists() else {}
    if results.get("task") == "bit-xor" and reference.backbone_kind(results) != "lstm":
        maps, config = attention_maps(run_dir)
        written["attention"] = _save(attention_figure(maps, config, f"attention: {run_legend(results)}"),
                                     out / "attention.png")
    return written


# -- time series (the timeseries task): our runs next to the field's published baselines -------------
# Self-contained: rows grouped per problem, setting and learning rate; the learning rate of each
# setting chosen on mean validation (accuracy up, RMSE down); published numbers only for the same
# problem and split (fpt.reference.ts_lookup).
TS_SETTING_NAMES = {"fpt": "FPT (pretrained, frozen)", "frozen-random": "frozen random transformer",
                    "full-lstm": "LSTM (trained)", "full-transformer": "transformer (trained from scratch)",
                    "finetuned": "pretrained, fully trained", "frozen-random-lstm": "frozen random LSTM"}
TS_METHODS = ("HIVE-COTE 2", "MultiRocket", "ROCKET", "1-NN DTW", "GPT4TS")


def _ts_fmt(value: float | None, metric: str, std: float | None = None, n: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in ("accuracy", "exact_accuracy"):
        return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None and n > 1 else "")
    return f"{value:.4g}" + (f" ± {std:.2g}" if std is not None and n > 1 else "")


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def timeseries_table(run_dirs: list[Path], results: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (problem, setting, lr): seeds, validation and test mean / std, time; ``chosen`` marks
    the lr of each (problem, setting) with the best mean validation value in the metric's direction (ties:
    the lower mean validation loss, as ``fpt sweep`` chooses)."""
    from fpt.objectives import headline, test_score, val_score

    groups: dict[tuple[str, str, float], dict[str, Any]] = {}
    for d in run_dirs:
        r = results[d]
        if r.get("task") != "timeseries":
            continue
        data = r.get("data") or {}
        problem = str(data.get("problem") or (r.get("task_options") or {}).get("name") or "?")
        setting = reference.setting_of(r) or f"{r.get('init')}/{_freeze_text(r.get('freeze', ''))}/{reference.backbone_kind(r)}"
        metric, higher = headline(r)
        g = groups.setdefault((problem, setting, float(r.get("lr") or 0)), {
            "problem": problem, "setting": setting, "lr": r.get("lr"), "metric": metric, "higher_is_better": higher,
            "layers": r.get("layers"), "backbone": _short_backbone(r), "label": r.get("label", ""), "runs": [],
            "data": data})
        g["runs"].append({"run": d, "seed": r.get("seed"), "val": val_score(r), "test": test_score(r),
                          "val_loss": (r.get("val") or {}).get("best_loss"),
                          "seconds": r.get("seconds"), "cpu_seconds": r.get("cpu_seconds"), "steps": r.get("steps")})
    table = []
    for g in groups.values():
        runs = g.pop("runs")
        g["val_mean"], g["val_std"] = _mean_sd([x["val"] for x in runs if x["val"] is not None])
        g["test_mean"], g["test_std"] = _mean_sd([x["test"] for x in runs if x["test"] is not None])
        g["val_loss_mean"] = _mean_sd([x["val_loss"] for x in runs if x["val_loss"] is not None])[0]
        g["seeds"] = sorted(x["seed"] for x in runs)
        g["seconds"] = _mean_sd([float(x["seconds"]) for x in runs if x["seconds"] is not None])[0]
        g["cpu_seconds"] = _mean_sd([float(x["cpu_seconds"]) for x in runs if x["cpu_seconds"] is not None])[0]
        g["steps"] = max((x["steps"] or 0) for x in runs)
        g["run_dirs"] = [x["run"] for x in runs]
        table.append(g)
    for g in table:
        rivals = [h for h in table if (h["problem"], h["setting"]) == (g["problem"], g["setting"])
                  and h["val_mean"] is not None]
        # as the sweep chooses (fpt.sweep): the best mean validation value; a tie goes to the lower mean
        # validation loss at those points (small validation sets tie often)
        sign = -1 if g["higher_is_better"] else 1
        best = min(rivals, key=lambda h: (sign * h["val_mean"], h["val_loss_mean"] if h["val_loss_mean"] is not None
                                          else math.inf)) if rivals else None
        g["chosen"] = best is g
    table.sort(key=lambda g: (g["problem"], list(TS_SETTING_NAMES).index(g["setting"])
                              if g["setting"] in TS_SETTING_NAMES else 99, g["setting"], g["lr"] or 0))
    return table


def _verdict(problem: str, chosen: dict[str, dict[str, Any]], published: list) -> str:
    """One plain sentence: the frozen LM against frozen random, the LSTM and the best published number."""
    fpt = chosen.get("fpt")
    if fpt is None or fpt["test_mean"] is None:
        return f"- {problem}: no FPT (pretrained, frozen) run."
    metric, higher = fpt["metric"], fpt["higher_is_better"]
    scale = 100 if metric == "accuracy" else 1
    parts = []
    for key, name in (("frozen-random", "frozen random"), ("full-lstm", "the LSTM")):
        other = chosen.get(key)
        if other is None or other["test_mean"] is None:
            continue
        diff = (fpt["test_mean"] - other["test_mean"]) * (1 if higher else -1)
        spread = max(fpt["test_std"] or 0, other["test_std"] or 0)
        word = "ties with" if abs(diff) <= spread or diff == 0 else ("beats" if diff > 0 else "loses to")
        parts.append(f"{word} {name} ({_ts_fmt(fpt['test_mean'], metric)} vs {_ts_fmt(other['test_mean'], metric)}"
                     f"{', within one std' if word == 'ties with' and diff else ''})")
    if published:
        best = (max if higher else min)(published, key=lambda p: p.value)
        ours = fpt["test_mean"] * scale
        gap = (ours - best.value) * (1 if higher else -1)
        word = "matches" if abs(gap) < 1e-9 else ("is above" if gap > 0 else "is below")
        unit = " points" if metric == "accuracy" else ""
        parts.append(f"{word} the best published number ({best.method} {best.value:g}"
                     + (f"; by {abs(gap):.3g}{unit}" if word != "matches" else "") + ")")
    return f"- {problem}: FPT " + "; ".join(parts) + "." if parts else f"- {problem}: nothing to compare with."


def timeseries_section(run_dirs: list[Path], results: dict[Path, dict[str, Any]], out: Path) -> tuple[str, dict[str, str]]:
    """Markdown (appended to report.md), ``timeseries.csv`` and per-problem learning curves."""
    table = timeseries_table(run_dirs, results)
    if not table:
        return "", {}
    lines = ["", "## Time series: FPT against the field's published baselines", "",
             "Test accuracy in % (RMSE in the targets' units for regression), mean ± std over seeds, for each setting "
             "at the learning rate chosen on validation (mean over seeds; accuracy up, RMSE down). Published numbers "
             "only where the run used the same problem and the archive's default TRAIN/TEST split "
             "(`fpt/reference.py`, `TS_REFERENCES`). fpt carves its validation cases out of TRAIN, so it trains on "
             "fewer cases than the published methods, which use all of TRAIN.", ""]
    settings = [s for s in TS_SETTING_NAMES if any(g["setting"] == s for g in table)]
    settings += sorted({g["setting"] for g in table} - set(settings))
    lines += ["| problem | metric | " + " | ".join(TS_SETTING_NAMES.get(s, s) for s in settings) + " | "
              + " | ".join(TS_METHODS) + " | trivial |",
              "|---|---|" + "---|" * (len(settings) + len(TS_METHODS) + 1)]
    verdicts, notes, figures = [], [], {}
    for problem in sorted({g["problem"] for g in table}):
        rows = [g for g in table if g["problem"] == problem]
        chosen = {g["setting"]: g for g in rows if g["chosen"]}
        metric = rows[0]["metric"]
        published, why = reference.ts_lookup(rows[0]["data"])
        if why:
            notes.append(f"- {problem}: {why}")
        notes += [f"- {problem}, {p.method}: {p.note}" for p in published if p.note]
        cells = []
        for s in settings:
            g = chosen.get(s)
            cells.append("-" if g is None else f"{_ts_fmt(g['test_mean'], metric, g['test_std'], len(g['seeds']))} "
                                              f"(lr {g['lr']:g}, {len(g['seeds'])} seed{'s' * (len(g['seeds']) != 1)})")
        pub = {p.method: f"{p.value:g}" for p in published}
        trivial = (rows[0]["data"].get("trivial_baseline") or {}).get(metric)
        lines.append(f"| {problem} | {metric} | " + " | ".join(cells) + " | "
                     + " | ".join(pub.get(m, "-") for m in TS_METHODS) + f" | {_ts_fmt(trivial, metric)} |")
        verdicts.append(_verdict(problem, chosen, published))
        figures[f"learning curves, timeseries {problem}"] = _save(
            timeseries_curve_figure(problem, [g for g in rows if g["chosen"]], results),
            out / f"curves-timeseries-{_slug_problem(problem)}.png")
    lines += ["", "Trivial: the training split's majority class (accuracy) or mean target (RMSE), scored on the "
              "same test split: a model that ignores the series.", "", "Where the frozen LM wins, ties or loses "
              "(ties: the difference is within the larger of the two standard deviations over seeds):", ""] + verdicts
    if notes:
        lines += ["", "Notes on the published numbers:", ""] + notes
    lines += ["", "Every setting and learning rate (chosen ones in **bold**; time: mean wall seconds and process CPU "
              "seconds per run):", "",
              "| problem | setting | backbone | layers | lr | seeds | val | test | steps | time (s) | CPU (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in table:
        name = TS_SETTING_NAMES.get(g["setting"], g["setting"])
        lines.append(f"| {g['problem']} | {'**' + name + '**' if g['chosen'] else name} | {g['backbone']} | {g['layers']} | "
                     f"{g['lr']:g} | {len(g['seeds'])} | {_ts_fmt(g['val_mean'], g['metric'], g['val_std'], len(g['seeds']))} | "
                     f"{_ts_fmt(g['test_mean'], g['metric'], g['test_std'], len(g['seeds']))} | {g['steps']} | "
                     f"{_num(g['seconds'], 0)} | {_num(g['cpu_seconds'], 0)} |")
    lines += ["", "Sources of the published numbers:", ""] + [f"- `{k}`: {v}" for k, v in reference.TS_CITATIONS.items()]
    if figures:
        lines += ["", "Learning curves (validation metric against optimizer steps, chosen learning rate of each "
                  "setting, one line per seed):", ""] + [f"- {k}: `{Path(v).name}`" for k, v in figures.items()]
    columns = ("problem", "setting", "backbone", "layers", "lr", "metric", "chosen", "val_mean", "val_std", "test_mean",
               "test_std", "steps", "seconds", "cpu_seconds")
    with open(out / "timeseries.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns) + ["seeds"])
        writer.writeheader()
        for g in table:
            writer.writerow({**{k: g.get(k) for k in columns}, "seeds": " ".join(map(str, g["seeds"]))})
    return "\n".join(lines) + "\n", figures


def _slug_problem(problem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in problem)


def timeseries_curve_figure(problem: str, groups: list[dict[str, Any]], results: dict[Path, dict[str, Any]]):
    """Validation accuracy (%) or RMSE against optimizer steps, per setting (chosen lr), one line per seed."""
    fig = _figure()
    ax = fig.add_subplot()
    colours = {"fpt": "tab:blue", "frozen-random": "tab:orange", "full-lstm": "tab:green"}
    metric = groups[0]["metric"] if groups else "accuracy"
    for g in groups:
        for i, d in enumerate(g["run_dirs"]):
            steps, values = read_curve(d, f"val/{metric}")
            if not steps:
                continue
            scale = 100 if metric == "accuracy" else 1
            ax.plot(steps, [scale * v for v in values], color=colours.get(g["setting"]), marker="o", markersize=2,
                    linewidth=1, alpha=0.8,
                    label=f"{TS_SETTING_NAMES.get(g['setting'], g['setting'])}, lr {g['lr']:g}" if i == 0 else None)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy (%)" if metric == "accuracy" else f"validation {metric}")
    if metric == "accuracy" and ax.lines:
        _accuracy_axis(ax, min(float(np.min(line.get_ydata())) for line in ax.lines))
    ax.set_title(f"{problem}: validation {metric}")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    return fig
