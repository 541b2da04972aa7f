"""``fpt predict``: classes and probabilities for new data with a trained run.

New data is an ``.npz`` with ``x`` (and optionally ``y``). For image and ``array`` tasks ``x`` is
raw data in the training format (e.g. ``uint8 [N, 28, 28]``), preprocessed exactly as in training
from the run's ``prediction_layout.json``; for other tasks ``x`` must already be model input
(``[N, T, D]`` floats or ``[N, T]`` token ids). Either way it goes through the same validation as
training data.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from fpt.checkpoint import load_run
from fpt.data.arrays import load_arrays_for_prediction
from fpt.io import atomic_write_text


@torch.no_grad()
def predict(run_dir: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 256,
            x_key: str | None = None) -> dict:
    """Write one CSV row per sample: index, predicted class(es), class probabilities, and the label if given."""
    run_dir = Path(run_dir)
    config, model = load_run(run_dir)
    layout_file = run_dir / "prediction_layout.json"
    layout = json.loads(layout_file.read_text()) if layout_file.exists() else model.spec
    split = load_arrays_for_prediction(data, layout, x_key=x_key)
    spec = model.spec
    rows, correct, labelled = [], 0, 0
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(start + batch_size, len(split))))
        probs = model(batch["x"], batch.get("mask")).float().softmax(-1)  # [B, labels, classes]
        pred = probs.argmax(-1)
        for i in range(probs.shape[0]):
            row = {"index": start + i}
            if spec.num_labels == 1:
                row["prediction"] = int(pred[i, 0])
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
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if out is not None:
        atomic_write_text(Path(out), text.getvalue())
    summary = {"samples": len(rows), "out": str(out) if out else None}
    if labelled:
        summary["accuracy"] = correct / labelled
    return summary
