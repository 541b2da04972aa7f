"""``fpt report`` and ``fpt plot``: our results next to the published ones, and figures.

::

    fpt report runs/xor-pretrained runs/xor-random runs/xor-lstm --out reports/xor
    fpt report runs/sweeps/bit-xor-small-table1 --out reports/table1    # a sweep (or any folder of runs)
    fpt plot runs/xor-pretrained                                         # -> runs/xor-pretrained/figures/

``fpt report`` writes, in ``--out`` (default ``report/``):

* ``report.md`` and ``report.csv``: one row per run: task, backbone, init, freeze, layers, protocol,
  our test accuracy at the final weights and at the best validation, and the published number for
  the same setting *and task variant* (:func:`fpt.results.reference.compare`: the same data and evaluation,
  e.g. ListOps with the 2021 loader's 512-token cut is compared only with numbers measured that
  way), which table it is from and with which model, and every way the run differs from it (model
  size, depth, protocol, ``-small``); validation accuracy, steps to the target accuracy (ours, first
  validation at or above ``target_accuracy``) and the paper's steps to converge, trainable
  parameters, time, device, and the run's label;
* ``curves-<task>.png``: validation accuracy against optimizer steps, one line per run, pretrained
  and random (and LSTM) on the same axes;
* ``convergence.png``: steps to target, ours next to the paper's, per task and setting;
* ``generalisation-<task>.png``: training-batch accuracy and validation accuracy against optimizer
  steps per run, the final test accuracy marked at the end (the paper's generalisation figure plots
  test accuracy during training; fpt reads the test split only once training is over);
* ``attention-<run>.png`` for every Bit XOR and Bit Memory transformer run: attention weights from
  each output token to every input token, per layer and head (as the paper's attention figures),
  averaged over validation examples. The model is rebuilt with ``attn_implementation="eager"``
  (SDPA returns no weights). For Bit XOR, ``report.md`` adds a number: the attention weight each
  output puts on the two input tokens that decide it (a_i, b_i), best head and per layer, next to
  a uniform head's (:func:`fpt.results.figures.relevant_attention`; ``report.csv`` ``attention_on_relevant``).

Steps: curves use optimizer steps, the convention of the console, ``results.json``
(``val.first_step_at_target``) and, since fpt labels its validation rows itself (``results.json``
``metrics_step: "completed"``), ``metrics.csv``: the validation after 50 optimizer steps is step 50.
Older runs' ``metrics.csv`` (Lightning's count of finished batches: 49) are read with the offset.

Plotting functions return ``matplotlib.figure.Figure`` objects (no pyplot, no global state; PNGs
are written with the Agg canvas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from fpt.base.io import atomic_write_text
from fpt.results import reference
from fpt.runs.checkpoint import read_results
from fpt.results.figures import (
    _save, attention_figure, attention_maps, convergence_figure, generalisation_figure, learning_curve_figure,
    relevant_attention, relevant_attention_text, run_legend,
)
from fpt.results.rows import _num, find_runs, run_row, write_rows
from fpt.results.forecast_report import forecast_section
from fpt.results.timeseries_report import timeseries_section

COLUMNS = ("run", "label", "task", "backbone", "init", "freeze", "layers", "seed", "setting", "protocol", "variant",
           "test_accuracy", "test_accuracy_at_best_val", "test_accuracy_as_published", "paper_accuracy", "paper_source",
           "paper_unverified", "test_monitored", "differences", "val_best_accuracy", "target_accuracy", "steps_to_target",
           "paper_steps_to_converge", "steps",
           "trainable_params", "total_params", "seconds", "device", "paper_note", "attention_on_relevant")


def _steps(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    return f"{x:.0e}".replace("e+0", "e") if x >= 1e4 else f"{x:.0f}"


def _paper_steps(r: dict[str, Any]) -> str:
    """The paper's steps to converge (Table 6). Its batch size per task is not stated (App. C: 2 to 16), so the
    row shows our batch size beside it: steps at different batch sizes are not one-to-one comparable."""
    text = _steps(r["paper_steps_to_converge"])
    if r["paper_steps_to_converge"] is not None and r.get("batch_size") is not None:
        text += f" (ours at batch {r['batch_size']})"
    return text


def markdown_cell(value: Any) -> str:
    """``value`` as one cell of a markdown table: a ``|`` escaped, line breaks as spaces (a label may hold both)."""
    return " ".join(str(value).replace("|", "\\|").splitlines())


def render_markdown(rows: list[dict[str, Any]], figures: dict[str, str] | None = None) -> str:
    lines = ["# fpt report", "",
             "Test accuracy in %: ours at the final weights and at the best validation (`best.safetensors`), next to "
             "the published number for the same setting (task + init + freeze + backbone kind) measured on the same "
             "task variant (`fpt/results/reference.py`: e.g. ListOps with the 2021 loader's cut only beside numbers measured "
             "that way). *How it differs* lists every other difference (model size, depth, protocol, `-small`); "
             "empty means none. *test-monitored*: the 2021 code's numbers (`--protocol paper`) are on a test split its "
             "loop evaluated every 100 steps, with no validation split; fpt's runs choose everything on validation and "
             "read the test only at the end. "
             "Steps to target: our first validation at or above the run's target accuracy; the paper's: steps to "
             "converge (Lu et al. Table 6; the paper does not state each task's batch size, App. C: 2 to 16).",
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
        cells = [r["task"], r.get("name") or Path(r["run"]).name, r["label"] or "-", r["backbone"], r["init"],
                 r["freeze"], r["layers"], r.get("protocol", "fpt"), r["setting"] or "-", ours,
                 _num(r.get("test_accuracy_at_best_val")), paper, differs, _num(r["val_best_accuracy"]), target,
                 _paper_steps(r), _num(r["trainable_params"]), _num(r["seconds"], 0), r["device"]]
        lines.append("| " + " | ".join(map(markdown_cell, cells)) + " |")
    notes = sorted({(r["task"], r["setting"], r["paper_note"] + (f" [attribution unverified: {r['paper_unverified']}]"
                                                                 if r.get("paper_unverified") else ""))
                    for r in rows if r["paper_note"] or r.get("paper_unverified")})
    if notes:
        lines += ["", "Notes on the published numbers:", ""]
        lines += [f"- {task} / {setting or 'no setting'}: {note}" for task, setting, note in notes]
    lines += ["", "Sources:", ""] + [f"- `{k}`: {v}" for k, v in reference.CITATIONS.items()]
    attention = [r for r in rows if r.get("relevant_attention")]
    if attention:
        lines += ["", "Bit XOR attention on the relevant bits (validation examples; each output token's attention "
                  "weight on the two input tokens that decide it, a_i and b_i, averaged over outputs; uniform: a "
                  "head spreading its weight evenly over the tokens it sees):", ""]
        lines += [f"- {r.get('name') or Path(r['run']).name}: {relevant_attention_text(r['relevant_attention'])}"
                  for r in attention]
    if figures:
        lines += ["", "Figures:", ""] + [f"- {name}: `{path}`" for name, path in figures.items()]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    write_rows(rows, path, COLUMNS)


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
    for task in sorted({r["task"] for r in rows} - {"timeseries", "forecast"}):  # these: in their own sections
        dirs = [d for d in run_dirs if results[d].get("task") == task]
        figures[f"learning curves, {task}"] = _save(learning_curve_figure(dirs, f"{task}: validation accuracy"),
                                                    out / f"curves-{task}.png")
        figures[f"generalisation, {task}"] = _save(
            generalisation_figure(dirs, f"{task}: training-batch vs validation accuracy (test: final)"),
            out / f"generalisation-{task}.png")
    if any(r["task"] != "forecast" for r in rows):  # steps to a target accuracy: not for forecasts
        figures["convergence speed"] = _save(convergence_figure(rows), out / "convergence.png")
    skipped = []
    if attention:
        for d in run_dirs:
            r = results[d]
            if r.get("task") not in ("bit-xor", "bit-memory") or reference.backbone_kind(r) == "lstm":
                continue
            try:
                maps, config = attention_maps(d)
            except Exception as err:  # e.g. a backbone that is not available here any more
                skipped.append(f"{d}: {err}")
                continue
            if r.get("task") == "bit-xor":  # does attention land on the two tokens deciding each output?
                row = next(x for x in rows if x["run"] == str(d))
                row["relevant_attention"] = relevant_attention(maps)
                row["attention_on_relevant"] = row["relevant_attention"]["best"]
            name = _slug_path(d)
            figures[f"attention, {name}"] = _save(attention_figure(maps, config, f"attention: {run_legend(r)}"),
                                                  out / f"attention-{name}.png")
    ts_markdown, ts_figures = timeseries_section(run_dirs, results, out)
    figures.update(ts_figures)
    fc_markdown, fc_figures = forecast_section(run_dirs, results, out)
    main_rows = [r for r in rows if r["task"] != "forecast"]  # forecasts: MSE, not accuracy; their own section
    head = (render_markdown(main_rows, {k: Path(v).name for k, v in figures.items()}) if main_rows else
            "# fpt report\n\nFigures: " + ", ".join(f"`{Path(v).name}`" for v in fc_figures.values()) + "\n")
    figures.update(fc_figures)
    atomic_write_text(out / "report.md", head + ts_markdown + fc_markdown)
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
