"""fpt predict: the CSV matches the trained model's own outputs, and bad data is refused like in training."""

import csv

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from fpt.cli import main
from fpt.training import load_run


@pytest.fixture(scope="module")
def trained_array_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=16, n_positions=32).save_pretrained(root / "tiny")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 8, 8), dtype=np.uint8)  # raw images, patched 4x4 -> 4 tokens of 16
    y = (x[:, :4].mean((1, 2)) > x[:, 4:].mean((1, 2))).astype(np.int64)  # top half brighter than bottom
    np.savez(root / "train.npz", x=x, y=y)
    run_dir = root / "run"
    code = main(["fit", "--task", "array", "-o", f"path={root / 'train.npz'}", "-o", "patch_size=4",
                 "--backbone", str(root / "tiny"), "--init", "random", "--steps", "30", "--eval-every", "15",
                 "--batch-size", "16", "--run-dir", str(run_dir), "--no-progress-bar"])
    assert code == 0
    return root, run_dir, x, y


def test_predict_writes_the_models_own_predictions(trained_array_run):
    root, run_dir, x, y = trained_array_run
    new = np.random.default_rng(1).integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    np.savez(root / "new.npz", x=new)
    assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "new.npz"), "--out", str(root / "p.csv")]) == 0
    rows = list(csv.DictReader(open(root / "p.csv")))
    assert len(rows) == 10 and set(rows[0]) == {"index", "prediction", "p0", "p1"}

    # Independent path: preprocess as training does (the task's own layout) and run the model directly.
    from fpt.tasks import make_task

    config, model = load_run(run_dir)
    task = make_task(config.task, config.task_options, seed=config.seed)
    layout = task.prediction_layout()
    inputs = layout.preprocess(torch.as_tensor(new))
    with torch.no_grad():
        probs = model(inputs).softmax(-1)[:, 0]
    for row, p in zip(rows, probs):
        assert int(row["prediction"]) == int(p.argmax())
        assert float(row["p0"]) == pytest.approx(float(p[0]), abs=1e-5)
        assert float(row["p0"]) + float(row["p1"]) == pytest.approx(1.0, abs=1e-4)


def test_predict_reports_accuracy_when_labels_are_given(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "labelled.npz", x=x[:40], y=y[:40])
    assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "labelled.npz"), "--out", str(root / "l.csv")]) == 0
    rows = list(csv.DictReader(open(root / "l.csv")))
    expected = np.mean([int(r["prediction"]) == int(r["label"]) for r in rows])
    assert f"accuracy {expected:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[:, :6], "per-sample shape"),
    (lambda x: np.where(x > 128, np.nan, x.astype(np.float32)), "NaN"),
])
def test_predict_refuses_data_that_training_would_refuse(trained_array_run, capsys, bad, message):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "bad.npz", x=bad(x[:10]))
    assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "bad.npz"), "--out", str(root / "b.csv")]) == 2
    assert message in capsys.readouterr().err
    assert not (root / "b.csv").exists()
