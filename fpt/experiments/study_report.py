"""The report of a study (``fpt report STUDY_DIR``, ``fpt study FILE --report``): does pretraining help here?

Read from the study directory alone (``study.json``, each problem's ``plan.json`` and run directories):

* **Which trials count.** On each problem, the seeds at which *every* arm finished at *every* learning rate
  (a study stopped part-way has one unit half done: it is left out and listed, so that each arm is judged on
  the same seeds). A problem without such a seed is listed as not yet run.
* **Learning rate**: per (problem, arm) chosen on validation only, on those seeds: the best mean of
  ``val.best`` (accuracy up, RMSE down), ties to the lower mean validation loss (:func:`fpt.model.objectives.better`,
  as ``fpt sweep`` chooses). Test values are then read at each seed's best validation point.
* **Per problem**: mean ± std over seeds and the 95% t-interval (:mod:`fpt.results.statistics`), beside the
  published numbers fpt has for that problem and split (:mod:`fpt.results.reference`,
  :mod:`fpt.results.ts_reference`) and a trivial baseline.
* **Across problems**: mean rank per arm, then for each pair the study names wins / ties / losses, a paired
  Wilcoxon signed-rank test with its n and one sentence worded by the numbers, and Friedman + Nemenyi's
  critical-difference diagram (``cd.png``). A pair's differences are in accuracy points (classification) or
  in per cent of the problem's trivial RMSE (regression: the training mean's), so that problems share a scale.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fpt.experiments.study import TIMING_FILE, _duration, read_study_dir
from fpt.model.objectives import better, headline, test_score, val_score
from fpt.results import reference, statistics, ts_reference
from fpt.runs.checkpoint import results_or_none


def _chance(run_dir: Path) -> float | None:
    """1 / classes of a finished run's task (from model.safetensors' task spec), or None."""
    try:
        from safetensors import safe_open

        with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
            spec = json.loads((f.metadata() or {}).get("task_spec", "{}"))
        classes = int(spec.get("num_classes") or 0)
        return 1.0 / classes if classes > 1 else None
    except Exception:  # no weights file, an older run: no chance level shown
        return None


def problem_results(problem: str, plan, arms: list[str], lrs: list[float], seeds: list[int]) -> dict[str, Any]:
    """One problem's numbers: complete seeds, each arm's chosen lr and its test values per seed."""
    found: dict[tuple[str, float, int], tuple[Path, dict[str, Any]]] = {}
    for t in plan.trials:
        r = results_or_none(t.run_dir)
        if r is not None:
            found[(str(t.variant), float(t.params["lr"]), int(t.seed))] = (t.run_dir, r)
    complete = [s for s in seeds if all((a, float(lr), s) in found for a in arms for lr in lrs)]
    partial = [s for s in seeds if s not in complete and any((a, float(lr), s) in found for a in arms for lr in lrs)]
    out: dict[str, Any] = {"problem": problem, "complete_seeds": complete, "partial_seeds": partial, "arms": {},
                           "finished": len(found), "trials": len(plan.trials)}
    if not complete:
        return out
    some = found[(arms[0], float(lrs[0]), complete[0])]
    metric, higher = headline(some[1])
    out.update(metric=metric, higher_is_better=higher, data=some[1].get("data"), task=some[1].get("task"),
               example=some[1], example_dir=some[0])
    for arm in arms:
        best = None
        for lr in lrs:
            runs = [found[(arm, float(lr), s)][1] for s in complete]
            vals = [v for v in map(val_score, runs) if v is not None]
            losses = [float(x) for r in runs if (x := (r.get("val") or {}).get("best_loss")) is not None
                      and not math.isnan(float(x))]
            mean_val = sum(vals) / len(vals) if vals else math.nan
            mean_loss = sum(losses) / len(losses) if len(losses) == len(runs) else None
            if best is None or better(mean_val, best["val"], higher, mean_loss, best["val_loss"]):
                best = {"lr": float(lr), "val": mean_val, "val_loss": mean_loss}
        tests = [test_score(found[(arm, best["lr"], s)][1]) for s in complete]
        best["tests"] = [float(x) for x in tests if x is not None]
        best["interval"] = statistics.interval(best["tests"]) if best["tests"] else None
        best["seconds"] = [float(found[(arm, float(lr), s)][1].get("seconds") or 0) for lr in lrs for s in complete]
        best["example"] = found[(arm, best["lr"], complete[0])][1]
        out["arms"][arm] = best
    return out


def _score(p: dict[str, Any], arm: str) -> float | None:
    a = p["arms"].get(arm)
    return a["interval"].mean if a and a["interval"] else None


def trivial_baseline(p: dict[str, Any]) -> tuple[float | None, str]:
    """(value, what it is) for a problem: the timeseries task's recorded one, else chance (1 / classes)."""
    trivial = ((p.get("data") or {}).get("trivial_baseline") or {})
    if p["metric"] in trivial:
        return float(trivial[p["metric"]]), trivial.get("predictor", "trivial")
    if p["metric"] == "accuracy":
        chance = _chance(p["example_dir"])
        if chance is not None:
            return chance, "chance (1 / classes)"
    return None, ""


def unit_difference(p: dict[str, Any], a: str, b: str) -> float | None:
    """a - b, positive when a is better: accuracy points, or per cent of the trivial RMSE for regression."""
    sa, sb = _score(p, a), _score(p, b)
    if sa is None or sb is None:
        return None
    if p["metric"] in ("accuracy", "exact_accuracy"):
        return 100 * (sa - sb) if p["higher_is_better"] else 100 * (sb - sa)
    trivial, _ = trivial_baseline(p)
    scale = trivial if trivial else (abs(sa) + abs(sb)) / 2 or 1.0
    return 100 * ((sa - sb) if p["higher_is_better"] else (sb - sa)) / scale


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if metric in ("accuracy", "exact_accuracy") else f"{value:.4g}"


def _cell(arm: dict[str, Any] | None, metric: str) -> str:
    if not arm or not arm["interval"]:
        return "-"
    iv = arm["interval"]
    scale = 100 if metric in ("accuracy", "exact_accuracy") else 1
    digits = ".1f" if scale == 100 else ".4g"
    text = f"{scale * iv.mean:{digits}}"
    if iv.std is not None:
        text += f" ± {scale * iv.std:{digits}} [{scale * iv.low:{digits}}, {scale * iv.high:{digits}}]"
    return text + f" (lr {arm['lr']:g})"


def _published(p: dict[str, Any]) -> tuple[str, list[str]]:
    """The published numbers for a problem's task and split, and notes on how fpt's runs differ from them."""
    notes = []
    if p.get("task") == "timeseries":
        found, why = ts_reference.ts_lookup(p.get("data"))
        data = p.get("data") or {}
        if found:
            notes.append(f"{p['problem']}: fpt trains on {data.get('n_train')} of the archive's {data.get('n_train_file')} "
                         f"training cases ({data.get('n_val')} carved out for validation); the published methods "
                         "train on all of them")
            notes += [f"{p['problem']}, {r.method}: {r.note}" for r in found if r.note]
            return "; ".join(f"{r.method} {r.value:g}" for r in found), notes
        return "-", [f"{p['problem']}: {why}"] if why else []
    comparison = reference.compare(p["example"])
    ref = comparison.reference
    if ref is None:
        return "-", ([f"{p['problem']}: {comparison.note}"] if comparison.note else [])
    notes.append(f"{p['problem']}: {ref.accuracy:g} is {ref.label()}; it differs from these runs: "
                 + "; ".join(comparison.differences or ["-"]))
    return f"{ref.accuracy:g} ({ref.label()})", notes


def _pair_subject(record: dict[str, Any], a: str, b: str) -> str:
    """'pretraining (minilm-pretrained vs minilm-random)' when the two arms differ only in init, else 'a over b'."""
    arms = record["arms"]
    x, y = dict(arms.get(a) or {}), dict(arms.get(b) or {})
    if x.get("init") == "pretrained" and y.get("init") == "random" and \
            {k: v for k, v in x.items() if k != "init"} == {k: v for k, v in y.items() if k != "init"}:
        return f"pretraining ({a} vs {b})"
    return f"{a} over {b}"


def _pairs_figure(rows: list[tuple[str, str, statistics.Paired]], per_problem: dict[str, dict[str, Any]]):
    """One panel per pair: each problem's difference (a - b; points, or % of the trivial RMSE) as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = [q for q in per_problem if any(q in r.problems for _, _, r in rows)]  # the study's order
    columns = min(3, len(rows))
    lines = -(-len(rows) // columns)
    height = max(2.0, 0.25 * len(problems) + 1.3)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns + 1.6, height * lines), sharey=True,
                             layout="constrained", squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, (a, b, r) in zip(axes.flat, rows):
        values = dict(zip(r.problems, r.differences))
        ys = list(range(len(problems)))
        xs = [values.get(q, 0.0) for q in problems]
        colours = ["tab:green" if x > 0 else "tab:red" if x < 0 else "tab:grey" for x in xs]
        ax.barh(ys, xs, color=colours)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(ys, [q + ("" if q in values else " (n/a)") for q in problems], fontsize=8)
        ax.set_title(f"{a}\nminus {b}", fontsize=8)
        ax.set_xlabel("difference (acc. points;\nRMSE: % of trivial)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes.flat[0].invert_yaxis()
    fig.suptitle("Per problem: green = first arm better, red = worse", fontsize=9)
    return fig


def _timing(root: Path) -> list[dict[str, Any]]:
    path = root / TIMING_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def build(root: str | Path) -> dict[str, Any]:
    """Everything the report shows, as data (report.json)."""
    root = Path(root)
    record, plans = read_study_dir(root)
    arms, lrs, seeds = list(record["arms"]), [float(x) for x in record["lr"]], [int(s) for s in record["seeds"]]
    per_problem = {p: problem_results(p, plans[p], arms, lrs, seeds) for p in record["problems"] if p in plans}
    ran = {p: r for p, r in per_problem.items() if r["complete_seeds"]}
    table = {p: {a: _score(r, a) for a in arms} for p, r in ran.items()}
    higher = {p: r["higher_is_better"] for p, r in ran.items()}
    ranks, rank_n = statistics.mean_ranks(table, higher, arms)
    pairs = []
    for a, b in [tuple(x) for x in record["pairs"]]:
        diffs = {p: d for p, r in ran.items() if (d := unit_difference(r, a, b)) is not None}
        result = statistics.paired(a, b, diffs)
        word, sentence = statistics.verdict(result, _pair_subject(record, a, b))
        pairs.append({"a": a, "b": b, "result": result, "word": word, "sentence": sentence})
    friedman = statistics.friedman_nemenyi(table, higher, arms)
    return {"record": record, "root": root, "arms": arms, "lrs": lrs, "seeds": seeds, "problems": per_problem,
            "ran": ran, "table": table, "ranks": ranks, "rank_n": rank_n, "pairs": pairs, "friedman": friedman,
            "timing": _timing(root)}


def render(report: dict[str, Any], figures: dict[str, str]) -> str:
    record, arms = report["record"], report["arms"]
    ran, problems = report["ran"], report["problems"]
    total = sum(p["trials"] for p in problems.values())
    finished = sum(p["finished"] for p in problems.values())
    lines = [f"# Study `{record['name']}`: does pretraining help here?", "", record.get("description", ""), ""]
    if record.get("command"):
        lines += [f"Command: `{record['command']}` (study file `{record['source']}`).", ""]
    lines += [f"Trials finished: {finished} of {total} ({len(problems)} problems x {len(arms)} arms x "
              f"{len(report['lrs'])} learning rates x {len(report['seeds'])} seeds). Problems with every arm at every "
              f"learning rate on at least one seed: {len(ran)} of {len(problems)}.", ""]
    timing = report["timing"]
    if timing:
        wall = sum(float(t.get("wall_seconds") or 0) for t in timing)
        cpu = sum(float(t.get("cpu_seconds") or 0) for t in timing)
        lines += [f"Time in trials (this study's runner, `trials.jsonl`): {_duration(wall)} wall, {_duration(cpu)} CPU "
                  f"over {len(timing)} trials (first ended {timing[0].get('ended')}, last {timing[-1].get('ended')}).", ""]
    lines += ["## Per problem", "",
              "Test value at each seed's best validation point, for the learning rate chosen on validation (mean over "
              "the seeds shown); mean ± std [95% t-interval] over seeds. Accuracy in %, RMSE in the targets' units. "
              "fpt carves its validation cases out of TRAIN, so it trains on fewer cases than the published methods, "
              "which use all of TRAIN (the notes give the counts).", "",
              "| problem | metric | seeds | " + " | ".join(arms) + " | published (same problem and split) | trivial |",
              "|---|---|---|" + "---|" * len(arms) + "---|---|"]
    notes: list[str] = []
    for name, p in ran.items():
        published, why = _published(p)
        notes += why
        trivial, what = trivial_baseline(p)
        seeds = ",".join(map(str, p["complete_seeds"]))
        lines.append(f"| {name} | {p['metric']} | {seeds} | " + " | ".join(_cell(p["arms"].get(a), p["metric"]) for a in arms)
                     + f" | {published} | {_fmt(trivial, p['metric'])}{' (' + what + ')' if trivial is not None else ''} |")
    waiting = [n for n, p in problems.items() if not p["complete_seeds"] and not p["partial_seeds"]]
    partial = [f"{n} (seed {', '.join(map(str, p['partial_seeds']))}: {p['finished']} of {p['trials']} trials)"
               for n, p in problems.items() if p["partial_seeds"]]
    if partial:
        lines += ["", "Left out until every arm has finished at every learning rate on that seed: " + "; ".join(partial) + "."]
    if waiting:
        lines += ["", "Not started: " + ", ".join(waiting) + "."]
    if notes:
        lines += ["", "Notes on the published numbers:", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Across problems", ""]
    if report["ranks"]:
        order = sorted(report["ranks"], key=report["ranks"].get)
        lines += [f"Mean rank over the {report['rank_n']} problems where every arm has a score (1 = best; ties share "
                  "the mean rank):", "", "| arm | mean rank |", "|---|---|"]
        lines += [f"| {a} | {report['ranks'][a]:.2f} |" for a in order]
    else:
        lines.append("No problem has every arm yet: no ranks.")
    lines += ["", "Pairs the study names (differences a - b per problem: accuracy points, or per cent of the trivial "
              "RMSE for regression; positive = a better; two-sided Wilcoxon signed-rank across problems, zero "
              "differences dropped):", "",
              "| a | b | problems | wins / ties / losses | median difference | Wilcoxon W | p | n | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for pair in report["pairs"]:
        r = pair["result"]
        median = f"{r.median:+.2f}" if r.median is not None else "-"
        stat = f"{r.statistic:g}" if r.statistic is not None else "-"
        p = f"{r.p:.3g}" if r.p is not None else "-"
        lines.append(f"| {r.a} | {r.b} | {len(r.problems)} | {r.wins} / {r.ties} / {r.losses} | {median} | {stat} | {p} | "
                     f"{r.n} | {pair['word']} |")
    lines += [""] + [f"- {pair['sentence']}" for pair in report["pairs"]]
    f = report["friedman"]
    lines += [""]
    if f.statistic is not None:
        lines.append(f"Friedman test over {len(f.problems)} problems and {len(f.arms)} arms: chi² = {f.statistic:.3g}, "
                     f"p = {f.p:.3g}; Nemenyi critical difference at 0.05: {f.critical_difference:.2f} ranks "
                     "(two arms whose mean ranks differ by less are not told apart).")
    elif f.critical_difference is not None:
        lines.append("Friedman test: every problem a full tie; nothing to test.")
    else:
        lines.append("Friedman test: needs three arms or more on at least two problems.")
    if figures:
        lines += ["", "Figures:", ""] + [f"- {k}: `{Path(v).name}`" for k, v in figures.items()]
    if timing:
        lines += ["", "## Time per trial", "", "This runner's wall and CPU seconds per trial (backbone load or copy, "
                  "data, training, tests; one process for all trials), mean per arm:", "",
                  "| arm | trials | wall s | CPU s |", "|---|---|---|---|"]
        for arm in arms:
            mine = [t for t in timing if t.get("arm") == arm and t.get("wall_seconds") is not None]
            if mine:
                lines.append(f"| {arm} | {len(mine)} | {sum(t['wall_seconds'] for t in mine) / len(mine):.1f} | "
                             f"{sum(t['cpu_seconds'] for t in mine) / len(mine):.1f} |")
    return "\n".join(lines) + "\n"


def write_study_report(root: str | Path, out: str | Path) -> dict[str, Any]:
    """report.md, report.csv (problem x arm), report.json, cd.png and pairs.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = build(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    f = report["friedman"]
    if f.critical_difference is not None and f.nemenyi is not None:
        fig = statistics.cd_diagram(f, f"study {report['record']['name']}: critical-difference diagram")
        fig.savefig(out / "cd.png", dpi=150, bbox_inches="tight")  # the arms' labels reach past the axes
        plt.close(fig)
        figures["critical-difference diagram (Friedman + Nemenyi)"] = str(out / "cd.png")
    rows = [(p["a"], p["b"], p["result"]) for p in report["pairs"] if p["result"].problems]
    if rows:
        fig = _pairs_figure(rows, report["ran"])
        fig.savefig(out / "pairs.png", dpi=150)
        plt.close(fig)
        figures["per-problem differences of each pair"] = str(out / "pairs.png")
    markdown = render(report, figures)
    (out / "report.md").write_text(markdown)
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["problem", "metric", "seeds", "arm", "lr", "mean", "std", "low95", "high95", "tests"])
        for name, p in report["ran"].items():
            for arm, a in p["arms"].items():
                iv = a["interval"]
                writer.writerow([name, p["metric"], " ".join(map(str, p["complete_seeds"])), arm, a["lr"],
                                 iv.mean if iv else "", iv.std if iv else "", iv.low if iv else "",
                                 iv.high if iv else "", " ".join(f"{x:.6g}" for x in a["tests"])])
    data = {"ranks": report["ranks"], "rank_problems": report["rank_n"],
            "pairs": [{"a": p["a"], "b": p["b"], "word": p["word"], "sentence": p["sentence"],
                       "problems": p["result"].problems, "differences": p["result"].differences,
                       "wins": p["result"].wins, "ties": p["result"].ties, "losses": p["result"].losses,
                       "n": p["result"].n, "statistic": p["result"].statistic, "p": p["result"].p}
                      for p in report["pairs"]],
            "friedman": {"statistic": f.statistic, "p": f.p, "critical_difference": f.critical_difference,
                         "problems": f.problems},
            "table": report["table"]}
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    return {"markdown": str(out / "report.md"), "csv": str(out / "report.csv"), "figures": figures}
