"""How OpenMP threads wait for work on a CPU that other jobs share, set before torch loads.

torch's CPU build runs its intra-op threads (and MKL's and oneDNN's) on GNU OpenMP (libgomp). After
each parallel region a libgomp thread busy-waits for the next one, by default for 300,000 spins
(about 3 ms) before it sleeps. On a quiet machine that saves a wake-up per region; on a machine whose
cores are busy with another job it burns the time that job needed, and both slow down several-fold
(docs/performance.md, "A shared CPU": two 2-thread jobs on 2 cores ran each step 2.7x slower than alone).
``OMP_WAIT_POLICY=PASSIVE`` (no spinning) fixes most of the shared case but costs a quiet run 12-25%.

fpt sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT`, a short spin that costs a quiet run ~10% and cuts a third
of the loss under load (the threads do the rest: fpt.training.callbacks.AdaptiveThreads), when ``import fpt``
runs before ``import torch`` (the ``fpt`` command always does; libgomp reads its environment once,
when torch loads it) and the environment sets neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY`` (yours
win). Child processes (DataLoader workers, sweep trials, SLURM jobs) inherit it. This module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "10000"  # libgomp spins before a waiting thread sleeps (~0.1 ms); measured in docs/performance.md
_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
_state: dict[str, str] = {}


def configure_openmp() -> bool:
    """Set fpt's OpenMP wait default if it can still take effect and nothing is set; True if it was set now."""
    if _state:
        return _state["set"] == "yes"
    if "torch" in sys.modules:
        _state["set"] = "late"  # libgomp has read its environment already
    elif any(name in os.environ for name in _VARIABLES):
        _state["set"] = "yours"
    else:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        _state["set"] = "yes"
    return _state["set"] == "yes"


def openmp_wait() -> str:
    """What governs OpenMP's waiting in this process, in words (fpt bench prints it)."""
    given = ", ".join(f"{n}={os.environ[n]}" for n in _VARIABLES if n in os.environ)
    how = _state.get("set")
    if how == "yes":
        return f"GOMP_SPINCOUNT={SPIN_COUNT} (fpt's default)"
    if how == "late":
        return f"{given or 'libgomp defaults'} (torch was imported before fpt, so fpt set nothing)"
    return f"{given} (set in the environment)" if given else "libgomp defaults"


# -- the cores other processes keep busy ----------------------------------------------------------
# Threads are the other half of a shared CPU: a job that took every core while the machine was quiet
# keeps oversubscribing it once another job starts (docs/performance.md, "A shared CPU": both jobs
# at 2 threads on 2 cores reached 62-80% of the throughput of both at 1 thread). fpt's training loop
# therefore re-reads, every few seconds, how many cores *other* processes use (/proc/stat's busy time
# minus this process's own) and gives itself the rest (fpt.training.callbacks.AdaptiveThreads).

def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_ticks() -> int | None:
    """User + system clock ticks of this process (all its threads), from /proc/self/stat."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        return int(after_name[11]) + int(after_name[12])
    except (OSError, ValueError, IndexError):
        return None


class OtherLoad:
    """How many CPUs other processes kept busy since the last call of :meth:`cpus` (Linux; None elsewhere)."""

    def __init__(self) -> None:
        self.cpus_online = os.cpu_count() or 1
        self._last = (_machine_ticks(), _own_ticks())

    def cpus(self) -> float | None:
        now = (_machine_ticks(), _own_ticks())
        last, self._last = self._last, now
        if None in (now[0], now[1], last[0], last[1]):
            return None
        busy, total = now[0][0] - last[0][0], now[0][1] - last[0][1]
        if total <= 0:
            return None
        others = max(0, busy - (now[1] - last[1]))
        return others / total * self.cpus_online


def threads_beside(other_cpus: float | None, most: int) -> int:
    """Threads for this process when other processes keep ``other_cpus`` CPUs busy: the cores left free, at
    least 1 and at most ``most`` (the default: the physical cores). A core counts as taken from half a
    core's use: a job that sleeps a quarter of the time still spins its core."""
    if other_cpus is None:
        return most
    taken = int(other_cpus + 0.5)
    return max(1, min(most, most - taken))
