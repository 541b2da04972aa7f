"""A sweep's summary: per-trial results, mean and spread per setting, summary.json and summary.md."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from fpt.results import reference, ts_reference
from fpt.runs.checkpoint import results_or_none
from fpt.base.io import atomic_write_json, atomic_write_text
from fpt.base.text import plural
from fpt.model.objectives import better, headline, test_score, val_score
from fpt.experiments.plan import Plan, Trial, load_plan
from fpt.experiments.status import logged_outcome
from fpt.base.text import format_metric


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _trial_entry(trial: Trial, results: dict[str, Any] | None, outcome: dict[str, Any]) -> dict[str, Any]:
    """One trial's line of sweep.json: its status and, when finished, its numbers."""
    status = "done" if results else outcome.get("state", "pending")
    if results is None and status not in ("failed",):
        status = "pending" if not trial.run_dir.exists() else "incomplete"
    entry = {"setting": trial.setting, "variant": trial.variant, "params": trial.params, "seed": trial.seed,
             "run_dir": str(trial.run_dir), "status": status}
    if outcome.get("error"):
        entry["error"] = outcome["error"]
    if results:
        at_best = (results.get("at_best_val") or {}).get("test") or {}
        entry.update(metric=headline(results)[0], val_value=val_score(results),
                     test_value=test_score(results), test_value_final=test_score(results, at="final"),
                     val_accuracy=results.get("val", {}).get("best_accuracy"),
                     test_accuracy=at_best.get("accuracy", results.get("test", {}).get("accuracy")),
                     test_accuracy_final=results.get("test", {}).get("accuracy"),
                     test_exact_accuracy=results.get("test", {}).get("exact_accuracy"),
                     first_step_at_target=results.get("val", {}).get("first_step_at_target"),
                     steps=results.get("steps"), seconds=results.get("seconds"))
    return entry


def summarize(plan: Plan, outcomes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-setting validation / test statistics over seeds and the setting chosen on validation."""
    outcomes = outcomes or {}
    settings: dict[str, dict[str, Any]] = {}
    trials = []
    for trial in plan.trials:
        results = results_or_none(trial.run_dir)
        outcome = outcomes.get(f"{trial.setting}/s{trial.seed}") or ({} if results else logged_outcome(trial.log_path))
        trials.append(_trial_entry(trial, results, outcome))
        s = settings.setdefault(trial.setting, {"setting": trial.setting, "variant": trial.variant,
                                                "params": trial.params, "seeds": [], "results": []})
        s["seeds"].append(trial.seed)
        if results:
            s["results"].append(results)
    for s in settings.values():
        res = s.pop("results")
        s["done"] = len(res)
        s["metric"], s["higher_is_better"] = headline(res[0]) if res else ("accuracy", True)
        s["val"] = _stats([v for v in map(val_score, res) if v is not None])
        # the validation loss at those best points: breaks ties between settings (small validation sets)
        s["val_loss"] = _stats([float(v) for r in res if (v := (r.get("val") or {}).get("best_loss")) is not None
                                and not math.isnan(float(v))])
        s["test"] = _stats([v for v in map(test_score, res) if v is not None])  # at the best validation
        s["test_final"] = _stats([v for r in res if (v := test_score(r, at="final")) is not None])
        s["seconds"] = sum(float(r.get("seconds") or 0) for r in res)
        reached = [r["val"]["first_step_at_target"] for r in res if r.get("val", {}).get("first_step_at_target") is not None]
        s["steps_to_target"] = _stats([float(x) for x in reached])
        if res:
            r0 = res[0]
            comparison = reference.compare(r0)
            ref = comparison.reference
            s["reference"] = ({"setting": comparison.setting, "accuracy": ref.accuracy, "source": ref.source,
                               "where": ref.where, "model": ref.model, "label": ref.label(),
                               "variant": comparison.variant, "differences": comparison.differences}
                              if ref else {"setting": comparison.setting, "variant": comparison.variant,
                                           "note": comparison.note})
            if r0.get("task") == "timeseries":  # the field's published numbers for the same problem and split
                published, _ = ts_reference.ts_lookup(r0.get("data"))
                s["reference"]["published"] = ", ".join(f"{p.method} {p.value:g}" for p in published) or None
    chosen: dict[str, str] = {}
    for s in settings.values():
        key = s["variant"] or "all"
        if s["val"]["mean"] is None:
            continue
        best = settings.get(chosen.get(key, ""))
        # the better mean validation value; on a tie, the lower mean validation loss at those points
        if best is None or better(s["val"]["mean"], best["val"]["mean"], s["higher_is_better"],
                                  s["val_loss"]["mean"], best["val_loss"]["mean"]):
            chosen[key] = s["setting"]
    for s in settings.values():
        s["chosen"] = chosen.get(s["variant"] or "all") == s["setting"]
    return {
        "preset": plan.preset, "experiment": plan.experiment.name if plan.experiment else None,
        "command": plan.command, "sweep_dir": str(plan.sweep_dir), "grid": plan.grid, "seeds": plan.seeds,
        "selection": "per variant, the setting with the best mean validation value (val.best: highest accuracy, "
                     "lowest rmse) over seeds, ties to the lower mean validation loss at those points; test reported "
                     "at the best validation point (at_best_val)",
        "sources": {n: str(d) for n, (_, d) in plan.sources.items()},
        "chosen": chosen, "settings": list(settings.values()), "trials": trials,
        "complete": all(t["status"] == "done" for t in trials),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _of(stats: dict[str, Any], metric: str) -> str:
    """A setting's mean ± std over seeds (``_stats``), written by the one metric formatter."""
    return format_metric(stats["mean"], metric, stats["std"], stats["n"])


def render_markdown(summary: dict[str, Any]) -> str:
    exp = f", experiment `{summary['experiment']}`" if summary["experiment"] else ""
    lines = [f"# Sweep of `{summary['preset']}`{exp}", ""]
    if summary.get("command"):
        lines += [f"Command: `{summary['command']}`", ""]
    metrics = sorted({s.get("metric", "accuracy") for s in summary["settings"] if s["done"]}) or ["accuracy"]
    units = ", ".join("accuracy in %" if m == "accuracy" else f"{m} in the targets' units" for m in metrics)
    lines += [f"Seeds: {', '.join(map(str, summary['seeds']))}. Selection: {summary['selection']}; "
              f"the chosen setting of each variant is marked **bold**. Metric: {units}; mean ± std over seeds.", ""]
    shown = metrics[0] if len(metrics) == 1 else "value"
    lines += [f"| variant | setting | seeds done | val {shown} | test {shown} (best val) | test {shown} (final) | "
              "steps to target | paper | how it differs | time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        ref = s.get("reference") or {}
        paper = (f"{ref['accuracy']:g} ({ref['label']})" if ref.get("accuracy") is not None
                 else (ref.get("published") or "-"))
        differs = "; ".join(ref.get("differences") or []) if ref.get("accuracy") is not None else ref.get("note", "-")
        name = f"**{s['setting']}**" if s["chosen"] else s["setting"]
        steps = s["steps_to_target"]
        reached = f"{steps['mean']:.0f} ({steps['n']}/{s['done']})" if steps["mean"] is not None else "-"
        metric = s.get("metric", "accuracy")
        lines.append(f"| {s['variant'] or '-'} | {name} | {s['done']}/{len(s['seeds'])} | {_of(s['val'], metric)} | "
                     f"{_of(s['test'], metric)} | {_of(s['test_final'], metric)} | {reached} | {paper} | "
                     f"{differs or '-'} | {s['seconds']:.0f} |")
    lines += ["", "Chosen on validation:", ""]
    by_name = {s["setting"]: s for s in summary["settings"]}
    for variant, setting in summary["chosen"].items():
        s = by_name[setting]
        metric = s.get("metric", "accuracy")
        lines.append(f"- {variant}: `{setting}`: test {metric} at the best validation {_of(s['test'], metric)} "
                     f"({plural(s['test']['n'], 'seed')}; final weights {_of(s['test_final'], metric)}), "
                     f"val {_of(s['val'], metric)}")
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- {t['run_dir']}: {t.get('error', '')}" for t in failed]
    if not summary["complete"]:
        lines += ["", "Not complete: run the same command again to finish (finished trials are skipped)."]
    return "\n".join(lines) + "\n"


def write_summary(plan: Plan, outcomes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    summary = summarize(plan, outcomes)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.sweep_dir / "sweep.json", summary)
    atomic_write_text(plan.sweep_dir / "sweep.md", render_markdown(summary))
    return summary


def summarize_dir(sweep_dir: str | Path) -> dict[str, Any]:
    """``fpt sweep SWEEP_DIR --summarize``: sweep.json and sweep.md rebuilt from the trial directories."""
    return write_summary(load_plan(sweep_dir))
