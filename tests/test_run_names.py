"""The README's own commands never collide (issue 20, class 2): every *what* option that differs gives
another default run directory, or the refusal says exactly what to type; --resume of a paper-protocol run
names the protocol and what it set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fpt.cli.main import _flags, _parser, resume_config
from fpt.config.files import assemble
from fpt.config.files import build_config, save_config


def _config(*argv: str):
    args = _parser().parse_args(["fit", *argv])
    return build_config(*assemble(args.config, _flags(args)))


def test_default_run_dirs_differ_by_protocol_and_time_series_problem():
    fpt_run, paper_run = _config("--config", "bit-xor-small"), _config("--config", "bit-xor-small", "--protocol", "paper")
    assert fpt_run.default_run_dir() != paper_run.default_run_dir()
    assert paper_run.default_run_dir().endswith("-paper-s0")
    gunpoint = _config("--config", "timeseries-gunpoint-small")
    italy = _config("--config", "timeseries-gunpoint-small", "-o", "name=ItalyPowerDemand")
    assert gunpoint.default_run_dir() != italy.default_run_dir()
    assert "timeseries-GunPoint-" in gunpoint.default_run_dir()
    assert Path(_config("--task", "array", "-o", "path=data/mine.npz").default_run_dir()).name.startswith("array-mine-")


def _finished_run(run_dir: Path, config) -> None:
    """A run directory as fpt fit leaves it (config.yaml and results.json), without training one."""
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    (run_dir / "results.json").write_text(json.dumps({"task": config.task, "steps": config.steps}))


def test_a_directory_holding_another_run_says_exactly_what_to_type(tmp_path):
    from fpt.training.fitting import fit

    run_dir = tmp_path / "runs" / "xor"
    _finished_run(run_dir, _config("--config", "bit-xor-small", "--protocol", "paper", "--run-dir", str(run_dir)))
    new = _config("--config", "bit-xor-small", "--run-dir", str(run_dir))
    with pytest.raises(FileExistsError, match=rf"{run_dir} holds another run \(protocol: there 'paper', now 'fpt'.*"
                                              rf"--resume would be refused.*--run-dir {run_dir}-2"):
        fit(new)
    same = _config("--config", "bit-xor-small", "--protocol", "paper", "--run-dir", str(run_dir))
    with pytest.raises(FileExistsError, match=rf"already holds a run; pass --resume {run_dir}"):
        fit(same)  # the same run: resuming it is the advice


def test_resume_of_a_paper_run_names_the_protocol_and_what_it_set(tmp_path):
    run_dir = tmp_path / "xor"
    _finished_run(run_dir, _config("--config", "bit-xor-small", "--protocol", "paper", "--run-dir", str(run_dir)))
    args = _parser().parse_args(["fit", "--config", "bit-xor-small", "--resume", str(run_dir)])
    with pytest.raises(ValueError, match=r"protocol: the run has 'paper'.*batch_size: the run has 4.*set by "
                                         r"--protocol paper.*add --protocol paper"):
        resume_config(run_dir, *assemble(args.config, _flags(args)))
    # ... and the advice works: the command with --protocol paper continues the run
    args = _parser().parse_args(["fit", "--config", "bit-xor-small", "--protocol", "paper", "--resume", str(run_dir)])
    assert resume_config(run_dir, *assemble(args.config, _flags(args))).batch_size == 4
