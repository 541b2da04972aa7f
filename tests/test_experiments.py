"""Presets, experiments, ``fpt sweep`` and the run-as-backbone (bit-memory-pretrained) initialisation.

Tiny backbones from configs in temporary directories (tests/conftest.py), a few steps each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpt.backbones import load_backbone
from fpt.config.files import build_config, list_presets, preset_dir, read_yaml
from fpt.tasks import TASKS
from fpt.tasks.base import make_options

# The paper's seven tasks plus Fashion-MNIST (the offline stand-in for MNIST).
PAPER_TASKS = ("bit-memory", "bit-xor", "listops", "mnist", "cifar10", "cifar10-lra", "remote-homology")


# -- presets and experiments ---------------------------------------------------------------------
def test_every_preset_parses_and_names_a_registered_task():
    """Fails (never skips) while a preset names a task that is not registered yet."""
    presets = list_presets()
    assert presets
    for name in presets:
        values = read_yaml(name)
        config = build_config(values)
        assert config.task in TASKS, f"preset {name} names task {config.task!r}, which is not registered (fpt list)"
        make_options(TASKS[config.task], config.task_options)  # the task accepts every option it sets
        text = (preset_dir() / f"{name}.yaml").read_text()
        header = [ln for ln in text.splitlines() if ln.startswith("#")]
        assert any("Command:" in ln and f"--config {name}" in ln for ln in header), f"{name}: no 'Command:' line"
        assert any("Expected:" in ln for ln in header), f"{name}: no 'Expected:' line"
        if name.endswith("-small"):
            assert config.label.startswith("-small"), f"{name}: label must start with -small, got {config.label!r}"


def test_each_paper_task_has_a_paper_preset_and_a_small_one():
    presets = list_presets()
    for task in PAPER_TASKS + ("fashion-mnist",):
        assert task in presets and f"{task}-small" in presets, task
        assert build_config(read_yaml(task)).task == task
        assert build_config(read_yaml(task)).layers is None  # the paper's setting: the whole model
        assert build_config(read_yaml(f"{task}-small")).task == task


def test_every_experiment_expands_on_every_small_preset(tmp_path):
    from fpt.experiments.files import list_experiments
    from fpt.experiments.plan import make_plan

    experiments = list_experiments()
    assert {"table1", "init", "ladder", "size", "depth", "rothermel"} <= set(experiments)
    for name in experiments:
        text = (preset_dir() / "experiments" / f"{name}.yaml").read_text()
        assert "Command:" in text and "Expected" in text, name
        plan = make_plan("bit-xor-small", experiment=name, sweep_dir=tmp_path / name)
        assert plan.trials and all(t.values["label"].startswith("-small") for t in plan.trials)
    table1 = make_plan("bit-xor-small", experiment="table1", sweep_dir=tmp_path / "t1")
    by_variant = {t.variant: t.values for t in table1.trials}
    assert by_variant["full-transformer"]["freeze"] == "full" and by_variant["full-transformer"]["init"] == "random"
    assert by_variant["full-lstm"]["backbone"] == "lstm" and by_variant["full-lstm"]["layers"] is None
    init = make_plan("bit-xor-small", experiment="init", sweep_dir=tmp_path / "init")
    source_values, source_dir = init.sources["bit-memory"]
    assert source_values["task"] == "bit-memory" and source_values["freeze"] == "full"
    assert source_values["label"].startswith("-small")  # bit-memory-small for a -small preset
    assert source_values["layers"] == build_config(read_yaml("bit-xor-small")).layers  # same depth as the trials
    bm = {t.variant: t.values for t in init.trials}["bit-memory"]
    assert bm["backbone"] == f"run:{source_dir.resolve()}"
    rothermel = make_plan("listops-small", experiment="rothermel", sweep_dir=tmp_path / "r")
    assert len(rothermel.trials) == 2 * 4 * 3  # {frozen, unfrozen} x 4 learning rates x 3 seeds


def test_bit_xor_demo_still_works_as_the_readme_uses_it():
    config = build_config(read_yaml("bit-xor-demo"))
    assert config.task == "bit-xor" and config.stop_at_target and config.target_accuracy == 0.99


# -- the sweep -------------------------------------------------------------------------------------
def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_sweep_runs_grid_x_seeds_skips_finished_and_selects_on_validation(tmp_path, base_file, monkeypatch):
    from fpt.experiments import execute as sweep_execute, plan as sweep_plan, summary as sweep_summary

    plan = sweep_plan.make_plan(str(base_file), grid={"lr": [1e-3, 3e-2]}, seeds=2, sweep_dir=tmp_path / "sw")
    assert [(t.setting, t.seed) for t in plan.trials] == [("lr=0.001", 0), ("lr=0.001", 1), ("lr=0.03", 0), ("lr=0.03", 1)]
    summary = sweep_execute.run_plan(plan, echo=lambda line: None)
    assert summary["complete"]
    for t in plan.trials:
        r = _results(t.run_dir)
        assert r["lr"] == t.params["lr"] and r["seed"] == t.seed and r["label"] == "-small: tiny test"
        assert t.log_path.exists()
    assert (tmp_path / "sw" / "sweep.json").exists() and (tmp_path / "sw" / "sweep.md").exists()

    # Re-running skips every finished trial: fit is never called, nothing is rewritten.
    stamps = {t.run_dir: (t.run_dir / "results.json").stat().st_mtime_ns for t in plan.trials}

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr("fpt.training.fitting.fit", no_fit)
    again = sweep_execute.run_plan(sweep_plan.make_plan(str(base_file), grid={"lr": [1e-3, 3e-2]}, seeds=2,
                                           sweep_dir=tmp_path / "sw"), echo=lambda line: None)
    assert again["complete"]
    assert all((t.run_dir / "results.json").stat().st_mtime_ns == stamps[t.run_dir] for t in plan.trials)

    # Selection is on validation, never on test: make lr=0.03 best on validation but worst on test.
    # What is reported is the test at the best validation point (at_best_val), not at the final weights.
    for t in plan.trials:
        r = _results(t.run_dir)
        assert r["at_best_val"]["step"] == r["val"]["best_step"]
        good = t.params["lr"] == 0.03
        r["val"]["best_accuracy"] = 0.9 if good else 0.6
        r["at_best_val"]["test"]["accuracy"] = (0.2 + 0.1 * t.seed) if good else 0.95
        r["test"]["accuracy"] = 0.5  # the final weights: shown, never the reported number
        (t.run_dir / "results.json").write_text(json.dumps(r))
    summary = sweep_summary.write_summary(plan)
    assert summary["chosen"] == {"all": "lr=0.03"}
    best = next(s for s in summary["settings"] if s["setting"] == "lr=0.03")
    assert best["chosen"] and best["test"]["mean"] == pytest.approx(0.25)
    assert best["test"]["std"] == pytest.approx(0.0707106, rel=1e-4)  # sample std over the 2 seeds
    assert best["test_final"]["mean"] == pytest.approx(0.5)
    other = next(s for s in summary["settings"] if s["setting"] == "lr=0.001")
    assert not other["chosen"] and other["test"]["mean"] == pytest.approx(0.95)
    markdown = (tmp_path / "sw" / "sweep.md").read_text()
    assert "**lr=0.03**" in markdown and "25.0 ± 7.1" in markdown and "50.0" in markdown

    # Settings that tie on mean validation accuracy (small validation sets) are split by the lower mean
    # validation loss at those points, whatever their order in the grid.
    for t in plan.trials:
        r = _results(t.run_dir)
        r["val"]["best_accuracy"] = 0.9
        r["val"]["best_loss"] = 0.4 if t.params["lr"] == 0.001 else 0.2
        (t.run_dir / "results.json").write_text(json.dumps(r))
    assert sweep_summary.write_summary(plan)["chosen"] == {"all": "lr=0.03"}
    for t in plan.trials:
        r = _results(t.run_dir)
        r["val"]["best_loss"] = 0.1 if t.params["lr"] == 0.001 else 0.2
        (t.run_dir / "results.json").write_text(json.dumps(r))
    assert sweep_summary.write_summary(plan)["chosen"] == {"all": "lr=0.001"}


def test_sweep_resumes_an_interrupted_trial_and_restarts_one_without_checkpoint(tmp_path, base_file):
    from fpt.experiments import execute as sweep_execute, plan as sweep_plan

    plan = sweep_plan.make_plan(str(base_file), grid={"init": ["random"]}, seeds=2, sweep_dir=tmp_path / "sw")
    sweep_execute.run_plan(plan, echo=lambda line: None)
    resumable, restartable = plan.trials[0].run_dir, plan.trials[1].run_dir
    # Interrupted after its last checkpoint: no results.json, no model.safetensors.
    (resumable / "results.json").unlink()
    (resumable / "model.safetensors").unlink()
    # Interrupted before any checkpoint: only config.yaml (and perhaps some logs).
    for p in list(restartable.iterdir()):
        if p.name not in ("config.yaml", "metrics.csv"):
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
    assert sweep_plan.trial_state(plan.trials[0].values, resumable) == "resume"
    assert sweep_plan.trial_state(plan.trials[1].values, restartable) == "restart"
    states = {}

    def echo(line):
        states[line.split(":")[0].split("] ")[-1]] = line  # the last line of each trial: its outcome

    summary = sweep_execute.run_plan(plan, echo=echo)
    assert summary["complete"]
    assert "resumed" in states["init=random/s0"] and "restarted" in states["init=random/s1"]
    assert _results(resumable)["steps"] == 4 and _results(restartable)["steps"] == 4
    assert list(restartable.parent.glob("s1.old-*"))  # the partial directory was moved aside, not deleted


def test_sweep_refuses_a_trial_directory_with_other_settings(tmp_path, base_file):
    from fpt.experiments import execute as sweep_execute, plan as sweep_plan

    sweep_execute.run_plan(sweep_plan.make_plan(str(base_file), sweep_dir=tmp_path / "sw"), echo=lambda line: None)
    with pytest.raises(ValueError, match="other settings.*steps"):  # refused as the plan is made: nothing runs
        sweep_plan.make_plan(str(base_file), sets={"steps": 6}, sweep_dir=tmp_path / "sw")
    (tmp_path / "sw" / "plan.json").unlink()  # a sweep directory of an older fpt: the trial directory refuses
    changed = sweep_plan.make_plan(str(base_file), sets={"steps": 6}, sweep_dir=tmp_path / "sw")
    with pytest.raises(ValueError, match="other settings.*steps"):
        sweep_execute.run_plan(changed, echo=lambda line: None)


def test_sweep_cli_parallel_and_syntax(tmp_path, base_file, capsys):
    from fpt.cli.main import main

    sweep_dir = tmp_path / "sw"
    args = ["sweep", str(base_file), "--grid", "layers=1,2", "--set", "steps=2", "--sweep-dir", str(sweep_dir)]
    assert main(args + ["--dry-run"]) == 0
    assert "layers=1/s0 [new]" in capsys.readouterr().out and not sweep_dir.exists()
    assert main(args + ["--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "Chosen on validation" in out
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["done", "done"]
    assert [_results(Path(t["run_dir"]))["layers"] for t in summary["trials"]] == [1, 2]
    assert main(["sweep", str(base_file), "--lr", "1e-3", "--grid", "lr=1e-2"]) == 2  # both: refused
    assert main(["sweep", str(base_file), "--grid", "lrr=1,2", "--sweep-dir", str(tmp_path / "x")]) == 2
    assert "unknown option 'lrr'" in capsys.readouterr().err


def test_parse_values():
    from fpt.experiments.files import parse_assignment

    assert parse_assignment("lr=1e-5,1e-4,0.01", True) == ("lr", [1e-5, 1e-4, 0.01])
    assert parse_assignment("init=pretrained,random", True) == ("init", ["pretrained", "random"])
    assert parse_assignment("layers=null,2", True) == ("layers", [None, 2])
    assert parse_assignment("task_options.n_bits=8", False) == ("task_options.n_bits", 8)


# -- a finished run as the backbone (bit-memory-pretrained init) -------------------------------------
@pytest.fixture(scope="module")
def bit_memory_source(tmp_path_factory, tiny_dirs):
    """A tiny transformer trained whole (freeze full, random init) on Bit Memory."""
    from fpt.training.fitting import fit

    run_dir = tmp_path_factory.mktemp("bm") / "source"
    values = {"task": "bit-memory", "task_options": {"n_bits": 8, "n_strings": 2, "patch_size": 2,
                                                     "val_samples": 16, "test_samples": 16},
              "backbone": tiny_dirs["llama"], "init": "random", "freeze": "full", "steps": 3, "batch_size": 8,
              "eval_every": 3, "eval_batch_size": 16, "device": "cpu", "run_dir": str(run_dir), "lr": 1e-2}
    fit(build_config(values), enable_progress_bar=False)
    return run_dir


def test_run_backbone_loads_the_trained_weights(bit_memory_source, tiny_dirs):
    from fpt.runs.checkpoint import load_run

    _, source_model = load_run(bit_memory_source)
    plain = load_backbone(tiny_dirs["llama"], init="random", seed=0)
    loaded = load_backbone(f"run:{bit_memory_source}")
    trained = source_model.backbone.state_dict()
    for name, tensor in loaded.state_dict().items():
        if "embed_tokens" in name:  # the unused token table is never trained or stored
            continue
        assert torch.equal(tensor, trained[name]), name
        if name.endswith("q_proj.weight"):
            assert not torch.equal(tensor, plain.state_dict()[name])  # training changed it
    identity = loaded.identity()
    assert identity["backbone"] == f"run:{bit_memory_source}"
    assert identity["source_task"] == "bit-memory" and identity["source_freeze"] == "full"
    assert identity["source_fingerprint"] == plain.identity()["fingerprint"]
    assert identity["fingerprint"] != plain.identity()["fingerprint"]  # the fingerprint of the loaded weights
    assert load_backbone(f"run:{bit_memory_source}").identity() == identity  # deterministic
    assert load_backbone(f"run:{bit_memory_source}", layers=1).num_layers == 1


def test_fit_on_a_run_backbone_records_it_and_reloads(tmp_path, bit_memory_source, run_values):
    from fpt.training.fitting import fit
    from fpt.runs.checkpoint import load_run

    values = run_values(f"run:{bit_memory_source}", tmp_path / "xor", init="pretrained", freeze="fpt")
    results = fit(build_config(values), enable_progress_bar=False)
    assert results["backbone_identity"]["source_run"] == str(bit_memory_source)
    assert results["backbone_identity"]["source_task"] == "bit-memory"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "xor" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["source_run"] == str(bit_memory_source) and meta["fingerprint"] == results["backbone_identity"]["fingerprint"]
    config, model = load_run(tmp_path / "xor")  # rebuilt through run:, identity checked
    assert model.backbone.identity() == results["backbone_identity"]
    from fpt.results.reference import setting_of

    assert setting_of(results) == "frozen-bit-memory"


def test_run_backbone_errors(tmp_path, bit_memory_source, tiny_dirs, run_values):
    from fpt.training.fitting import fit

    with pytest.raises(ValueError, match="--init random does not apply"):
        load_backbone(f"run:{bit_memory_source}", init="random")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_backbone(f"run:{tmp_path / 'nothing'}")
    head_only = tmp_path / "head-only"
    fit(build_config(run_values(tiny_dirs["gpt2"], head_only, freeze="output-only", steps=2)), enable_progress_bar=False)
    with pytest.raises(ValueError, match="trained no backbone weight"):
        load_backbone(f"run:{head_only}")


def test_run_backbone_keeps_the_backbone_layer_free_of_lightning(bit_memory_source):
    import subprocess
    import sys

    code = (f"import sys\nfrom fpt.backbones import load_backbone\nload_backbone('run:{bit_memory_source}')\n"
            "print(','.join(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
