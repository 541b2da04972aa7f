"""How OpenMP threads wait for work on a CPU that other jobs share, set before torch loads.

torch's CPU build runs its intra-op threads (and MKL's and oneDNN's) on GNU OpenMP (libgomp). After
each parallel region a libgomp thread busy-waits for the next one, by default for 300,000 spins
(about 3 ms) before it sleeps. On a quiet machine that saves a wake-up per region; on a machine whose
cores are busy with another job it burns the time that job needed, and both slow down several-fold
(docs/performance.md, "A shared CPU": two 2-thread jobs on 2 cores ran 5x slower than alone).
``OMP_WAIT_POLICY=PASSIVE`` (no spinning) fixes the shared case but costs a quiet run ~25%.

fpt sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT`, a short spin that keeps nearly all of the quiet speed
and degrades gracefully under load, when ``import fpt`` runs before ``import torch`` (the ``fpt``
command always does; libgomp reads its environment once, when torch loads it) and the environment
sets neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY`` (yours win). Child processes (DataLoader
workers, sweep trials, SLURM jobs) inherit it. This module imports nothing heavy.
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
