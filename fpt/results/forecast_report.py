"""The forecasting section of ``fpt report``: the long-horizon benchmark's arms, baselines on the same windows,
published numbers with their drop_last, and a figure of forecasts against the truth."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.results import fc_reference
from fpt.results.figures import _figure, _save
from fpt.results.rows import _freeze_text, _num, _short_backbone
from fpt.results.timeseries_report import _mean_sd, _slug_problem
from fpt.tasks import make_task

# -- forecasting (the forecast task): the long-horizon benchmark, baselines and published numbers ----------
# Runs grouped per (dataset, horizon, look-back), backbone and arm (frozen pretrained, frozen random, no
# transformer, ...); each arm's learning rate chosen on mean validation MSE over seeds; test MSE / MAE at the
# best validation point, on the windows the run counted (results.json data.windows_counted), beside the
# baselines on the same windows and the published numbers (fpt.fc_reference.fc_lookup) with their drop_last.
FC_ARMS = {"pretrained": "frozen pretrained", "random": "frozen random", "none": "no transformer (0 blocks)",
           "attention": "1 block, attention trained", "scratch": "1 block trained from scratch"}


def fc_arm(r: dict[str, Any]) -> str:
    """The ablation arm of a forecasting run, from what it was (not from its directory name)."""
    freeze, init, layers = _freeze_text(r.get("freeze", "")), r.get("init"), r.get("layers")
    if layers == 0:
        return "none"
    if freeze == "fpt":
        return "pretrained" if init == "pretrained" else "random"
    if freeze == "+attn" and init == "random":
        return "attention"
    if freeze == "full" and init == "random":
        return "scratch"
    return f"{init}/{freeze}"


def _fc_backbone(r: dict[str, Any]) -> str:
    names = {"minilm-l6": "MiniLM-L6", "smollm2-135m": "SmolLM2-135M"}
    return names.get(str(r.get("backbone")), _short_backbone(r))


def _at_best(r: dict[str, Any], metric: str) -> float | None:
    value = ((r.get("at_best_val") or {}).get("test") or {}).get(metric)
    if value is None:
        value = (r.get("test") or {}).get(metric)
    return None if value is None else float(value)


def forecast_table(run_dirs: list[Path], results: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (dataset, horizon, look-back, backbone, arm, lr); ``chosen`` marks each arm's lr with the
    lowest mean validation MSE (ties: the lower mean validation loss)."""
    from fpt.model.objectives import val_score

    groups: dict[tuple, dict[str, Any]] = {}
    for d in run_dirs:
        r = results[d]
        if r.get("task") != "forecast":
            continue
        data = r.get("data") or {}
        # runs are compared only on the same windows: same series, horizon, look-back and evaluation stride
        key = (str(data.get("problem")), data.get("horizon"), data.get("lookback"), data.get("eval_stride", 1),
               _fc_backbone(r), fc_arm(r), float(r.get("lr") or 0))
        g = groups.setdefault(key, {"problem": key[0], "horizon": key[1], "lookback": key[2], "eval_stride": key[3],
                                    "backbone": key[4], "arm": key[5], "lr": key[6], "data": data, "runs": []})
        g["runs"].append({"run": d, "seed": r.get("seed"), "val": val_score(r), "mse": _at_best(r, "mse"),
                          "mae": _at_best(r, "mae"), "val_loss": (r.get("val") or {}).get("best_loss"),
                          "steps": r.get("steps"), "batch": r.get("batch_size"), "seconds": r.get("seconds"),
                          "cpu_seconds": r.get("cpu_seconds"), "layers": r.get("layers")})
    table = []
    for g in groups.values():
        runs = g.pop("runs")
        g["val_mean"], g["val_std"] = _mean_sd([x["val"] for x in runs if x["val"] is not None])
        g["mse_mean"], g["mse_std"] = _mean_sd([x["mse"] for x in runs if x["mse"] is not None])
        g["mae_mean"], g["mae_std"] = _mean_sd([x["mae"] for x in runs if x["mae"] is not None])
        g["mse_values"] = [x["mse"] for x in runs if x["mse"] is not None]  # one per seed: the comparisons' input
        g["val_loss_mean"] = _mean_sd([x["val_loss"] for x in runs if x["val_loss"] is not None])[0]
        g["seeds"] = sorted(x["seed"] for x in runs)
        g["steps"], g["batch"] = max(x["steps"] or 0 for x in runs), runs[0]["batch"]
        g["layers"] = runs[0]["layers"]
        g["seconds"] = _mean_sd([float(x["seconds"]) for x in runs if x["seconds"] is not None])[0]
        g["cpu_seconds"] = _mean_sd([float(x["cpu_seconds"]) for x in runs if x["cpu_seconds"] is not None])[0]
        g["run_dirs"] = [x["run"] for x in sorted(runs, key=lambda x: x["seed"] or 0)]
        table.append(g)
    for g in table:
        rivals = [h for h in table if h["val_mean"] is not None and all(
            h[k] == g[k] for k in ("problem", "horizon", "lookback", "eval_stride", "backbone", "arm"))]
        best = min(rivals, key=lambda h: (h["val_mean"], h["val_loss_mean"] if h["val_loss_mean"] is not None
                                          else math.inf)) if rivals else None
        g["chosen"] = best is g
    arms = list(FC_ARMS)
    table.sort(key=lambda g: (g["problem"], g["horizon"] or 0, g["eval_stride"], g["backbone"],
                              arms.index(g["arm"]) if g["arm"] in arms else 99, g["lr"]))
    return table


def _fc_cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if n > 1 and std is not None else "")


def _comparisons(rows: list[dict[str, Any]]) -> list[str]:
    """Tan et al.'s question per backbone: the frozen pretrained arm's test MSE against each other arm's, both at
    their learning rates chosen on validation, with Welch's test over seeds (fpt.results.statistics.welch)."""
    from fpt.results.statistics import welch, welch_verdict

    chosen = {(g["backbone"], g["arm"]): g for g in rows if g["chosen"] and g["mse_values"]}
    out = []
    for (backbone, arm), g in chosen.items():
        if arm != "pretrained":
            continue
        for other_arm in FC_ARMS:
            other = chosen.get((backbone, other_arm))
            if other_arm == "pretrained" or other is None:
                continue
            w = welch(g["mse_values"], other["mse_values"])
            interval = f"[{w.low:+.3f}, {w.high:+.3f}]" if w.low is not None else "-"
            out.append(f"| {backbone} | {FC_ARMS['pretrained']} vs {FC_ARMS[other_arm]} | {w.difference:+.3f} | "
                       f"{interval} | {welch_verdict(w, True, 'pretrained', other_arm)} |")
    if not out:
        return []
    return ["", "Does the language model matter? Test MSE of the frozen pretrained arm minus the other arm's (negative: "
            "pretrained better), each at its learning rate chosen on validation; Welch's t-test over seeds, 95% "
            "interval of the difference:", "",
            "| model | comparison | Δ test MSE | 95% interval | verdict |", "|---|---|---|---|---|"] + out


def forecast_section(run_dirs: list[Path], results: dict[Path, dict[str, Any]], out: Path) -> tuple[str, dict[str, str]]:
    """Markdown (appended to report.md), ``forecast.csv`` and a figure of forecasts against the truth per dataset."""
    table = forecast_table(run_dirs, results)
    if not table:
        return "", {}
    lines = ["", "## Forecasting: the long-horizon benchmark", "",
             "MSE / MAE on the z-scored series (training rows' statistics), averaged over every counted window, "
             "horizon step and channel, mean ± std over seeds, at each arm's learning rate chosen on mean validation "
             "MSE; the test is taken at the best validation point. fpt counts every window it evaluates (no "
             "drop_last); the published numbers were measured with drop_last=True test loaders (each row says how "
             "many windows that dropped).", ""]
    figures: dict[str, str] = {}
    sections = sorted({(g["problem"], g["horizon"], g["lookback"], g["eval_stride"]) for g in table},
                      key=lambda k: (k[0], k[1] or 0, k[3]))
    for problem, horizon, lookback, stride in sections:
        rows = [g for g in table if (g["problem"], g["horizon"], g["lookback"], g["eval_stride"])
                == (problem, horizon, lookback, stride)]
        data = rows[0]["data"]
        counted = (data.get("windows_counted") or {}).get("test")
        total = (data.get("windows") or {}).get("test")
        lines += ["", f"### {problem}, look-back {lookback}, horizon {horizon}"
                  + (f" (val and test on one window in {stride})" if stride != 1 else ""), "",
                  f"Test windows counted: {counted} of {total} ({data.get('channels')} channels each: "
                  f"{(data.get('samples') or {}).get('test')} channel-windows). {data.get('windows_note', '')}.", "",
                  "| model | arm | test MSE | test MAE | lr (chosen on val) | seeds | val MSE | steps x batch | "
                  "s / run (CPU s) |", "|---|---|---|---|---|---|---|---|---|"]
        for g in (g for g in rows if g["chosen"]):
            depth = f", {g['layers']} blocks" if g["arm"] != "none" else ""
            lines.append(f"| {g['backbone']}{depth} | {FC_ARMS.get(g['arm'], g['arm'])} | "
                         f"{_fc_cell(g['mse_mean'], g['mse_std'], len(g['seeds']))} | "
                         f"{_fc_cell(g['mae_mean'], g['mae_std'], len(g['seeds']))} | {g['lr']:g} | "
                         f"{','.join(map(str, g['seeds']))} | {_fc_cell(g['val_mean'], g['val_std'], len(g['seeds']))} | "
                         f"{g['steps']} x {g['batch']} | {_num(g['seconds'], 0)} ({_num(g['cpu_seconds'], 0)}) |")
        lines += _comparisons(rows)
        base = data.get("baselines_counted") or data.get("baselines") or {}
        if base.get("test"):
            lines += ["", f"Baselines on the same {counted} test windows (no training but the least-squares fit):", "",
                      "| baseline | test MSE | test MAE | val MSE | what |", "|---|---|---|---|---|"]
            for name, b in base["test"].items():
                val = (base.get("val") or {}).get(name, {}).get("mse")
                lines.append(f"| {name} | {b['mse']:.4f} | {b['mae']:.4f} | {_num(val, 4) if val is not None else '-'} "
                             f"| {b['what']} |")
            if data.get("baselines_counted"):
                full = data["baselines"]["test"]
                lines += ["", f"The same baselines on all {total} test windows: " + "; ".join(
                    f"{k} {v['mse']:.4f} / {v['mae']:.4f}" for k, v in full.items()) + "."]
        published, why = fc_reference.fc_lookup(data)
        if published:
            lines += ["", "Published (same dataset, split and look-back; z-scored MSE / MAE):", "",
                      "| method | horizon | MSE | MAE | source | test windows |", "|---|---|---|---|---|---|"]
            for p in published:
                lines.append(f"| {p.method} | {p.horizon if p.horizon else 'average of 96-720'} | {p.mse:.3f} | "
                             f"{p.mae:.3f} | `{p.source}` | {p.drop_last} |")
        elif why:
            lines += ["", f"No published number: {why}."]
        lines += ["", "Every learning rate (chosen in **bold**):", "",
                  "| model | arm | lr | seeds | val MSE | test MSE | test MAE |", "|---|---|---|---|---|---|---|"]
        for g in rows:
            arm = FC_ARMS.get(g["arm"], g["arm"])
            lines.append(f"| {g['backbone']} | {'**' + arm + '**' if g['chosen'] else arm} | {g['lr']:g} | "
                         f"{len(g['seeds'])} | {_fc_cell(g['val_mean'], g['val_std'], len(g['seeds']))} | "
                         f"{_fc_cell(g['mse_mean'], g['mse_std'], len(g['seeds']))} | "
                         f"{_fc_cell(g['mae_mean'], g['mae_std'], len(g['seeds']))} |")
        shown = next((g for g in rows if g["chosen"] and g["arm"] == "pretrained"), None) or \
            next((g for g in rows if g["chosen"]), None)
        if shown is not None:
            try:
                name = f"forecasts, {problem} H={horizon}" + (f", one window in {stride}" if stride != 1 else "")
                figures[name] = _save(forecast_figure(shown["run_dirs"][0], title=(
                    f"{problem}: {shown['backbone']} {FC_ARMS.get(shown['arm'], shown['arm'])}, lr {shown['lr']:g}, "
                    f"seed {shown['seeds'][0]}")),
                    out / f"forecast-{_slug_problem(problem)}-H{horizon}{f'-every{stride}' if stride != 1 else ''}.png")
                lines += ["", f"Figure `{Path(figures[name]).name}`: test windows of the last channel, the look-back's "
                          "end, the truth, the run's forecast and the least-squares linear baseline, in the series' "
                          "units."]
            except Exception as err:  # e.g. the backbone is not available here
                lines += ["", f"(No forecast figure: {type(err).__name__}: {err})"]
    lines += ["", "Sources of the published numbers:", ""] + [f"- `{k}`: {v}" for k, v in fc_reference.FC_CITATIONS.items()]
    columns = ("problem", "horizon", "lookback", "eval_stride", "backbone", "arm", "lr", "chosen", "val_mean", "mse_mean",
               "mse_std", "mae_mean", "mae_std", "steps", "batch", "seconds", "cpu_seconds")
    with open(out / "forecast.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns) + ["seeds"])
        writer.writeheader()
        for g in table:
            writer.writerow({**{k: g.get(k) for k in columns}, "seeds": " ".join(map(str, g["seeds"]))})
    return "\n".join(lines) + "\n", figures


@torch.no_grad()
def forecast_figure(run_dir: str | Path, windows: int = 3, title: str | None = None):
    """Forecasts of a trained run against the truth on ``windows`` test windows spread over the test split, last
    channel (ETT's OT), in the series' units, with the least-squares linear baseline."""
    from fpt.runs.checkpoint import load_run
    from fpt.data.forecast import fit_linear
    from fpt.tasks.forecast import ForecastWindows

    config, model = load_run(run_dir)
    task = make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
    o = task.options
    values = task.split_values("test")
    split = ForecastWindows(values, o.lookback, o.horizon, o.patch_size, o.stride, o.instance_norm)
    channel = values.shape[1] - 1
    starts = np.linspace(0, split.windows - 1, windows).astype(int)
    batch = split({"sample": torch.as_tensor(channel * split.windows + starts)}, None)
    out = model(batch["x"]).float().reshape(len(starts), o.horizon)
    y = batch["y"]
    pred = (out * y[:, o.horizon + 1:o.horizon + 2] + y[:, o.horizon:o.horizon + 1]).numpy()
    mean, std = task.channel_statistics()
    w, b = fit_linear(task.split_values("train"), o.lookback, o.horizon)
    fig = _figure(9.0, 2.6 * windows)
    tail = min(o.lookback, 2 * o.horizon)
    for i, s in enumerate(starts):
        ax = fig.add_subplot(windows, 1, i + 1)
        look = values[s:s + o.lookback, channel]
        truth = values[s + o.lookback:s + o.lookback + o.horizon, channel]
        linear = look @ w + b
        t_look, t_future = np.arange(-tail, 0), np.arange(o.horizon)
        scale = lambda z: z * std[channel] + mean[channel]  # noqa: E731
        ax.plot(t_look, scale(look[-tail:]), color="0.4", linewidth=1, label="look-back (end)")
        ax.plot(t_future, scale(truth), color="black", linewidth=1.4, label="truth")
        ax.plot(t_future, scale(pred[i]), color="tab:blue", linewidth=1.4, label="forecast")
        ax.plot(t_future, scale(linear), color="tab:orange", linewidth=1, linestyle="--", label="linear (least squares)")
        mse = float(((pred[i] - truth) ** 2).mean())
        ax.set_title(f"test window {int(s)} (channel {task.describe_data()['columns'][channel]}): forecast MSE "
                     f"{mse:.3f}, linear {float(((linear - truth) ** 2).mean()):.3f} (z-scored)", fontsize=8)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, ncol=4)
    ax.set_xlabel("steps after the look-back's end")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
