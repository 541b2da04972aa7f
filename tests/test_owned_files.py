"""Files a user owns are never replaced by fpt's writes (issue 20, class 1): a path that is not a regular
file is refused by name, a sweep directory belongs to one plan, a report onto a full disk leaves no
empty figure behind and names the file."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from pathlib import Path

from fpt.base import io


def test_atomic_write_refuses_a_fifo_and_keeps_it(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(io.WriteError, match=r"pipe\.csv: it is a FIFO \(named pipe\), not a regular file"):
        io.atomic_write_text(fifo, "index,prediction\n")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the user's pipe, not a regular file
    assert not list(tmp_path.glob(".pipe.csv.*"))  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_atomic_write_refuses_a_device_node_and_keeps_it(tmp_path):
    device = tmp_path / "full"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers
    with pytest.raises(io.WriteError, match="a character device, not a regular file"):
        io.atomic_write_bytes(device, b"x")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_atomic_write_through_a_symlink_keeps_the_link(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    io.atomic_write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_predict_refuses_a_fifo_out_before_loading_anything(tmp_path):
    from fpt.results.predict import check_out_path

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"--out .*pipe\.csv is a FIFO \(named pipe\), not a regular file"):
        check_out_path(fifo, tmp_path / "run", tmp_path / "data.npz", overwrite=True)


class _FullDisk:
    """A file on a full file system: it is created, but every write fails with ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch):
    """Every file opened for writing from now on is on a full disk (open() and os.fdopen())."""
    import builtins

    real_open, real_fdopen = builtins.open, os.fdopen

    def opener(real):
        def patched(file, mode="r", *args, **kwargs):
            f = real(file, mode, *args, **kwargs)
            return _FullDisk(f) if any(c in mode for c in "wax+") else f
        return patched

    monkeypatch.setattr(builtins, "open", opener(real_open))
    monkeypatch.setattr(os, "fdopen", opener(real_fdopen))


def test_a_report_onto_a_full_disk_names_the_file_and_leaves_no_empty_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fpt.results import figures as report

    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    path = tmp_path / "curve.png"
    full_disk(monkeypatch)
    with pytest.raises(io.WriteError, match=r"cannot write .*curve\.png: No space left on device; the file system is full"):
        report._save(fig, path)
    assert not path.exists() and not list(tmp_path.iterdir())  # no 0-byte PNG, no temporary file


def test_a_sweep_directory_belongs_to_one_plan(tmp_path, base_file, monkeypatch):
    """--grid init=... and --experiment init share a default name: the second gets its own directory and the
    first's plan, summary and trials stay; an explicit --sweep-dir holding another plan is refused."""
    import json

    from fpt.experiments import plan as sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "init.yaml").write_text("variants:\n  pretrained: {init: pretrained}\n  random: {init: random}\n")
    first = sweep.make_plan(str(base_file), grid={"init": ["pretrained", "random"]})
    sweep.save_plan(first)
    second = sweep.make_plan(str(base_file), experiment=str(tmp_path / "init.yaml"))
    assert first.sweep_dir == tmp_path / "runs" / "sweeps" / "base-init" or first.sweep_dir == Path("runs/sweeps/base-init")
    assert Path(second.sweep_dir) != Path(first.sweep_dir) and Path(second.sweep_dir).name == "base-init-2"
    saved = json.loads((Path(first.sweep_dir) / "plan.json").read_text())
    assert {t["setting"] for t in saved["trials"]} == {"init=pretrained", "init=random"}
    # the same command again finds its own directory, and more seeds extend it (no trial is orphaned)
    assert Path(sweep.make_plan(str(base_file), grid={"init": ["pretrained", "random"]}).sweep_dir) == Path(first.sweep_dir)
    assert Path(sweep.make_plan(str(base_file), grid={"init": ["pretrained", "random"]}, seeds=2).sweep_dir) \
        == Path(first.sweep_dir)
    with pytest.raises(ValueError, match=r"base-init holds another sweep.*init=pretrained/s0, .*not in this one.*"
                                         r"--sweep-dir runs/sweeps/base-init-2"):
        sweep.make_plan(str(base_file), experiment=str(tmp_path / "init.yaml"), sweep_dir="runs/sweeps/base-init")
    with pytest.raises(ValueError, match=r"other settings.*steps: there 4, now 6"):
        sweep.make_plan(str(base_file), grid={"init": ["pretrained", "random"]}, sets={"steps": 6},
                        sweep_dir="runs/sweeps/base-init")
