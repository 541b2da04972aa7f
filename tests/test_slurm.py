"""``fpt sweep`` beyond one process: ``--status`` and ``--summarize`` from the files alone, and the SLURM launcher
against a real scheduler (slurmctld + slurmd on this machine, started by .ci/slurm.sh when they are installed).

Tiny backbones from configs (tests/conftest.py), a few steps per trial; the SLURM tests take ~1 min.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fpt.cli.main import main

REPO = Path(__file__).parents[1]


def comparable(markdown: str) -> str:
    """sweep.md without what depends on how the trials ran: the command line and the time column."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("Command:"):
            continue
        if line.startswith("|"):
            line = "|".join(line.split("|")[:-2])  # drop the last cell: time (s)
        lines.append(line)
    return "\n".join(lines)


# -- the sweep directory alone ---------------------------------------------------------------------------
def test_status_and_summarize_read_the_sweep_directory_alone(tmp_path, base_file, capsys):
    from fpt.experiments import plan as sweep_plan, status as sweep_status

    sweep_dir = tmp_path / "sw"
    # layers=5 fails when the model is built (the tiny backbone has 2 blocks): a real failed trial
    assert main(["sweep", str(base_file), "--grid", "layers=2,5", "--sweep-dir", str(sweep_dir)]) == 1
    capsys.readouterr()
    assert (sweep_dir / "plan.json").is_file()
    md = (sweep_dir / "sweep.md").read_text()

    assert main(["sweep", "--status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 trials: 1 finished, 0 running, 1 failed, 0 interrupted, 0 pending" in out
    failed = next(line for line in out.splitlines() if "layers=5/s0" in line)
    assert "failed" in failed and "layers" in failed and "5" in failed  # the error, from the trial's log

    # --summarize rebuilds sweep.json / sweep.md from the trial directories
    (sweep_dir / "sweep.md").unlink()
    (sweep_dir / "sweep.json").unlink()
    assert main(["sweep", str(sweep_dir), "--summarize"]) == 1  # not complete: one trial failed
    assert comparable((sweep_dir / "sweep.md").read_text()) == comparable(md)
    assert "Failed trials" in md and json.loads((sweep_dir / "sweep.json").read_text())["trials"][1]["status"] == "failed"

    # an interrupted trial (checkpoint, no results) and a running one (a live process holds its lock)
    done = sweep_dir / "layers=2" / "s0"
    (done / "results.json").unlink()
    plan = sweep_plan.load_plan(sweep_dir)
    assert sweep_status.trial_status(plan.trials[0]) == {"status": "interrupted",
                                                  "detail": "resumable, last checkpoint at step 4"}
    (done / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}))
    assert sweep_status.trial_status(plan.trials[0])["status"] == "running"
    (done / ".lock").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))  # a dead process
    assert sweep_status.trial_status(plan.trials[0])["status"] == "interrupted"

    assert main(["sweep", "--status", str(tmp_path / "nothing")]) == 2
    assert "no plan.json" in capsys.readouterr().err


def test_slurm_time_limits_read_as_sbatch_does():
    from fpt.experiments.slurm import time_minutes

    assert [time_minutes(t) for t in ("90", "30:30", "1:30:00", "2-00", "1-01:30", "0-00:00:30")] == [90, 31, 90, 2880,
                                                                                                      1530, 1]
    with pytest.raises(ValueError, match="--slurm-time"):
        time_minutes("an hour")


# -- a real SLURM ---------------------------------------------------------------------------------------
def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc", "comp") for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    """A usable SLURM: the running one, or one started now by .ci/slurm.sh (root, Debian's slurm-wlm and munge)."""
    if not (shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged")):
        pytest.skip("SLURM is not installed here (Debian: apt-get install slurm-wlm munge; .ci/run installs them)")
    if not _slurm_up():
        if os.geteuid() != 0:
            pytest.skip("SLURM is installed but not running, and starting it needs root (.ci/slurm.sh)")
        started = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh")], capture_output=True, text=True, timeout=180)
        assert _slurm_up(), f"SLURM is installed but did not come up:\n{started.stdout}\n{started.stderr}"


def _job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _wait(condition, seconds: float, what: str):
    end = time.time() + seconds
    while time.time() < end:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def test_slurm_sweep_ends_with_the_same_sweep_md_as_the_local_launcher(slurm, tmp_path, base_file, capsys):
    """The acceptance test: 4 trials (2 learning rates x 2 seeds) as a SLURM job array, the same table as local."""
    args = ["sweep", str(base_file), "--grid", "lr=0.001,0.03", "--seeds", "2", "--threads", "1"]
    assert main(args + ["--sweep-dir", str(tmp_path / "local")]) == 0
    assert main(args + ["--sweep-dir", str(tmp_path / "slurm"), "--launcher", "slurm", "--slurm-time", "10"]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 of 4 trials to SLURM as job array" in out
    local, slurm_md = (tmp_path / "local" / "sweep.md").read_text(), (tmp_path / "slurm" / "sweep.md").read_text()
    assert "2/2" in slurm_md and "Not complete" not in slurm_md
    assert comparable(slurm_md) == comparable(local)
    jobs = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == ["lr=0.001/s0", "lr=0.001/s1", "lr=0.03/s0", "lr=0.03/s1"]
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # one array
    log = (tmp_path / "slurm" / "lr=0.03" / "s1.log").read_text()
    assert f"job {jobs['lr=0.03/s1']} on " in log  # it ran in that job
    assert main(["sweep", "--status", str(tmp_path / "slurm")]) == 0
    assert "4 trials: 4 finished" in capsys.readouterr().out
    # Submitting again finds nothing to do.
    assert main(args + ["--sweep-dir", str(tmp_path / "slurm"), "--launcher", "slurm"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def test_slurm_requeues_a_trial_warned_of_its_time_limit_and_it_resumes_exactly(slurm, tmp_path, base_file, capsys,
                                                                                  request):
    """SIGUSR2 (what SLURM sends --slurm-signal-delay seconds before the time limit; here sent with scancel): the
    trial checkpoints at the step it is on, submitit requeues the job, and the requeued job resumes the trial.
    The trained weights equal those of an uninterrupted run."""
    from fpt.config.files import build_config
    from fpt.training.fitting import fit

    steps = 200
    sweep_dir = tmp_path / "sw"
    assert main(["sweep", str(base_file), "--set", f"steps={steps}", "--set", "eval_every=25", "--threads", "1",
                 "--sweep-dir", str(sweep_dir), "--launcher", "slurm", "--slurm-time", "10", "--no-wait"]) == 0
    job = json.loads((sweep_dir / "slurm" / "jobs.json").read_text())["base/s0"]
    request.addfinalizer(lambda: subprocess.run(["scancel", job], capture_output=True, timeout=30))
    run_dir, log = sweep_dir / "base" / "s0", sweep_dir / "base" / "s0.log"
    _wait(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), 120, "the trial's first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    _wait(lambda: "interrupted: stopped by SIGUSR2" in log.read_text(), 60, "the trial to stop on SIGUSR2")
    # SLURM holds a requeued job for two minutes before it may start again (BeginTime): release it now.
    _wait(lambda: _job_state(job) == "PENDING", 60, "the job to be requeued")

    def released() -> bool:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
        time.sleep(2)
        return _job_state(job) != "PENDING"

    _wait(released, 60, "the requeued job to start")
    _wait(lambda: (run_dir / "results.json").exists(), 180, "the requeued job to finish the trial")
    text = log.read_text()
    assert "(restart 1)" in text and f"resume {run_dir}" in text
    stopped_at = int(text.split("stopped by SIGUSR2 at step ")[1].split()[0])
    assert 25 <= stopped_at < steps  # stopped mid-training, after its first checkpoint
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == steps
    # The same run uninterrupted, here: bit-identical trained parameters.
    values = {**yaml.safe_load(base_file.read_text()), "steps": steps, "eval_every": 25, "num_threads": 1,
              "run_dir": str(tmp_path / "straight")}
    fit(build_config(values), enable_progress_bar=False)
    a, b = load_file(str(run_dir / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["sweep", "--status", str(sweep_dir)]) == 0
    assert "1 finished" in capsys.readouterr().out


def test_submitit_local_launcher_runs_the_same_path_without_a_scheduler(tmp_path, base_file, capsys):
    assert main(["sweep", str(base_file), "--threads", "1", "--sweep-dir", str(tmp_path / "sw"),
                 "--launcher", "submitit-local"]) == 0
    out = capsys.readouterr().out
    assert "submitit's local executor" in out and "base/s0: ran" in out
    assert json.loads((tmp_path / "sw" / "base" / "s0" / "results.json").read_text())["steps"] == 4
