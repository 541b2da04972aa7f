"""A shared CPU: fpt's OpenMP wait default (fpt/base/cpu.py) and `fpt bench --load N` (fpt/bench/load.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpt.cli.main import main

ROOT = Path(__file__).parents[1]


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_openmp_wait_default_is_set_before_torch_loads_unless_given():
    from fpt.base.cpu import SPIN_COUNT

    show = "import os; from fpt.base.cpu import openmp_wait; print(os.environ.get('GOMP_SPINCOUNT'), '|', openmp_wait())"
    assert _python(f"import fpt, torch; {show}") == f"{SPIN_COUNT} | GOMP_SPINCOUNT={SPIN_COUNT} (fpt's default)"
    # yours win
    assert _python(f"import fpt; {show}", OMP_WAIT_POLICY="PASSIVE") == "None | OMP_WAIT_POLICY=PASSIVE (set in the environment)"
    assert _python(f"import fpt; {show}", GOMP_SPINCOUNT="5") == "5 | GOMP_SPINCOUNT=5 (set in the environment)"
    # too late once torch has loaded libgomp: nothing is set, and fpt bench says so
    assert _python(f"import torch, fpt; {show}").startswith("None | libgomp defaults (torch was imported before fpt")
    # the `fpt` command's children inherit it (DataLoader workers, sweep trials, SLURM jobs)
    assert _python("import fpt, subprocess, sys; print(subprocess.run([sys.executable, '-c', "
                   "'import os; print(os.environ[\"GOMP_SPINCOUNT\"])'], capture_output=True, text=True).stdout)") \
        == SPIN_COUNT


def test_bench_load_runs_competing_processes_and_reports_them(pretrained_dirs, tmp_path, capsys):
    tiny_llama = pretrained_dirs["llama"]
    out = tmp_path / "b.json"
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "8", "--input-dim", "4", "--batch-size", "4",
                 "--steps", "30", "--warmup", "1", "--profile", "0", "--paths", "fast", "--device", "cpu",
                 "--num-threads", "1", "--load", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "under load: 1 other process(es) ran the fast step meanwhile (1 threads each)" in text
    assert "OpenMP:" in text
    result = json.loads(out.read_text())
    (other,) = result["load"]["others"]
    assert other["threads"] == 1 and other["steps"] >= 1 and other["step_ms"] > 0  # it ran while this one timed
    assert result["load"]["others_samples_per_s"] == other["samples_per_s"]
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "8", "--load", "-1", "--device", "cpu"]) == 2


def test_threads_follow_the_cpus_slurm_gave_the_task(monkeypatch):
    from fpt.model import fastpath

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert fastpath.cpu_threads(None) == 1 and fastpath.cpu_threads(3) == 3  # an explicit --num-threads wins
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "512")
    assert fastpath.cpu_threads(None) == fastpath.physical_cores()  # never more than the physical cores
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fastpath.cpu_threads(None) == 2


def test_other_load_counts_other_processes_not_this_one(monkeypatch):
    from fpt.base import cpu

    machine = iter([(1000, 4000), (1000 + 300 + 100, 4000 + 400)])  # 400 busy ticks of 400, 100 of them ours
    own = iter([50, 150])
    monkeypatch.setattr(cpu, "_machine_ticks", lambda: next(machine))
    monkeypatch.setattr(cpu, "_own_ticks", lambda: next(own))
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    load = cpu.OtherLoad()
    assert load.cpus() == 1.5  # 300 of 400 ticks over 2 CPUs: others keep 1.5 CPUs busy
    assert cpu.threads_beside(1.5, 2) == 1 and cpu.threads_beside(0.3, 2) == 2 and cpu.threads_beside(1.6, 4) == 2
    assert cpu.threads_beside(7.0, 2) == 1 and cpu.threads_beside(None, 3) == 3  # at least 1; no /proc: all


@pytest.mark.benchmark
def test_other_load_sees_a_busy_process_on_this_machine():
    from fpt.base.cpu import OtherLoad

    import time

    load = OtherLoad()
    time.sleep(0.1)
    if load.cpus() is None:
        import pytest

        pytest.skip("no /proc/stat here")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        load.cpus()
        time.sleep(1.0)
        seen = load.cpus()
    finally:
        busy.wait()
    assert seen is not None and seen >= 0.6  # one spinning process: about one CPU (less if the machine is shared)


def test_fit_threads_follow_the_cores_other_processes_leave(monkeypatch, pretrained_dirs, tmp_path):
    """No --num-threads: a fit starts on the free cores and changes threads when other jobs come and go."""
    import torch

    from fpt.training import threads as callbacks
    from fpt.base import cpu
    from fpt.model import fastpath

    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(fastpath, "physical_cores", lambda: 2)
    monkeypatch.setattr(callbacks, "ADAPT_EVERY_S", 0.0)  # look between every two steps
    others = iter([0.0] + [1.0] * 3 + [0.0] * 100)  # quiet at the start, then another job for 3 looks, then gone
    monkeypatch.setattr(cpu.OtherLoad, "cpus", lambda self: next(others))
    run_dir = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        assert main(["fit", "--task", "bit-xor", "--backbone", pretrained_dirs["llama"], "--run-dir", str(run_dir),
                     "-o", "n_bits=3", "-o", "val_samples=16", "-o", "test_samples=16", "--init", "random",
                     "--steps", "8", "--eval-every", "8", "--batch-size", "4"]) == 0
    finally:
        torch.set_num_threads(before)
    threads = json.loads((run_dir / "results.json").read_text())["cpu_threads"]
    assert threads["start"] == 2
    assert [(c["step"], c["threads"]) for c in threads["changes"]] == [(1, 1), (4, 2)]
    # an explicit --num-threads is never changed
    assert main(["fit", "--task", "bit-xor", "--backbone", pretrained_dirs["llama"], "--run-dir", str(tmp_path / "b"),
                 "-o", "n_bits=3", "-o", "val_samples=16", "-o", "test_samples=16", "--init", "random",
                 "--steps", "4", "--eval-every", "4", "--batch-size", "4", "--num-threads", "1"]) == 0
    assert "cpu_threads" not in json.loads((tmp_path / "b" / "results.json").read_text())
