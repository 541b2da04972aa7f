"""``fpt predict``: classes and probabilities for new data with a trained run.

New data is an ``.npz`` with ``x`` (and optionally ``y``). For image and ``array`` tasks ``x`` is
raw data in the training format (e.g. ``uint8 [N, 28, 28]``), preprocessed exactly as in training
from the run's ``prediction_layout.json``; for other tasks ``x`` must already be model input
(``[N, T, D]`` floats or ``[N, T]`` token ids). Either way it goes through the same validation as
training data.

For ``timeseries`` runs the new data is a ``.ts`` file (``--data new.ts``), read and preprocessed
(missing values, normalisation, patching) as in training; ``prediction_label`` is the class as the
file writes it. Regression runs (:mod:`fpt.model.objectives`) write the predicted values in the targets'
original units (``prediction``; ``prediction_<k>`` for several targets) and, with labels, the RMSE
and MAE.

For ``forecast`` runs the new data is a series file (CSV or npz, the run's columns): the next ``horizon``
values of every channel after its last row, from its last ``lookback`` rows, z-scored (and instance
normalised) as in training and mapped back to the series' units. One CSV row per step ahead:
``step`` (1..H), ``after`` (the time cell of the file's last row, when it has a time column), then one
column per channel, named as in the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from fpt.runs.checkpoint import load_run
from fpt.data.arrays import load_arrays_for_prediction
from fpt.base.io import atomic_write_text, not_regular
from fpt.tasks.registry import task_of
from fpt.runs.checkpoint import results_or_none

# The CSV's columns, as predict() writes them (fpt predict --help and docs/tasks.md say this; tests check it).
CSV_COLUMNS = ("index, prediction (the class index), prediction_label (time series: the class as its files write it), "
               "p0..pC-1 (class probabilities), label (when the data has labels); many labels per sample (bit tasks): "
               "index, prediction, confidence (space-separated per label), label; regression: index, prediction "
               "(prediction_0.. for several targets, in the targets' units), label")


def check_out_path(out: str | Path, run_dir: str | Path, data: str | Path, overwrite: bool = False) -> Path:
    """Where ``fpt predict`` may write: never inside the run directory (its weights and config) nor over the
    input data; an existing file only with ``overwrite``. Checked before anything is loaded."""
    out, run_dir, data = Path(out), Path(run_dir), Path(data)
    target = out.resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents:
        raise ValueError(f"--out {out} is inside the run directory {run_dir}: fpt predict never writes there (it holds "
                         "the run's weights, config and results); write the predictions elsewhere, e.g. --out preds.csv")
    if data.exists() and (target == data.resolve() or (out.exists() and os.path.samefile(out, data))):
        raise ValueError(f"--out {out} is the input data file (--data {data}): writing there would destroy it; "
                         "choose another --out")
    kind = not_regular(out)
    if kind and kind != "a directory":
        raise ValueError(f"--out {out} is {kind}, not a regular file: fpt predict writes its CSV whole (a temporary "
                         "file renamed over the old one), which would replace it; write a regular file, e.g. "
                         "--out preds.csv, and copy it there")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give a file name, e.g. --out {out / 'predictions.csv'}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; fpt predict does not replace files unless asked: pass --overwrite "
                              "to replace it, or choose another --out")
    return out


@torch.no_grad()
def predict(run_dir: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 256,
            x_key: str | None = None, overwrite: bool = False, check_values: bool = True) -> dict:
    """Write one CSV row per sample: index, predicted class(es), class probabilities, and the label if given.

    ``out`` is checked first (:func:`check_out_path`; ``overwrite`` replaces an existing file) and written
    atomically. ``check_values``: refuse data on another scale than the training inputs (``fpt.data.arrays``)."""
    run_dir = Path(run_dir)
    if out is not None:
        check_out_path(out, run_dir, data, overwrite)
    config, model = load_run(run_dir)
    layout_file = run_dir / "prediction_layout.json"
    layout = json.loads(layout_file.read_text()) if layout_file.exists() else model.spec
    class_names = None
    if isinstance(layout, dict) and layout.get("kind") == "forecast":
        return _predict_forecast(model, layout, data, out)
    if isinstance(layout, dict) and layout.get("kind") == "timeseries":
        from fpt.tasks.timeseries import load_for_prediction

        split, _ = load_for_prediction(data, layout)
        class_names = layout.get("classes") or None
    else:
        split = load_arrays_for_prediction(data, layout, x_key=x_key, check_values=check_values)
    spec = model.spec
    if getattr(spec, "output", "classification") == "regression":
        return _predict_values(config, model, split, out, batch_size, run_dir)
    rows, correct, labelled = [], 0, 0
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(start + batch_size, len(split))))
        probs = model(batch["x"], batch.get("mask")).float().softmax(-1)  # [B, labels, classes]
        pred = probs.argmax(-1)
        for i in range(probs.shape[0]):
            row = {"index": start + i}
            if spec.num_labels == 1:
                row["prediction"] = int(pred[i, 0])
                if class_names:  # the class as the data files write it
                    row["prediction_label"] = class_names[int(pred[i, 0])]
                row.update({f"p{c}": f"{float(probs[i, 0, c]):.6f}" for c in range(spec.num_classes)})
            else:  # many labels per sample (bit tasks): predictions and confidence of each
                row["prediction"] = " ".join(str(int(v)) for v in pred[i])
                row["confidence"] = " ".join(f"{float(v):.4f}" for v in probs[i].max(-1).values)
            if "y" in batch:
                y = batch["y"][i].reshape(-1)
                row["label"] = int(y[0]) if spec.num_labels == 1 else " ".join(str(int(v)) for v in y)
                correct += int((pred[i] == y).all())
                labelled += 1
            rows.append(row)
    summary = {"samples": len(rows), "out": str(out) if out else None}
    _write_rows(rows, out)
    if labelled:
        summary["accuracy"] = correct / labelled
    return summary


def _write_rows(rows: list[dict], out) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if out is not None:
        atomic_write_text(Path(out), text.getvalue())


def _predict_forecast(model, layout: dict, data, out) -> dict:
    from fpt.tasks.forecast import forecast_file

    result = forecast_file(model, layout, data)
    rows = []
    for step, values in enumerate(result["values"], 1):
        row = {"step": step}
        if result["last_time"] is not None:
            row["after"] = result["last_time"]
        row.update({name: f"{float(v):.8g}" for name, v in zip(result["columns"], values)})
        rows.append(row)
    _write_rows(rows, out)
    return {"samples": len(rows), "horizon": len(rows), "channels": len(result["columns"]), "rows": result["rows"],
            "out": str(out) if out else None}


def _predict_values(config, model, split, out, batch_size: int, run_dir: Path) -> dict:
    """Regression: values in the targets' original units (the training targets' mean and std, which
    results.json records, undo the standardisation), one column per target; RMSE / MAE against the labels
    when the data has them. A run without them in results.json rebuilds its task for them."""
    from fpt.model.objectives import Regression, make_objective

    recorded = (results_or_none(run_dir) or {}).get("objective") or {}
    if recorded.get("target_mean") is not None and recorded.get("target_std") is not None:
        objective = Regression(model.spec.num_labels, recorded["target_mean"], recorded["target_std"])
    else:
        objective = make_objective(model.spec, task_of(config))  # the training split's target statistics
    k = model.spec.num_labels
    names = ["prediction"] if k == 1 else [f"prediction_{j}" for j in range(k)]
    label_names = ["label"] if k == 1 else [f"label_{j}" for j in range(k)]
    rows, errors = [], []
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(start + batch_size, len(split))))
        values = objective.predict(model(batch["x"], batch.get("mask")))  # [B, K], original units
        y = batch["y"].reshape(values.shape).float() if "y" in batch else None
        for i in range(values.shape[0]):
            row = {"index": start + i, **{n: f"{float(v):.8g}" for n, v in zip(names, values[i])}}
            if y is not None:
                row.update({n: f"{float(v):.8g}" for n, v in zip(label_names, y[i])})
            rows.append(row)
        if y is not None:
            errors.append((values - y).reshape(-1))
    _write_rows(rows, out)
    summary = {"samples": len(rows), "out": str(out) if out else None}
    if errors:
        err = torch.cat(errors)
        summary["rmse"] = float(err.pow(2).mean().sqrt())
        summary["mae"] = float(err.abs().mean())
    return summary
