"""Training runs end to end: run directory contents, checkpoints, resume, refusals, the NaN guard."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import fpt.training.fitting as training
import fpt.training.module as training_module
from conftest import save_pretrained_dir
from fpt.config.files import build_config, load_config
from fpt.runs.health import NonFiniteGradientError
from fpt.runs.checkpoint import build_model, load_run, load_trained, read_results
from fpt.training.fitting import fit


def rows(run_dir) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


# Columns that are pure functions of the step (no timings): equal between a resumed and a straight run.
DETERMINISTIC = ("epoch", "step", "train/loss", "train/accuracy", "train/grad_norm", "train/skipped_steps",
                 "val/accuracy", "val/exact_accuracy", "val/loss", "test/accuracy", "test/exact_accuracy", "test/loss")


def metric_rows(run_dir) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k in DETERMINISTIC} for r in rows(run_dir)]


def eval_batch(config):
    from fpt.tasks import make_task

    task = make_task(config.task, config.task_options, seed=config.seed)
    return task.test()["test"].batch(list(range(16)))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dirs, run_values):
    run_dir = tmp_path_factory.mktemp("runs") / "xor"
    results = fit(build_config(run_values(tiny_dirs["gpt2"], run_dir)), enable_progress_bar=False)
    return run_dir, results


def test_run_directory_and_results(finished_run, tiny_dirs):
    run_dir, results = finished_run
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "results.json", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert read_results(run_dir) == results
    for key in ("task", "backbone", "init", "freeze", "layers", "steps", "seed", "trainable_params",
                "total_params", "seconds", "test"):
        assert key in results, key
    assert results["task"] == "bit-xor" and results["backbone"] == tiny_dirs["gpt2"]
    assert results["init"] == "random" and results["freeze"] == "fpt" and results["layers"] == 2
    assert results["steps"] == 4 and results["seed"] == 0 and results["seconds"] > 0
    model = build_model(load_config(run_dir / "config.yaml"))
    assert results["trainable_params"] == model.parameter_counts()["trainable"]
    assert results["total_params"] == model.parameter_counts()["total"]
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    assert results["skipped_steps"] == 0
    # The saved config is the resolved one and builds the same run.
    config = load_config(run_dir / "config.yaml")
    assert config.steps == 4 and config.run_dir == str(run_dir) and config.task_options["n_bits"] == 3


def test_checkpoint_holds_trained_parameters_and_identity(finished_run):
    run_dir, _ = finished_run
    config = load_config(run_dir / "config.yaml")
    fresh = build_model(config)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    tensors = load_file(str(run_dir / "model.safetensors"))
    assert set(tensors) == trainable
    assert not any("wte" in n or ".attn." in n or ".mlp." in n for n in tensors)
    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "fpt-1"
    identity = fresh.backbone.identity()
    for key in ("backbone", "arch", "init", "layers", "hidden_size", "fingerprint"):
        assert metadata[key] == identity[key], key
    assert metadata["arch"] == "gpt2" and metadata["layers"] == "2"
    # The resume checkpoint holds the trained parameters only, too (frozen weights are rebuilt).
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == {f"model.{n}" for n in trainable}
    assert ckpt["global_step"] == 4 and ckpt["fpt"]["identity"] == identity
    # Training changed the trained parameters and nothing else.
    assert any(not torch.equal(tensors[n], p) for n, p in fresh.named_parameters() if n in tensors)


def test_load_run_round_trip(finished_run):
    run_dir, results = finished_run
    config, model = load_run(run_dir)
    assert not model.training
    batch = eval_batch(config)
    manual = build_model(config)
    manual.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=False)
    manual.eval()
    with torch.no_grad():
        logits = model(batch["x"])
        assert torch.equal(logits, manual(batch["x"]))
        assert torch.equal(logits, load_run(run_dir)[1](batch["x"]))
        assert not torch.equal(logits, build_model(config).eval()(batch["x"]))  # the trained params matter
    # Re-testing the loaded model reproduces the metrics of the run itself.
    again = training.test_run(run_dir)
    assert again["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-7)
    assert again["test"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)


def test_existing_run_dir_is_refused(finished_run, tiny_dirs, run_values):
    run_dir, _ = finished_run
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume"):
        fit(build_config(run_values(tiny_dirs["gpt2"], run_dir, steps=2)))
    assert (run_dir / "config.yaml").read_bytes() == before


def test_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_dirs, run_values):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full = fit(build_config(run_values(tiny_dirs["llama"], full_dir, steps=8)), enable_progress_bar=False)
    fit(build_config(run_values(tiny_dirs["llama"], split_dir, steps=4)), enable_progress_bar=False)
    assert torch.load(split_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    first_rows = rows(split_dir)
    resumed = fit(build_config(run_values(tiny_dirs["llama"], split_dir, steps=8)), resume=True,
                  enable_progress_bar=False)

    # Bit-identical trained parameters on CPU.
    a, b = load_file(str(full_dir / "model.safetensors")), load_file(str(split_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The step count continued from 4 to 8.
    assert resumed["steps"] == full["steps"] == 8
    assert torch.load(split_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert resumed["test"] == full["test"] and resumed["val"] == full["val"]
    # metrics.csv kept the rows before the resume and has the rows after it, labelled as in the
    # uninterrupted run (same steps, same values).
    steps = [int(r["step"]) for r in rows(split_dir) if "train/loss" in r]
    assert min(steps) < 4 <= max(steps)
    assert [r for r in rows(split_dir) if int(r["step"]) < 4] == [r for r in first_rows if int(r["step"]) < 4]
    assert metric_rows(split_dir) == metric_rows(full_dir)
    assert any("val/accuracy" in r and int(r["step"]) >= 4 for r in rows(split_dir))


def test_resume_needs_a_checkpoint(tmp_path, tiny_dirs, run_values):
    with pytest.raises(FileNotFoundError, match="last.ckpt does not exist"):
        fit(build_config(run_values(tiny_dirs["gpt2"], tmp_path / "none")), resume=True)


def test_a_failed_start_leaves_the_run_dir_usable(tmp_path, tiny_dirs, run_values):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="--layers 5 is more than"):
        fit(build_config(run_values(tiny_dirs["gpt2"], run_dir, layers=5)))
    with pytest.raises(ValueError, match="unknown freeze preset"):
        fit(build_config(run_values(tiny_dirs["gpt2"], run_dir, freeze="fpy")))
    assert not (run_dir / "config.yaml").exists()
    results = fit(build_config(run_values(tiny_dirs["gpt2"], run_dir, layers=1, steps=2)), enable_progress_bar=False)
    assert results["layers"] == 1 and results["steps"] == 2


def test_checkpoint_of_another_backbone_is_refused(tmp_path, pretrained_dirs, finished_run, tiny_dirs, run_values):
    # A checkpoint loaded onto another architecture.
    run_dir, _ = finished_run
    other = build_model(build_config(run_values(tiny_dirs["llama"], tmp_path / "unused")))
    with pytest.raises(ValueError, match="another backbone.*arch: checkpoint 'gpt2' vs now 'llama'"):
        load_trained(other, run_dir / "model.safetensors")

    # The subtle case: same directory, same architecture and shapes, but its weights changed.
    weights = tmp_path / "gpt2"
    shutil.copytree(pretrained_dirs["gpt2"], weights)
    run = tmp_path / "run"
    fit(build_config(run_values(weights, run, init="pretrained", steps=2)), enable_progress_bar=False)
    load_run(run)  # fine while the weights are the same
    save_pretrained_dir("gpt2", weights, seed=1)
    with pytest.raises(ValueError, match="another backbone.*fingerprint"):
        load_run(run)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="another backbone.*fingerprint"):
        fit(build_config(run_values(weights, run, init="pretrained", steps=4)), resume=True)
    assert (run / "config.yaml").read_bytes() == before  # the refused resume changed nothing
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_resume_refuses_a_config_for_another_backbone(tmp_path, tiny_dirs, run_values):
    run = tmp_path / "run"
    fit(build_config(run_values(tiny_dirs["gpt2"], run, steps=2)), enable_progress_bar=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(backbone=tiny_dirs["gpt_neox"], steps=4)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="another backbone"):
        fit(build_config(config), resume=True)
    assert (run / "config.yaml").read_bytes() == before


# -- the non-finite gradient guard -------------------------------------------------------------------
@pytest.fixture
def poison_steps(monkeypatch):
    """Make the training loss NaN at the global steps put in the returned set (-1: at every step)."""
    bad: set[int] = set()
    original = training_module.FPTModule._logits_and_loss

    def poisoned(self, batch):
        logits, y, loss = original(self, batch)
        if self.trainer.training and (int(self.global_step) in bad or -1 in bad):
            loss = loss * float("nan")
        return logits, y, loss

    monkeypatch.setattr(training_module.FPTModule, "_logits_and_loss", poisoned)
    return bad


def test_non_finite_steps_are_skipped_and_counted(tmp_path, tiny_dirs, run_values, poison_steps):
    poison_steps.update({1, 2, 4, 5})  # never 3 in a row
    run = tmp_path / "run"
    results = fit(build_config(run_values(tiny_dirs["gpt2"], run, steps=8, eval_every=1, max_bad_steps=3)),
                  enable_progress_bar=False)
    assert results["skipped_steps"] == 4 and results["steps"] == 8
    logged = {int(r["step"]): r for r in rows(run) if "train/grad_norm" in r}
    assert sorted(logged) == list(range(8))
    for step, r in logged.items():
        assert (r["train/grad_norm"] == "nan") == (step in poison_steps), step
    assert float(logged[7]["train/skipped_steps"]) == 4
    for t in load_file(str(run / "model.safetensors")).values():
        assert torch.isfinite(t).all()


def test_all_bad_steps_change_nothing_then_raise(tmp_path, tiny_dirs, run_values, poison_steps):
    poison_steps.add(-1)  # every step
    run = tmp_path / "run"
    config = build_config(run_values(tiny_dirs["gpt2"], run, steps=10, eval_every=2, max_bad_steps=3))
    with pytest.raises(NonFiniteGradientError, match=r"3 steps in a row had a non-finite gradient norm .*last.ckpt"):
        fit(config, enable_progress_bar=False)
    # The checkpoint taken at step 2 (two skipped steps) holds exactly the initial parameters.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["fpt"]["bad_steps_total"] == 2
    initial = build_model(config)
    for name, p in initial.named_parameters():
        if p.requires_grad:
            assert torch.equal(ckpt["state_dict"][f"model.{name}"], p), name
