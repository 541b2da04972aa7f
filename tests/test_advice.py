"""Tracebacks, hangs and advice (issue 20, class 4): each answered at once, with advice that works."""

from __future__ import annotations

import io


import numpy as np
import pytest

from fpt.config.files import build_config, save_config


def test_omp_num_threads_zero_is_a_clear_error(monkeypatch):
    from fpt.model import fastpath

    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    with pytest.raises(ValueError, match=r"OMP_NUM_THREADS=0: threads must be >= 1"):
        fastpath.cpu_threads(None)


def test_a_huge_plan_is_refused_before_any_trial_is_built(base_file, monkeypatch):
    from fpt.experiments import plan as sweep

    built = []
    monkeypatch.setattr(sweep, "build_config", lambda values: built.append(1))
    with pytest.raises(ValueError, match=r"100,000,000 trials; fpt plans at most 10,000"):
        sweep.make_plan(str(base_file), seeds=100_000_000)
    assert not built


def _unstarted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config({"device": "cpu", "run_dir": str(run)}), run / "config.yaml")
    return run


def test_a_run_killed_before_its_first_checkpoint_gets_advice_that_works(tmp_path):
    from fpt.runs.checkpoint import load_run, read_results
    from fpt.results.rows import find_runs

    run = _unstarted(tmp_path)
    for call in (lambda: load_run(run), lambda: read_results(run), lambda: find_runs([run])):
        with pytest.raises(FileNotFoundError, match=rf"nothing to resume: start it again with fpt fit --config "
                                                    rf"{run}/config.yaml --run-dir {run}") as err:
            call()
        assert "--resume" not in str(err.value)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=rf"resume it with fpt fit --resume {run}"):
        load_run(run)


def test_fsdp_on_a_cpu_is_refused_before_anything_is_created(tmp_path):
    from fpt.training.fitting import fit

    with pytest.raises(ValueError, match=r"--strategy fsdp .*CUDA.*--strategy ddp"):
        fit(build_config({"device": "cpu", "strategy": "fsdp", "run_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()


def test_a_ts_file_where_an_npz_is_expected_says_what_it_is(tmp_path):
    from fpt.data.arrays import ArrayDataError, load_npz

    path = tmp_path / "GunPoint_TRAIN.ts"
    path.write_text("@problemName GunPoint\n@univariate true\n@classLabel true 1 2\n@data\n1,2,3:1\n")
    with pytest.raises(ArrayDataError, match=r"not an \.npz archive\. It looks like a \.ts time-series file: use "
                                             r"--task timeseries -o path="):
        load_npz(path)
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 3)), y=np.zeros(2))
    assert set(load_npz(tmp_path / "ok.npz")) == {"x", "y"}


def test_fpt_list_into_a_closed_pipe_exits_quietly(monkeypatch, capsys):
    from fpt.cli.main import main

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["list"]) == 141  # 128 + SIGPIPE, as a shell says it; never 0 for a cut-short command
    assert "Traceback" not in capsys.readouterr().err
