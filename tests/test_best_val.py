"""Best-validation weights: ``best.safetensors`` holds the weights of the best validation, and results.json
reports the test at both the final and the best-validation point."""

from __future__ import annotations

import json

import pytest
import torch

from fpt.config.files import build_config


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dirs, run_values):
    """A run whose validation accuracy rises then falls: lr high enough to overshoot on a tiny model."""
    from fpt.training.fitting import fit

    run_dir = tmp_path_factory.mktemp("best") / "run"
    values = run_values(tiny_dirs["gpt2"], run_dir, steps=12, eval_every=2, lr=0.05, seed=3)
    results = fit(build_config(values), enable_progress_bar=False)
    return run_dir, results


def _val_curve(run_dir):
    from fpt.results.rows import read_curve

    return dict(zip(*read_curve(run_dir)))


def test_best_weights_are_those_of_the_best_validation(run):
    run_dir, results = run
    curve = _val_curve(run_dir)
    best_step = max(curve, key=lambda s: (curve[s], -s))  # the first of equal bests
    at_best = results["at_best_val"]
    assert at_best["step"] == best_step == results["val"]["best_step"]
    assert at_best["val_accuracy"] == pytest.approx(curve[best_step])
    from safetensors import safe_open

    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["best_step"] == str(best_step) and float(meta["val_accuracy"]) == pytest.approx(curve[best_step])
    assert json.loads((run_dir / "results.json").read_text())["at_best_val"] == at_best


def test_test_at_best_is_the_test_of_the_best_weights(run, tmp_path):
    """Re-evaluate best.safetensors independently: same test metrics as results.json's at_best_val."""
    import lightning as L

    from fpt.config.files import load_config
    from fpt.training.module import FPTModule
    from fpt.training.fitting import _test
    from fpt.runs.checkpoint import build_model, load_trained

    run_dir, results = run
    config = load_config(run_dir / "config.yaml")
    model = build_model(config)
    load_trained(model, run_dir / "best.safetensors")  # the same format and checks as model.safetensors
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = _test(trainer, FPTModule(config, model=model))
    assert metrics["test"]["accuracy"] == pytest.approx(results["at_best_val"]["test"]["accuracy"])
    assert metrics["test"]["loss"] == pytest.approx(results["at_best_val"]["test"]["loss"], rel=1e-5)
    if results["at_best_val"]["step"] != results["steps"]:  # the final weights are other weights
        final = build_model(config)
        load_trained(final, run_dir / "model.safetensors")
        assert any(not torch.equal(a, b) for a, b in zip(final.trainable_state_dict().values(),
                                                          model.trainable_state_dict().values()))


def test_resume_keeps_the_best(run, tmp_path):
    """The best step lives in the resume checkpoint: continuing a run keeps it unless a later one is better."""
    import shutil

    from fpt.training.fitting import fit

    run_dir, results = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    from fpt.config.files import load_config

    config = load_config(copy / "config.yaml")
    config.run_dir, config.steps = str(copy), 14
    resumed = fit(config, resume=True, enable_progress_bar=False)
    curve = _val_curve(copy)
    best_step = max(curve, key=lambda s: (curve[s], -s))
    assert resumed["at_best_val"]["step"] == best_step
    if best_step <= 12:
        assert resumed["at_best_val"]["test"] == pytest.approx(results["at_best_val"]["test"])
