"""Reliability: runs that die, diverge, are interrupted or were fed bad input say so plainly and lose nothing.

Subprocess tests start ``fpt.cli`` on a tiny GPT-2 (conftest ``pretrained_dirs``) with every training
step slowed down by a wrapper, so that a signal lands mid-training at a known point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fpt import cli
from fpt.config import build_config
from fpt.health import ChanceWarning
from fpt.rundir import RunLock, RunLockedError
from fpt.training import fit

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
import fpt.training as t
progress, delay = Path(sys.argv[1]), float(sys.argv[2])
original = t.FPTModule.training_step
def slow_step(self, batch, batch_idx):
    time.sleep(delay)
    progress.write_text(str(int(self.global_step)))
    return original(self, batch, batch_idx)
t.FPTModule.training_step = slow_step
from fpt.cli import main
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
    import fpt.training as t

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
    from fpt.rundir import _process_start

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
    from fpt import io as fio
    from fpt.rundir import save_checkpoint_file

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
    import fpt.training as t

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
    fit(build_config(options(backbone, tmp_path / "full", batch_size=16, steps=6, eval_every=3)),
               enable_progress_bar=False)
    accumulated = fit(build_config(options(backbone, tmp_path / "acc", batch_size=8, accumulate_grad_batches=2,
                                           steps=6, eval_every=3)), enable_progress_bar=False)
    assert accumulated["steps"] == 6
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    for k in wa:  # the same 16 samples per step, as two micro-batches: equal up to float rounding
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    import csv

    with open(tmp_path / "acc" / "metrics.csv") as f:
        val_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("val/accuracy")]
    assert val_steps == [2, 5]  # after optimizer steps 3 and 6 (logged 0-based), not every 3 micro-batches
