"""fpt predict: the CSV matches the trained model's own outputs, and bad data is refused like in training."""

import csv

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from fpt.cli.main import main
from fpt.runs.checkpoint import load_run


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


# -- the training inputs' dtype and value range (prediction_layout.json) ----------------------------------
def test_layout_records_the_training_dtype_and_range(trained_array_run):
    import json

    root, run_dir, x, y = trained_array_run
    layout = json.loads((run_dir / "prediction_layout.json").read_text())
    assert layout["dtype"] == "uint8" and layout["value_range"][0] >= 0 and layout["value_range"][1] <= 255
    assert layout["value_range"][1] > 200


def test_data_on_another_scale_is_refused_with_the_numbers(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "float.npz", x=(x[:20] / 255.0).astype(np.float32))  # the same images, as floats in [0, 1]
    args = ["predict", "--run-dir", str(run_dir), "--data", str(root / "float.npz"), "--out", str(root / "f.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "array 'x' is float32 with values in [0" in err and "trained on uint8 with values in [" in err
    assert "(x * 255).round().astype(np.uint8)" in err and not (root / "f.csv").exists()
    assert main(args + ["--allow-other-scale"]) == 0  # asked for: done, nothing refused


def test_data_outside_the_training_range_gets_a_warning(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    wider = x[:10].astype(np.float32) * 1.5  # up to ~380: outside [0, 255], but on the same scale
    np.savez(root / "wider.npz", x=wider)
    assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "wider.npz"), "--out",
                 str(root / "w.csv")]) == 0
    err = capsys.readouterr().err
    assert "fpt predict: warning: array 'x' is float32 with values in" in err and "extrapolation" in err


# -- --out: never the run's own files, never the input, never an existing file unasked -------------------
def test_out_inside_the_run_directory_is_refused(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "some.npz", x=x[:5])
    weights = (run_dir / "model.safetensors").read_bytes()
    for out in (run_dir / "model.safetensors", run_dir / "predictions.csv", run_dir):
        assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "some.npz"), "--out", str(out),
                     "--overwrite"]) == 2
        assert "inside the run directory" in capsys.readouterr().err
    assert (run_dir / "model.safetensors").read_bytes() == weights and not (run_dir / "predictions.csv").exists()


def test_out_over_the_input_is_refused(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "input.npz", x=x[:5])
    before = (root / "input.npz").read_bytes()
    assert main(["predict", "--run-dir", str(run_dir), "--data", str(root / "input.npz"), "--out",
                 str(root / "input.npz"), "--overwrite"]) == 2
    assert "is the input data file" in capsys.readouterr().err
    assert (root / "input.npz").read_bytes() == before


def test_an_existing_out_needs_overwrite(trained_array_run, capsys):
    root, run_dir, x, y = trained_array_run
    np.savez(root / "five.npz", x=x[:5])
    notes = root / "notes.csv"
    notes.write_text("my notes\n")
    args = ["predict", "--run-dir", str(run_dir), "--data", str(root / "five.npz"), "--out", str(notes)]
    assert main(args) == 2
    assert "exists; fpt predict does not replace files unless asked: pass --overwrite" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"
    assert main(args + ["--overwrite"]) == 0
    assert notes.read_text().startswith("index,prediction")
