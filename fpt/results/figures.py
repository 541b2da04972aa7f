"""fpt report's and fpt plot's figures: learning curves, convergence, attention maps, generalisation; the Bit XOR
attention-on-the-relevant-bits number."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.base.io import atomic_write_bytes
from fpt.base.text import plural
from fpt.results import reference
from fpt.runs.checkpoint import build_model, load_trained, read_results
from fpt.config.files import load_config
from fpt.results.rows import _freeze_text, _short_backbone, read_curve
from fpt.tasks.registry import task_of


# -- figures ---------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def run_legend(r: dict[str, Any]) -> str:
    backbone = _short_backbone(r)
    return f"{backbone} {r.get('init')} {_freeze_text(r.get('freeze', ''))} s{r.get('seed')}"


# What tells runs with the same backbone, init, freeze and seed apart, in the order legends add them.
_DISTINGUISHING = (("layers", lambda v: plural(v, "layer")), ("lr", "lr {:g}"), ("batch_size", "batch {}"),
                   ("steps", lambda v: plural(v, "step")),
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
                        extra[d].append(fmt(v) if callable(fmt) else fmt.format(v) if not (
                            isinstance(v, str) and fmt == "lr {:g}") else str(v))
        for d in same:
            out[d] = " ".join([text, *extra[d]])
        if len({out[d] for d in same}) < len(same):  # still alike: their folders tell them apart
            for d in same:
                out[d] = f"{out[d]} ({Path(d).name})"
    return out


def _base_parts(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, text) of :func:`run_legend`'s words: backbone, init, freeze, seed."""
    return [("backbone", _short_backbone(r)), ("init", str(r.get("init"))), ("freeze", _freeze_text(r.get("freeze", ""))),
            ("seed", f"s{r.get('seed')}")]


def varying_legends(results: dict[Path, dict[str, Any]]) -> tuple[dict[Path, str], str]:
    """Legend entries that say only what differs among the runs (:func:`run_legends` without the words every run
    shares), and those shared words (for the title). One run: its whole legend, nothing shared."""
    legends = run_legends(results)
    if len(results) < 2 or not all(results.values()):
        return legends, ""
    parts = {d: _base_parts(r) for d, r in results.items()}
    shared = [i for i in range(4) if len({parts[d][i][1] for d in results}) == 1]
    out = {}
    for d, r in results.items():
        extra = legends[d][len(run_legend(r)):].strip()
        words = [text for i, (_, text) in enumerate(parts[d]) if i not in shared] + ([extra] if extra else [])
        out[d] = " ".join(words) or legends[d]
    common = " ".join(parts[next(iter(results))][i][1] for i in shared)
    return out, common


def _legend_below(fig, ax, fontsize: float = 7) -> None:
    """The axes' legend below the plot, outside it, in as many columns as the entries' length allows: the plot keeps
    its size from 1 to 20 runs (the figure grows instead; see :func:`_legend_rows`)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig.legend(handles, labels, loc="outside lower center", ncols=_legend_columns(labels), fontsize=fontsize,
               frameon=False)


def _legend_columns(labels: list[str]) -> int:
    longest = max((len(t) for t in labels), default=1)
    return max(1, min(len(labels), 4, 96 // max(longest, 1)))


def _legend_rows(labels: list[str]) -> int:
    return -(-len(labels) // _legend_columns(labels))


def learning_curve_figure(run_dirs: list[Path], title: str | None = None):
    """Validation accuracy (%) against optimizer steps, one line per run (x, y: ``read_curve``). The legend says
    what differs among the runs, below the plot; what they share is in the title."""
    import textwrap

    results = {Path(d): (read_results(d) if (Path(d) / "results.json").exists() else {}) for d in run_dirs}
    legends, common = varying_legends(results)
    curves = [(Path(d), *read_curve(d)) for d in run_dirs]
    curves = [c for c in curves if c[1]]
    labels = [legends[d] for d, _, _ in curves]
    fig = _figure(6.4, 4.2 + 0.17 * _legend_rows(labels) if labels else 4.2)
    ax = fig.add_subplot()
    tasks = set()
    lowest = 100.0
    many = len(curves) > 10  # more lines than the default cycle has colours
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors if many else None
    for i, (run_dir, steps, acc) in enumerate(curves):
        r = results[run_dir]
        tasks.add(r.get("task", ""))
        style = "-" if r.get("init") == "pretrained" and reference.backbone_kind(r) != "lstm" else "--"
        ax.plot(steps, [100 * a for a in acc], style, marker="o", markersize=3, label=legends[run_dir],
                clip_on=False, **({"color": colours[i % len(colours)]} if many else {}))  # 100% drawn whole
        lowest = min(lowest, 100 * min(acc))
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy (%)")
    heading = title or ("learning curves: " + ", ".join(sorted(t for t in tasks if t)))
    if common:
        heading += f" ({plural(len(curves), 'run')}; all: {common})"
    ax.set_title("\n".join(textwrap.wrap(heading, 70)), fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        _accuracy_axis(ax, lowest)
        _legend_below(fig, ax)
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
    fig = _figure(max(6.4, 1.1 * len(keys) + 2), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    bars = ax.bar(x - 0.2, ours, 0.4, color="tab:blue",
                  label="ours: mean steps to target of the runs that reached it (k/n: runs that did; "
                        "hatched: none, drawn at the steps trained)")
    for bar, hit, n in zip(bars, reached, runs):
        if not hit:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        text = f"{hit}/{n}" + ("" if hit else " not reached")  # every bar: how many of its runs reached the target
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
    _legend_below(fig, ax, fontsize=6)
    fig.fpt_data = {"keys": keys, "ours": ours, "reached": [h == n for h, n in zip(reached, runs)],
                    "reached_runs": reached, "runs": runs, "paper": paper}  # for tests and callers
    return fig


def attention_maps(run_dir: str | Path, examples: int = 64):
    """Attention from the read-out (output) tokens to every token, averaged over held-out examples:
    a tensor ``[layers, heads, output tokens, tokens]`` and the run's config."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    config.attn_implementation = "eager"  # SDPA returns no attention weights
    config.precision = "32-true"  # fp32 maps (each row sums to 1); the trained parameters are fp32 either way
    model = build_model(config)
    load_trained(model, run_dir / "model.safetensors")
    model.eval()
    if model.backbone.arch == "lstm":
        raise ValueError(f"{run_dir}: an LSTM has no attention")
    task = task_of(config)
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
    """The figure as a PNG file, rendered in memory and written whole (a full disk leaves no 0-byte PNG and the
    error names the file: ``fpt.io.WriteError``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return str(path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, str]:
    """``fpt plot``: learning curve (and attention maps for Bit XOR) of one run, in RUN_DIR/figures."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    if not read_curve(run_dir)[0]:
        raise ValueError(f"{run_dir}: no validation in {run_dir / 'metrics.csv'} yet (the run ended or was killed before "
                         "its first validation, --eval-every): no learning curve to draw")
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


# -- the paper's figures beyond the learning curves ------------------------------------------------------
# Bit XOR: does attention land on the two input tokens that decide each output bit (the paper's / BAIR post's
# attention figure, "it is possible to force the self-attention to attend to the relevant bits for strings of
# length up to 256")? Generalisation: train vs held-out accuracy over training (the paper's figure plots test;
# fpt reads the test split only at the end, so the held-out curve is validation, with the final test marked).
def relevant_attention(maps) -> dict[str, Any]:
    """Attention mass on the two tokens that decide each output of Bit XOR (``maps``: ``[layers, heads, outputs,
    tokens]`` from :func:`attention_maps`, outputs = the last half of the tokens, one per b-token).

    Output token j (the j-th token of string b, position ``half + j``) should attend to a_j (position j) and
    b_j (position ``half + j``). Per layer and head: the mean over outputs of the weight on those two positions;
    ``uniform``: what a head attending evenly to every token it sees (causal: ``half + j + 1`` of them) would
    put there. Returns the per-layer best head, the overall best, and the uniform baseline."""
    maps = np.asarray(maps, dtype=np.float64)
    layers, heads, n_out, n_tokens = maps.shape
    half = n_tokens // 2
    if n_out != half or n_tokens % 2:
        raise ValueError(f"not a Bit XOR map: {n_out} outputs over {n_tokens} tokens (expected half the tokens)")
    j = np.arange(n_out)
    mass = maps[:, :, j, j] + maps[:, :, j, half + j]  # [layers, heads, outputs]
    per_head = mass.mean(-1)  # [layers, heads]
    uniform = float(np.mean(2.0 / (half + j + 1)))
    best_layer, best_head = np.unravel_index(int(np.argmax(per_head)), per_head.shape)
    return {"per_layer_best": [float(per_head[l].max()) for l in range(layers)],
            "per_layer_best_head": [int(per_head[l].argmax()) + 1 for l in range(layers)],
            "best": float(per_head[best_layer, best_head]), "best_layer": int(best_layer) + 1,
            "best_head": int(best_head) + 1, "uniform": uniform, "tokens": n_tokens}


def relevant_attention_text(stats: dict[str, Any]) -> str:
    layers = ", ".join(f"layer {i + 1}: {100 * m:.0f}% (head {h})"
                       for i, (m, h) in enumerate(zip(stats["per_layer_best"], stats["per_layer_best_head"])))
    return (f"best head {100 * stats['best']:.0f}% (layer {stats['best_layer']} head {stats['best_head']}); "
            f"uniform {100 * stats['uniform']:.0f}%; {layers}")


def _train_curve(run_dir: Path, metric: str = "train/accuracy") -> tuple[list[int], list[float]]:
    """Training-batch accuracy as logged (Lightning labels a training row with the batch index: +1 is the
    optimizer steps done)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return [], []
    points: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value, step = row.get(metric), row.get("step")
            if value not in (None, "") and step not in (None, ""):
                points[int(float(step)) + 1] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def generalisation_figure(run_dirs: list[Path], title: str = "train vs held-out accuracy"):
    """The paper's generalisation figure, per run: training-batch accuracy and validation accuracy against
    optimizer steps, the final test accuracy as a marker at the last step (never read during training)."""
    fig = _figure()
    ax = fig.add_subplot()
    data = {}
    for i, d in enumerate(run_dirs):
        colour = f"C{i % 10}"
        r = read_results(d) if (Path(d) / "results.json").exists() else {}
        name = run_legend(r) if r else Path(d).name
        ts, tv = _train_curve(d)
        vs, vv = read_curve(d)
        if ts:
            ax.plot(ts, [100 * v for v in tv], color=colour, linestyle=":", linewidth=1, label=f"{name}: train")
        if vs:
            ax.plot(vs, [100 * v for v in vv], color=colour, marker="o", markersize=2, linewidth=1,
                    label=f"{name}: validation")
        test = (r.get("test") or {}).get("accuracy")
        if test is not None and (vs or ts):
            ax.plot([max((vs or [0])[-1], (ts or [0])[-1])], [100 * test], color=colour, marker="*", markersize=9,
                    linestyle="none", label=f"{name}: test (final weights)")
        data[str(d)] = {"train": (ts, tv), "val": (vs, vv), "test": test}
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        _accuracy_axis(ax, min(float(np.min(line.get_ydata())) for line in ax.lines))
        ax.legend(fontsize=6)
    fig.fpt_data = data  # for tests and callers
    return fig
