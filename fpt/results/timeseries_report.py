"""The time-series section of fpt report: per problem, fpt's settings beside published baselines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fpt.results import reference, ts_reference
from fpt.results.figures import _accuracy_axis, _figure, _legend_below, _save
from fpt.results.rows import _freeze_text, _num, _short_backbone, read_curve, write_rows
from fpt.base.text import format_metric


# -- time series (the timeseries task): our runs next to the field's published baselines -------------
# Self-contained: rows grouped per problem, setting and learning rate; the learning rate of each
# setting chosen on mean validation (accuracy up, RMSE down); published numbers only for the same
# problem and split (fpt.results.ts_reference.ts_lookup).
TS_SETTING_NAMES = {"fpt": "FPT (pretrained, frozen)", "frozen-random": "frozen random transformer",
                    "full-lstm": "LSTM (trained)", "full-transformer": "transformer (trained from scratch)",
                    "finetuned": "pretrained, fully trained", "frozen-random-lstm": "frozen random LSTM"}


TS_METHODS = ("HIVE-COTE 2", "MultiRocket", "ROCKET", "1-NN DTW", "GPT4TS")


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
    from fpt.model.objectives import headline, test_score, val_score

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
        # as the sweep chooses (fpt.experiments): the best mean validation value; a tie goes to the lower mean
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
        parts.append(f"{word} {name} ({format_metric(fpt['test_mean'], metric)} vs {format_metric(other['test_mean'], metric)}"
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
             "(`fpt/results/ts_reference.py`, `TS_REFERENCES`). fpt carves its validation cases out of TRAIN, so it trains on "
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
        published, why = ts_reference.ts_lookup(rows[0]["data"])
        if why:
            notes.append(f"- {problem}: {why}")
        notes += [f"- {problem}, {p.method}: {p.note}" for p in published if p.note]
        cells = []
        for s in settings:
            g = chosen.get(s)
            cells.append("-" if g is None else f"{format_metric(g['test_mean'], metric, g['test_std'], len(g['seeds']))} "
                                              f"(lr {g['lr']:g}, {len(g['seeds'])} seed{'s' * (len(g['seeds']) != 1)})")
        pub = {p.method: f"{p.value:g}" for p in published}
        trivial = (rows[0]["data"].get("trivial_baseline") or {}).get(metric)
        lines.append(f"| {problem} | {metric} | " + " | ".join(cells) + " | "
                     + " | ".join(pub.get(m, "-") for m in TS_METHODS) + f" | {format_metric(trivial, metric)} |")
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
                     f"{g['lr']:g} | {len(g['seeds'])} | "
                     f"{format_metric(g['val_mean'], g['metric'], g['val_std'], len(g['seeds']))} | "
                     f"{format_metric(g['test_mean'], g['metric'], g['test_std'], len(g['seeds']))} | {g['steps']} | "
                     f"{_num(g['seconds'], 0)} | {_num(g['cpu_seconds'], 0)} |")
    lines += ["", "Sources of the published numbers:", ""] + [f"- `{k}`: {v}" for k, v in ts_reference.TS_CITATIONS.items()]
    if figures:
        lines += ["", "Learning curves (validation metric against optimizer steps, chosen learning rate of each "
                  "setting, one line per seed):", ""] + [f"- {k}: `{Path(v).name}`" for k, v in figures.items()]
    columns = ("problem", "setting", "backbone", "layers", "lr", "metric", "chosen", "val_mean", "val_std", "test_mean",
               "test_std", "steps", "seconds", "cpu_seconds")
    write_rows([{**g, "seeds": " ".join(map(str, g["seeds"]))} for g in table], out / "timeseries.csv",
              (*columns, "seeds"))
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
        _legend_below(fig, ax)
    return fig
