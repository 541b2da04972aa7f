"""Reliability: runs that die, diverge, are interrupted or were fed bad input say so plainly and lose nothing.

Subprocess tests start ``fpt.cli`` on a tiny GPT-2 (conftest ``pretrained_dirs``) with every training
step slowed down by a wrapper, so that a signal lands mid-training at a known point.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import load_file

from fpt.cli import main as cli
from fpt.config.files import build_config
from fpt.training.callbacks import ChanceWarning
from fpt.runs.rundir import RunLock, RunLockedError
from fpt.training.fitting import fit

STEPS, EVAL_EVERY = 24, 8


def options(backbone: str, run_dir, **overrides) -> dict:
    base = {
        "task": "bit-xor", "task_options": {"n_bits": 4, "val_samples": 32, "test_samples": 64},
        "backbone": str(backbone), "init": "pretrained", "steps": STEPS, "batch_size": 8, "eval_every": EVAL_EVERY,
        "eval_batch_size": 64, "device": "cpu", "run_dir": str(run_dir),
    }
    base.update(overrides)
    return base


def cli_args(values: dict) -> list[str]:
    args = ["fit", "--no-progress-bar"]
    for key, value in values.items():
        if key == "task_options":
            for k, v in value.items():
                args += ["-o", f"{k}={v}"]
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


def held_out_metrics(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())["test"]


@pytest.fixture(scope="module")
def backbone(pretrained_dirs):
    return pretrained_dirs["gpt2"]


@pytest.fixture(scope="module")
def reference(backbone, tmp_path_factory):
    """An uninterrupted run, in this process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    fit(build_config(options(backbone, run_dir)), enable_progress_bar=False)
    return run_dir


def assert_same_run(a: Path, b: Path) -> None:
    assert held_out_metrics(a) == held_out_metrics(b)  # exactly: same floats
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["val"] == rb["val"] and ra["steps"] == rb["steps"] == STEPS
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()


# -- 2. determinism ------------------------------------------------------------------------------
def test_same_seed_gives_identical_metrics(backbone, reference, tmp_path):
    fit(build_config(options(backbone, tmp_path / "again")), enable_progress_bar=False)
    assert_same_run(reference, tmp_path / "again")


# -- 3. kill -9 and SIGTERM, then resume ---------------------------------------------------------
SLOW_CLI = """
import sys, time
from pathlib import Path
import fpt.training.module as t
progress, delay = Path(sys.argv[1]), float(sys.argv[2])
original = t.FPTModule.training_step
def slow_step(self, batch, batch_idx):
    time.sleep(delay)
    progress.write_text(str(int(self.global_step)))
    return original(self, batch, batch_idx)
t.FPTModule.training_step = slow_step
from fpt.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def start_slow_fit(tmp_path, values, delay=0.15):
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    progress = tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, str(script), str(progress), str(delay), *cli_args(values)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, progress


def wait_for_step(proc, progress: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended early ({proc.returncode}): {proc.communicate()}")
        try:
            if int(progress.read_text() or -1) >= step:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the run did not reach step %d in time" % step)


def checkpoint_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def test_sigkill_mid_training_then_resume_equals_uninterrupted(backbone, reference, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    proc, progress = start_slow_fit(tmp_path, options(backbone, run_dir))
    wait_for_step(proc, progress, EVAL_EVERY + 3)  # past the first checkpoint (step 8), before the next
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint_step(run_dir) == EVAL_EVERY
    assert not (run_dir / "results.json").exists()
    assert (run_dir / ".lock").exists()  # left by the dead process; the resume takes it over
    assert cli.main(["fit", "--resume", str(run_dir), "--no-progress-bar"]) == 0
    assert "removed a stale lock" in capsys.readouterr().out
    assert not (run_dir / ".lock").exists()
    assert_same_run(reference, run_dir)


def test_sigterm_saves_current_step_and_prints_resume_command(backbone, reference, tmp_path, capsys):
    run_dir = tmp_path / "stopped"
    proc, progress = start_slow_fit(tmp_path, options(backbone, run_dir))
    wait_for_step(proc, progress, EVAL_EVERY + 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143
    step = checkpoint_step(run_dir)
    assert EVAL_EVERY + 3 <= step < 2 * EVAL_EVERY  # the step it was at, not the last periodic checkpoint
    assert f"stopped by SIGTERM at step {step} of {STEPS}" in err
    assert f"Resume with: fpt fit --resume {run_dir} --steps {STEPS}" in err
    assert not (run_dir / ".lock").exists() and not (run_dir / "results.json").exists()
    assert cli.main(["fit", "--resume", str(run_dir), "--steps", str(STEPS), "--no-progress-bar"]) == 0
    assert_same_run(reference, run_dir)


# -- 1. training health ---------------------------------------------------------------------------
def poison_training_steps(monkeypatch, bad_steps, batch_size=8):
    """NaN inputs in the training batches of the given steps (stream positions step*batch ...)."""
    import fpt.training.module as t

    original = t._SplitDataset.__getitem__

    def getitem(self, positions):
        batch = original(self, positions)
        endless = getattr(self.split, "size", 0) is None  # the training stream; evaluation splits are finite
        if endless and int(positions[0]) // batch_size in bad_steps:
            batch = dict(batch, x=torch.full_like(batch["x"], float("nan")))
        return batch

    monkeypatch.setattr(t._SplitDataset, "__getitem__", getitem)


def test_nan_loss_steps_are_skipped_and_counted(backbone, tmp_path, monkeypatch):
    poison_training_steps(monkeypatch, {3, 4, 5})
    results = fit(build_config(options(backbone, tmp_path / "nan", steps=10, eval_every=5)), enable_progress_bar=False)
    assert results["skipped_steps"] == 3 and results["steps"] == 10
    weights = load_file(tmp_path / "nan" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(v == v for v in results["test"].values())  # finite test metrics


def test_nan_every_step_stops_with_the_cause_and_the_last_checkpoint(backbone, tmp_path, monkeypatch, capsys):
    poison_training_steps(monkeypatch, set(range(4, 100)))
    run_dir = tmp_path / "diverged"
    code = cli.main(cli_args(options(backbone, run_dir, steps=30, eval_every=2, max_bad_steps=3)))
    err = capsys.readouterr().err
    assert code == 1
    for words in ("3 steps in a row had a non-finite gradient norm", "learning rate", "exactly zero", "fp16",
                  str(run_dir / "checkpoints" / "last.ckpt"), "It holds step"):
        assert words in err, (words, err)
    # the checkpoint is good: bad steps were skipped, so it holds finite weights
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (run_dir / ".lock").exists()


def test_chance_warning_counts_the_first_k_validations():
    w = ChanceWarning(num_classes=2, n_val_labels=10_000, evals=3)
    assert w.observe(0.50, 10) is None and w.observe(0.51, 20) is None
    message = w.observe(0.49, 30)
    assert message and "chance" in message and "--lr" in message and "--layers" in message and "inputs" in message
    learning = ChanceWarning(num_classes=2, n_val_labels=10_000, evals=3)
    assert learning.observe(0.5, 10) is None and learning.observe(0.7, 20) is None and learning.observe(0.5, 30) is None
    assert ChanceWarning(num_classes=10, n_val_labels=100, evals=2).margin >= 0.09  # 3 sigma of 100 labels


def test_run_at_chance_warns_and_records_it(backbone, tmp_path, capfd):
    results = fit(build_config(options(backbone, tmp_path / "stuck", lr=1e-9, steps=6, eval_every=2,
                                       chance_warning_evals=2)), enable_progress_bar=False)
    assert "fpt: warning: validation accuracy has stayed at chance" in capfd.readouterr().err
    assert "not learning" in results["warnings"][0]


# -- 4. files: atomic writes, --overwrite, locks ------------------------------------------------------
def test_existing_run_needs_resume_or_overwrite(backbone, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    values = options(backbone, run_dir, steps=2, eval_every=2)
    assert cli.main(cli_args(values)) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert cli.main(cli_args(values) + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"moved the previous run in {run_dir} to {aside[0]}" in out
    assert held_out_metrics(aside[0]) == held_out_metrics(reference)  # the old run is intact, only moved
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli.main(cli_args(options(backbone, tmp_path / "other"))) == 2
    assert "holds no fpt run" in capsys.readouterr().err


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        with pytest.raises(RunLockedError, match=f"in use by another fpt run \\(pid {sleeper.pid}"):
            RunLock(run_dir).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(run_dir).acquire()  # the owner is dead now: a stale lock
    assert lock.took_over["pid"] == sleeper.pid
    assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError):
        RunLock(run_dir).acquire()  # held by this process
    lock.release()
    assert not (run_dir / ".lock").exists()
    (run_dir / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLockedError, match="on host 'elsewhere'.*delete .*\\.lock"):
        RunLock(run_dir).acquire()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    """A live process that has the lock's pid but started later is not the lock's writer."""
    from fpt.runs.rundir import _process_start

    run_dir = tmp_path / "reused"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real = _process_start(sleeper.pid)
        if real is None:
            pytest.skip("no /proc: process start times unknown")
        owner = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "x", "process_start": real}
        (run_dir / ".lock").write_text(json.dumps(owner))
        with pytest.raises(RunLockedError, match="in use by another fpt run"):
            RunLock(run_dir).acquire()  # the writer itself: live
        boot, ticks = real.rsplit(":", 1)
        (run_dir / ".lock").write_text(json.dumps({**owner, "process_start": f"{boot}:{int(ticks) - 1}"}))
        lock = RunLock(run_dir).acquire()  # same pid, another start: the writer is gone
        assert lock.took_over["pid"] == sleeper.pid
        assert json.loads((run_dir / ".lock").read_text())["process_start"] == _process_start(os.getpid())
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_fit_refuses_a_directory_in_use(backbone, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        assert cli.main(cli_args(options(backbone, run_dir, steps=2, eval_every=2))) == 1
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"is in use by another fpt run (pid {sleeper.pid}" in capsys.readouterr().err
    assert not (run_dir / "config.yaml").exists()


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from fpt.base import io as fio
    from fpt.runs.checkpoint import save_checkpoint_file

    path = tmp_path / "checkpoints" / "last.ckpt"
    save_checkpoint_file({"global_step": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(fio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_file({"global_step": 2, "w": torch.zeros(3)}, path, keep_previous=True)
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the good file is untouched
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_previous_checkpoint_is_kept(reference):
    ckpts = reference / "checkpoints"
    assert checkpoint_step(reference) == STEPS
    assert torch.load(ckpts / "previous.ckpt", weights_only=True)["global_step"] == STEPS - EVAL_EVERY


# -- 5/6. damaged files and mismatched checkpoints -----------------------------------------------------
def test_truncated_last_checkpoint_names_the_file_and_the_fallback(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    assert cli.main(["fit", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} cannot be read: it is truncated, corrupted" in err
    assert f"cp {run_dir / 'checkpoints' / 'previous.ckpt'} {last}" in err


def test_corrupted_model_safetensors_is_a_clear_error(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    weights = run_dir / "model.safetensors"
    weights.write_bytes(b"\x00" * 16 + weights.read_bytes()[16:])
    assert cli.main(["test", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{weights} is not a readable safetensors file" in err and f"fpt fit --resume {run_dir}" in err


def test_checkpoint_of_another_backbone_or_task_shape_is_refused(backbone, pretrained_dirs, reference, tmp_path, capsys):
    other = tmp_path / "other"
    fit(build_config(options(pretrained_dirs["llama"], other, steps=2, eval_every=2)), enable_progress_bar=False)
    shutil.copy(reference / "checkpoints" / "last.ckpt", other / "checkpoints" / "last.ckpt")
    assert cli.main(["fit", "--resume", str(other)]) == 2
    assert "checkpoint belongs to another backbone: backbone:" in capsys.readouterr().err
    shutil.copy(reference / "model.safetensors", other / "model.safetensors")
    assert cli.main(["test", "--run-dir", str(other)]) == 2
    assert "checkpoint belongs to another backbone" in capsys.readouterr().err
    wider = tmp_path / "wider"  # same backbone, another task shape (5 bits instead of 4)
    values = options(backbone, wider, steps=2, eval_every=2)
    values["task_options"] = dict(values["task_options"], n_bits=5)
    fit(build_config(values), enable_progress_bar=False)
    shutil.copy(reference / "checkpoints" / "last.ckpt", wider / "checkpoints" / "last.ckpt")
    assert cli.main(["fit", "--resume", str(wider)]) == 2
    assert "was trained for a task of another shape: max_tokens: checkpoint 8 vs now 10" in capsys.readouterr().err


def test_out_of_memory_says_what_to_change(backbone, tmp_path, monkeypatch, capsys):
    import fpt.training.module as t

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(t.FPTModule, "training_step", oom)
    run_dir = tmp_path / "oom"
    assert cli.main(cli_args(options(backbone, run_dir, batch_size=16))) == 1
    err = capsys.readouterr().err
    assert "during training (CUDA out of memory" in err
    assert "smaller --batch-size (now 16, e.g. 8) with --accumulate-grad-batches 2" in err
    assert not (run_dir / ".lock").exists()


def test_gradient_accumulation_matches_the_full_batch(backbone, tmp_path):
    # fp32: in bf16 (auto's path on some CPUs) two half batches round differently from one whole batch
    fit(build_config(options(backbone, tmp_path / "full", batch_size=16, steps=6, eval_every=3, precision="32-true")),
        enable_progress_bar=False)
    accumulated = fit(build_config(options(backbone, tmp_path / "acc", batch_size=8, accumulate_grad_batches=2,
                                           steps=6, eval_every=3, precision="32-true")), enable_progress_bar=False)
    assert accumulated["steps"] == 6
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    for k in wa:  # the same 16 samples per step, as two micro-batches: equal up to float rounding
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    import csv

    with open(tmp_path / "acc" / "metrics.csv") as f:
        val_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("val/accuracy")]
    assert val_steps == [3, 6]  # after optimizer steps 3 and 6, not every 3 micro-batches


# -- round 2 (issue 15): no silent wrong answer, no file overwritten, bad input answered where it enters ---
class _PoisonWeights(L.Callback):
    """Sets a trained parameter to inf after step ``at`` (a run that diverged between two checkpoints)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if int(trainer.global_step) == self.at:
            with torch.no_grad():
                pl_module.model.head.weight.fill_(float("inf"))


def test_non_finite_weights_are_never_saved_or_called_good(backbone, tmp_path):
    from fpt.runs.checkpoint import NonFiniteWeightsError

    run_dir = tmp_path / "poisoned"
    with pytest.raises(NonFiniteWeightsError) as err:
        fit(build_config(options(backbone, run_dir, steps=8, eval_every=2)), enable_progress_bar=False,
            callbacks=[_PoisonWeights(3)])
    message = str(err.value)
    assert "not finite at step 4" in message and "head.weight" in message and "--lr" in message
    assert "It holds step 2" in message  # the last good checkpoint, said plainly
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(state["global_step"]) == 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "results.json").exists()


def test_save_trained_refuses_non_finite_tensors(tmp_path, lstm_backbone):
    from fpt.runs.checkpoint import NonFiniteWeightsError, save_trained
    from fpt.model.network import FPT
    from fpt.tasks import make_task

    model = FPT(lstm_backbone, make_task("bit-xor", {"n_bits": 3}).spec)
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="head.bias \\(1 NaN"):
        save_trained(model, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


def test_lr_inf_is_refused_before_anything_is_written(backbone, tmp_path, capsys):
    run_dir = tmp_path / "inf"
    assert cli.main(cli_args(options(backbone, run_dir, lr="inf", steps=2))) == 2
    assert "option 'lr' (--lr) must be a finite number in (0, 1000], got inf" in capsys.readouterr().err
    assert not run_dir.exists()


def test_the_last_step_is_always_validated_and_said(backbone, tmp_path, capsys):
    run_dir = tmp_path / "short"
    assert cli.main(cli_args(options(backbone, run_dir, steps=5, eval_every=100))) == 0
    out = capsys.readouterr().out
    assert "validating at the last step (5) only" in out and "step      5  val accuracy" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val"]["best_step"] == 5 and results["val"]["best_accuracy"] is not None
    assert results["at_best_val"]["step"] == 5
    run_dir = tmp_path / "uneven"
    assert cli.main(cli_args(options(backbone, run_dir, steps=5, eval_every=2))) == 0
    assert "validating every 2 steps and at the last step (5)" in capsys.readouterr().out
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("val/accuracy")]
    assert steps == [2, 4, 5]


def test_metrics_csv_labels_validations_as_the_console_does(backbone, tmp_path, capsys):
    run_dir = tmp_path / "labels"
    assert cli.main(cli_args(options(backbone, run_dir, steps=4, eval_every=2))) == 0
    console = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert console == [2, 4]
    assert [int(r["step"]) for r in rows if r.get("val/accuracy")] == console
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics_step"] == "completed" and results["val"]["best_step"] in console


def test_resumed_run_records_total_and_per_invocation_seconds(backbone, tmp_path):
    run_dir = tmp_path / "timed"
    first = fit(build_config(options(backbone, run_dir, steps=4, eval_every=2)), enable_progress_bar=False)
    assert [i["to_step"] for i in first["invocations"]] == [4]
    resumed = fit(build_config(options(backbone, run_dir, steps=8, eval_every=2)), resume=True, enable_progress_bar=False)
    invocations = resumed["invocations"]
    assert [(i["from_step"], i["to_step"]) for i in invocations] == [(0, 4), (4, 8)]
    assert resumed["seconds"] == pytest.approx(sum(i["seconds"] for i in invocations), abs=0.02)
    assert resumed["seconds"] > invocations[-1]["seconds"] > 0 and invocations[0]["seconds"] > 0
    assert resumed["cpu_seconds"] == pytest.approx(sum(i["cpu_seconds"] for i in invocations), abs=0.02)


def test_resume_from_an_uneven_last_step_keeps_the_step_labels(backbone, tmp_path):
    """A run ended at step 6 (eval_every 4) and resumed to 8 labels its rows as an uninterrupted 8-step run."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    fit(build_config(options(backbone, whole, steps=8, eval_every=4)), enable_progress_bar=False)
    fit(build_config(options(backbone, parts, steps=6, eval_every=4)), enable_progress_bar=False)
    fit(build_config(options(backbone, parts, steps=8, eval_every=4)), resume=True, enable_progress_bar=False)

    def labels(run):
        return [(int(r["step"]), "val" if r.get("val/accuracy") else "test" if r.get("test/accuracy") else "train")
                for r in csv.DictReader(open(run / "metrics.csv")) if not r.get("best/test/accuracy")]

    assert [x for x in labels(parts) if x != (6, "val") and x != (5, "train")] == labels(whole)


def test_a_run_that_ended_before_its_first_checkpoint_is_not_a_run(backbone, tmp_path, capsys):
    run_dir = tmp_path / "late"
    values = options(backbone, run_dir, steps=2, eval_every=2)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(values))  # what a late error or a kill used to leave
    assert cli.main(cli_args(values)) == 0
    assert "ended before its first checkpoint" in capsys.readouterr().out
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 2
    # with logs of its own, it is moved aside (never deleted); --resume says there is nothing to resume
    other = tmp_path / "killed"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump(options(backbone, other)))
    (other / "metrics.csv").write_text("step,train/loss\n0,0.7\n")
    assert cli.main(["fit", "--resume", str(other), "--no-progress-bar"]) == 2
    assert "ended before its first checkpoint, so there is nothing to resume" in capsys.readouterr().err
    assert cli.main(cli_args(options(backbone, other, steps=2, eval_every=2))) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("killed.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.csv").read_text().endswith("0,0.7\n")


def test_run_dir_under_a_file_or_on_a_read_only_or_full_file_system(backbone, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    assert cli.main(cli_args(options(backbone, tmp_path / "a-file" / "run", steps=2))) == 2
    assert f"{tmp_path / 'a-file'} is a file, not a directory; choose another --run-dir" in capsys.readouterr().err
    real = os.statvfs

    def fake(flag=0, free_blocks=10**9):
        def statvfs(path):
            s = real(path)
            return os.statvfs_result((s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, free_blocks, s.f_files,
                                      s.f_ffree, s.f_favail, s.f_flag | flag, s.f_namemax))
        return statvfs

    monkeypatch.setattr(os, "statvfs", fake(flag=os.ST_RDONLY))
    assert cli.main(cli_args(options(backbone, tmp_path / "ro", steps=2))) == 2
    assert f"--run-dir {tmp_path / 'ro'}: {tmp_path} is on a read-only file system" in capsys.readouterr().err
    monkeypatch.setattr(os, "statvfs", fake(free_blocks=1))
    assert cli.main(cli_args(options(backbone, tmp_path / "full", steps=2))) == 2
    assert "is full" in capsys.readouterr().err
    assert not (tmp_path / "ro").exists() and not (tmp_path / "full").exists()


def test_a_full_disk_mid_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from fpt.base.io import WriteError, atomic_write_text

    target = tmp_path / "results.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match=f"cannot write {target}: No space left on device; the file system is full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_stale_preset_label_says_what_the_flags_changed(tmp_path, backbone, capsys):
    config = tmp_path / "preset.yaml"
    config.write_text(yaml.safe_dump({**options(backbone, tmp_path / "unused", steps=2), "layers": 2,
                                      "label": "-small: 2 layers"}))
    run_dir = tmp_path / "one-layer"
    assert cli.main(["fit", "--config", str(config), "--layers", "1", "--run-dir", str(run_dir),
                     "--no-progress-bar"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["label"] == "-small: 2 layers [changed: layers=1]"
    # the same command with --resume appended is the same run (the label is computed the same way)
    assert cli.main(["fit", "--config", str(config), "--layers", "1", "--run-dir", str(run_dir), "--resume",
                     str(run_dir), "--no-progress-bar"]) == 0
