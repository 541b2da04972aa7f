"""Run directories that survive crashes, kills and careless re-runs.

* :class:`RunLock`: ``RUN_DIR/.lock`` names the process writing the run (pid, host, start time);
  a second run on the same directory is refused, a lock left by a dead process on this host is
  taken over (its pid no longer exists), a lock held from another host needs the user to check.
* :func:`prepare_run_dir`: an existing run is never overwritten; ``overwrite=True`` moves it aside
  to ``RUN_DIR.old-<timestamp>`` (nothing is deleted).
* :class:`AtomicCheckpointIO`: Lightning writes checkpoints through this plugin: serialised in
  memory, written to a temporary file in the same directory, fsync'ed, renamed over the old file.
  (Lightning's own ``_atomic_save`` goes through an fsspec transaction that stages the file in
  ``/tmp`` and *moves* it: a copy, not a rename, when ``/tmp`` is another file system.)
* :func:`read_checkpoint`: loads a resume checkpoint with ``weights_only=True`` and turns a
  truncated, corrupted or foreign file into an error that names it and lists the alternatives.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fpt.io import atomic_write_bytes

LOCK_NAME = ".lock"


# -- locking ------------------------------------------------------------------------------------
class RunLockedError(RuntimeError):
    """Another live process is writing the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (boot id + start time in clock ticks; Linux), or None if unknown.

    A lock stores its writer's: a live process with the same pid but another start is a later
    process that reused the pid, so the lock is stale."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22; the name (field 2) may hold spaces
    except (OSError, IndexError):
        return None


class RunLock:
    """An exclusive lock on a run directory: ``with RunLock(run_dir): ...``.

    The lock file is created atomically with its contents (written to a temporary file, then
    hard-linked to ``.lock``, which fails if the lock exists), so it is never seen half-written.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False
        self.took_over: dict[str, Any] | None = None  # the stale owner, when one was replaced

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _judge(self, owner: dict[str, Any], me: dict[str, Any]) -> None:
        """Returns if ``owner`` is stale (its process is gone); raises RunLockedError otherwise."""
        if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int):
            if owner["pid"] == me["pid"]:
                raise RunLockedError(f"{self.run_dir} is already locked by this process")
            if not _pid_alive(owner["pid"]):
                return  # stale: the process that wrote it is gone (killed, crashed, machine rebooted)
            started = owner.get("process_start")
            if started and _process_start(owner["pid"]) not in (None, started):
                return  # stale: that pid now belongs to a later process
            raise RunLockedError(
                f"{self.run_dir} is in use by another fpt run (pid {owner['pid']} on this host, started "
                f"{owner.get('started', '?')}). Two runs must not write one directory: wait for it to "
                f"finish, stop it (kill {owner['pid']}; it saves a checkpoint), or choose another --run-dir."
            )
        if owner == {}:
            raise RunLockedError(
                f"{self.path} exists but is unreadable, so fpt cannot tell whether another run is using "
                f"{self.run_dir}. If no run is, delete {self.path} and try again."
            )
        raise RunLockedError(
            f"{self.run_dir} is locked by pid {owner.get('pid')} on host {owner.get('host')!r} (started "
            f"{owner.get('started', '?')}); fpt cannot check a process on another host. If that run is no "
            f"longer running, delete {self.path} and try again."
        )

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "process_start": _process_start(os.getpid())}

    def check(self) -> None:
        """Raise now if a live run holds the lock (before slow work); acquire() still decides."""
        owner = self._owner()
        if owner is not None:
            self._judge(owner, self._me())

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = self._me()
        tmp = self.run_dir / f".lock.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                try:
                    inode = self.path.stat().st_ino
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                owner = self._owner()
                if owner is None:
                    continue
                self._judge(owner, me)  # raises unless the owner is dead
                try:  # remove the stale lock, unless another process replaced it meanwhile
                    if self.path.stat().st_ino == inode:
                        self.path.unlink()
                        self.took_over = owner
                except FileNotFoundError:
                    pass
            raise RunLockedError(f"could not lock {self.run_dir}: {self.path} keeps changing; is another run starting?")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- the run directory ----------------------------------------------------------------------------
def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<name>.old-<timestamp>[-n]`` (nothing is deleted); returns the new path."""
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.rename(run_dir, aside)
    return aside


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, move: bool = True) -> Path | None:
    """Check that ``run_dir`` may be written; with ``overwrite``, move an existing run aside.

    Returns where an old run was moved (``RUN_DIR.old-<timestamp>``), or None. ``move=False`` only
    checks. Move after every option has been checked (the model is built), so a typo never moves
    a run away.
    """
    run_dir = Path(run_dir)
    if resume:
        return None
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        raise FileExistsError(f"--run-dir {run_dir} exists and is a file, not a directory")
    if is_run_dir(run_dir):
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, --overwrite to move it "
                f"aside (to {run_dir}.old-<timestamp>) and start again, or choose another --run-dir"
            )
        if not move:
            return None
        with RunLock(run_dir):  # refuse to move a run that a live process is writing
            aside = move_aside(run_dir)
        (aside / LOCK_NAME).unlink(missing_ok=True)
        return aside
    leftovers = [p.name for p in run_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith(".lock.")]
    if leftovers:
        raise FileExistsError(
            f"{run_dir} exists and is not empty ({', '.join(sorted(leftovers)[:5])}) but holds no fpt run "
            "(no config.yaml); fpt does not write into it. Choose a new or empty --run-dir."
        )
    return None


# -- checkpoints ------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO plugin, writing atomically (see the module doc) and reading with
    :func:`read_checkpoint` (``weights_only=True``, clear errors for broken files)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        save_checkpoint_file(checkpoint, Path(path), keep_previous=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return read_checkpoint(Path(path))


PREVIOUS_NAME = "previous.ckpt"


def save_checkpoint_file(checkpoint: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``: never a half-written checkpoint.

    ``keep_previous``: the checkpoint being replaced stays as ``previous.ckpt`` beside it (hard link,
    so ``path`` exists at every moment), a fallback should ``path`` ever be damaged.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    if keep_previous and path.is_file():
        previous = path.with_name(PREVIOUS_NAME)
        staging = path.with_name(f".{PREVIOUS_NAME}.{os.getpid()}.tmp")
        try:
            staging.unlink(missing_ok=True)
            os.link(path, staging)
            os.replace(staging, previous)
        except OSError:  # no hard links on this file system: keep going without the fallback copy
            staging.unlink(missing_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def earlier_checkpoints(path: Path) -> list[Path]:
    """Other checkpoints of the same run (``checkpoints/step*.ckpt``...), newest first."""
    folder = Path(path).parent
    if not folder.is_dir():
        return []
    others = [p for p in folder.glob("*.ckpt") if p.name != Path(path).name]
    return sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


def _what_to_do(path: Path) -> str:
    others = earlier_checkpoints(path)
    run_dir = path.parent.parent
    if others:
        listing = ", ".join(str(p) for p in others[:5])
        return (f" Earlier checkpoints of this run: {listing}. To resume from one, copy it over the broken "
                f"file (cp {others[0]} {path}) and run fpt fit --resume {run_dir}.")
    return (f" There is no earlier checkpoint in {path.parent}; start the run again with "
            f"fpt fit --config {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite (the old run is moved aside).")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A resume checkpoint, loaded with ``weights_only=True`` (no pickled code), checked for completeness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist." + _what_to_do(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip / unpickling errors of every kind for truncated or foreign files
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if "Weights only load failed" in str(err):
            reason = "it holds pickled Python objects that fpt does not load (weights_only=True)"
        raise ValueError(f"checkpoint {path} cannot be read: it is truncated, corrupted or not a checkpoint "
                         f"({reason})." + _what_to_do(path)) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (got {type(checkpoint).__name__})."
                         + _what_to_do(path))
    meta = checkpoint.get("fpt")
    if not isinstance(meta, dict) or meta.get("format") != "fpt-1":
        raise ValueError(f"checkpoint {path} is not an fpt checkpoint (no 'fpt' section of format fpt-1); "
                         "fpt resumes only from checkpoints it wrote." + _what_to_do(path))
    missing = [k for k in ("state_dict", "optimizer_states", "loops", "global_step") if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete (no {', '.join(missing)}): it cannot resume training."
                         + _what_to_do(path))
    return checkpoint


# -- task shape ---------------------------------------------------------------------------------------
def spec_dict(spec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def check_task_spec(saved: dict[str, Any] | None, current, where: str) -> None:
    """A checkpoint's task shape must match the task it is loaded for (skipped for checkpoints without one)."""
    if not saved:
        return
    now = spec_dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in now if k in saved and saved[k] != now[k]]
    if diffs:
        raise ValueError(f"{where} was trained for a task of another shape: " + "; ".join(diffs)
                         + ". Use the task options (-o KEY=VALUE) and dataset it was trained with.")


class FlushLogsOnCheckpoint(Callback):
    """Writes the loggers' buffered rows (metrics.csv) whenever a checkpoint is taken, so a run killed
    after a checkpoint still has every row up to it (a resumed run re-logs only the later steps)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()


class ResumeCheckpoint(Callback):
    """Writes ``checkpoints/last.ckpt``, the resume state: after every validation inside ``fit`` (every
    ``eval_every`` steps) and after the final step when no validation follows it.

    Why not Lightning's ModelCheckpoint: it saves at the end of the training batch, *before* that
    step's validation, and skips its validation-end save (already saved at this step). A run killed
    after that checkpoint resumes without the validation's effects (best accuracy, first step at the
    target, early-stopping and chance-level counters) and Lightning does not run it again. Saved after
    the validation, a checkpoint includes it; killed during it, the run resumes from the previous
    checkpoint and repeats the (deterministic) steps. Its ``on_train_end`` would also overwrite a
    stop-on-signal checkpoint with a finished-epoch state that resumes with logged steps one late.

    Add it after every callback whose state changes at a validation (its checkpoint includes them).
    """

    def __init__(self, path: Path, eval_every: int):
        self.path = Path(path)
        self.eval_every = eval_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if trainer.max_steps > 0 and step >= trainer.max_steps and step % self.eval_every != 0:
            trainer.save_checkpoint(self.path, weights_only=False)  # final step, no validation after it

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not fpt test / trainer.validate
            return
        trainer.save_checkpoint(self.path, weights_only=False)
