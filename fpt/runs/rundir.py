"""Run directories that survive crashes, kills and careless re-runs.

* :class:`RunLock`: ``RUN_DIR/.lock`` names the process writing the run (pid, host, start time);
  a second run on the same directory is refused, a lock left by a dead process on this host is
  taken over (its pid no longer exists), a lock held from another host needs the user to check.
* :func:`prepare_run_dir`: an existing run is never overwritten; ``overwrite=True`` moves it aside
  to ``RUN_DIR.old-<timestamp>`` (nothing is deleted).

Checkpoints themselves (reading, writing, the checks) are :mod:`fpt.runs.checkpoint`; the Lightning
plugin and callbacks that write them, :mod:`fpt.training.callbacks`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from fpt.base.io import write_error

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


def is_stale(owner: dict[str, Any]) -> bool:
    """Whether a lock's owner (what its file says) is certainly gone: a process of this host that no longer
    runs (killed, crashed, machine rebooted), or whose pid now belongs to a later process. A lock of another
    host, or one without a pid, is never stale: fpt cannot check it from here. The one judgement of a lock,
    for :class:`RunLock` and for ``fpt sweep --status`` (:func:`lock_owner`)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    if not _pid_alive(owner["pid"]):
        return True
    started = owner.get("process_start")
    return bool(started) and _process_start(owner["pid"]) not in (None, started)


def lock_owner(run_dir: Path) -> dict[str, Any] | None:
    """The live process that holds ``run_dir``'s lock (its lock file's contents), or None: no lock, an
    unreadable one, or a stale one (:func:`is_stale`). Reads only; takes nothing."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return None if not isinstance(owner, dict) or is_stale(owner) else owner


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
            if is_stale(owner):
                return
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
        me = self._me()
        tmp = self.run_dir / f".lock.{os.getpid()}.tmp"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(me))
        except OSError as err:
            if self.run_dir.is_dir():
                tmp.unlink(missing_ok=True)
            raise write_error(err, tmp if self.run_dir.is_dir() else self.run_dir) from None
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
    """Rename ``run_dir`` to ``<name>.old-<timestamp>[-n]`` (nothing is deleted) and return the new path.

    Under the run's lock: a directory that a live process is writing is refused (:class:`RunLockedError`),
    never moved; the moved directory keeps no lock file."""
    with RunLock(run_dir):
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        os.rename(run_dir, aside)
    (aside / LOCK_NAME).unlink(missing_ok=True)
    return aside


# What a run has written once it reached its first checkpoint: a directory with config.yaml and none of
# these never started training for real (an error or a kill before the first checkpoint), so it is not a run.
STARTED_MARKS = ("checkpoints/last.ckpt", "checkpoints/previous.ckpt", "model.safetensors", "results.json")


def is_run_dir(path: Path) -> bool:
    """A run: ``config.yaml`` and at least a checkpoint (or its results). See :func:`is_unstarted_run`."""
    path = Path(path)
    return (path / "config.yaml").is_file() and any((path / mark).is_file() for mark in STARTED_MARKS)


def is_unstarted_run(path: Path) -> bool:
    """``config.yaml`` but no checkpoint, weights or results: a run that ended before its first checkpoint.
    It holds nothing to resume, and a new run may start in its place (:func:`prepare_run_dir`)."""
    path = Path(path)
    return (path / "config.yaml").is_file() and not is_run_dir(path)


MIN_FREE_BYTES = 1 << 20  # a run writes its config, logs, checkpoints and weights: at least this much free space


def check_writable(run_dir: Path, flag: str = "--run-dir") -> None:
    """Refuse, before anything is built, a run directory that cannot be written: under a regular file, on a
    read-only or (nearly) full file system, or without permission. The message names the path."""
    run_dir = Path(run_dir)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # under a regular file, exists() is False (ENOTDIR) up to the file itself
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {run_dir}: {existing} is a file, not a directory; choose another {flag}")
    try:
        stats = os.statvfs(existing)
    except OSError:
        return
    if stats.f_flag & getattr(os, "ST_RDONLY", 1):
        raise PermissionError(f"{flag} {run_dir}: {existing} is on a read-only file system; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {run_dir}: you have no permission to write in {existing}; choose another {flag}")
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        raise OSError(f"{flag} {run_dir}: the file system holding {existing} is full ({free // 1024} KB free; a run "
                      f"needs at least {MIN_FREE_BYTES // 1024} KB for its config, logs and checkpoints). Free some "
                      f"space or choose another {flag}")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, move: bool = True, config=None) -> Path | None:
    """Check that ``run_dir`` may be written; with ``overwrite``, move an existing run aside.

    ``config`` (the new run's): a run there with other options than these (ones ``--resume`` refuses) is
    refused with the free ``--run-dir`` to type, not with advice to resume it.

    Returns where an old run was moved (``RUN_DIR.old-<timestamp>``), or None. ``move=False`` only
    checks. Move after every option has been checked (the model is built), so a typo never moves
    a run away.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--run-dir {run_dir} exists and is a file, not a directory")
    check_writable(run_dir, "--resume" if resume else "--run-dir")
    if resume:
        return None
    if not run_dir.exists():
        return None
    if is_unstarted_run(run_dir):
        # Ended before its first checkpoint (a late error, a kill): nothing to resume. Its config.yaml alone is
        # replaced by the new run's; anything more it wrote (logs) is moved aside, never deleted.
        if not move:
            return None
        if not _leftovers(run_dir, ignore=("config.yaml", "checkpoints")) and not any(
                (run_dir / "checkpoints").glob("*")):
            return None  # the caller's lock refuses a live run that has not reached its first checkpoint yet
        return move_aside(run_dir)
    if is_run_dir(run_dir):
        other = _other_run(run_dir, config) if config is not None and not overwrite else None
        if other:
            raise FileExistsError(other)
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, --overwrite to move it "
                f"aside (to {run_dir}.old-<timestamp>) and start again, or choose another --run-dir"
            )
        if not move:
            return None
        return move_aside(run_dir)  # refused if a live process is writing it
    leftovers = _leftovers(run_dir)
    if leftovers:
        raise FileExistsError(
            f"{run_dir} exists and is not empty ({', '.join(sorted(leftovers)[:5])}) but holds no fpt run "
            "(no config.yaml); fpt does not write into it. Choose a new or empty --run-dir."
        )
    return None


def free_name(path: Path) -> Path:
    """``path-2``, ``path-3``...: the first that does not exist."""
    i = 2
    while path.with_name(f"{path.name}-{i}").exists():
        i += 1
    return path.with_name(f"{path.name}-{i}")


def _other_run(run_dir: Path, config) -> str | None:
    """Why the run in ``run_dir`` is another run than ``config``'s, with the command to type; None if it is the same."""
    from fpt.config.files import load_config, other_run_options

    try:
        stored = load_config(run_dir / "config.yaml")
    except (OSError, ValueError):
        return None  # an unreadable config: the usual advice (and --resume's own check) apply
    differs = other_run_options(stored, config)
    differs.pop("label", None) if len(differs) > 1 else None  # a label alone is enough, beside others it is noise
    if not differs:
        return None
    order = sorted(differs, key=lambda k: (k != "protocol", k))  # the protocol first: it changes others
    listed = "; ".join(f"{k}: there {differs[k][0]!r}, now {differs[k][1]!r}" for k in order[:6])
    more = f" and {len(differs) - 6} more" if len(differs) > 6 else ""
    return (f"{run_dir} holds another run ({listed}{more}), so --resume would be refused. Give this run its own "
            f"directory: add --run-dir {free_name(run_dir)} (or --overwrite to move that run aside to "
            f"{run_dir}.old-<timestamp> and start this one there)")


def _leftovers(run_dir: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Entries of ``run_dir`` other than lock files and ``ignore``."""
    return [p.name for p in run_dir.iterdir()
            if p.name != LOCK_NAME and not p.name.startswith(".lock.") and p.name not in ignore]
