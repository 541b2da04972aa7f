"""A shared CPU: fpt's OpenMP wait default (fpt/cpu.py) and `fpt bench --load N` (fpt/bench/load.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fpt.cli import main

ROOT = Path(__file__).parents[1]


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_openmp_wait_default_is_set_before_torch_loads_unless_given():
    from fpt.cpu import SPIN_COUNT

    show = "import os; from fpt.cpu import openmp_wait; print(os.environ.get('GOMP_SPINCOUNT'), '|', openmp_wait())"
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
    from fpt import fastpath

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert fastpath.cpu_threads(None) == 1 and fastpath.cpu_threads(3) == 3  # an explicit --num-threads wins
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "512")
    assert fastpath.cpu_threads(None) == fastpath.physical_cores()  # never more than the physical cores
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fastpath.cpu_threads(None) == 2
