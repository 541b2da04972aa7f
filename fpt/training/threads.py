"""Adapt a CPU run's thread count to what the other processes on the machine leave free."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from fpt.runs.health import say

ADAPT_EVERY_S = 10.0  # seconds between two looks at the other processes' CPU use


class AdaptiveThreads(Callback):
    """CPU threads that follow the cores other processes leave free (``fpt.base.cpu``: why).

    Every ``every_s`` seconds of training, between two steps, this reads how many CPUs other processes
    used since the last look and sets ``torch.set_num_threads`` to the cores left (1 ..
    ``most``). Only when the run chose its threads itself (no ``--num-threads``, ``$OMP_NUM_THREADS``
    or ``$SLURM_CPUS_PER_TASK``). Each change is printed and kept in ``changes`` (step, threads,
    other CPUs busy) for results.json. Thread counts change no result: the same run computes the
    same numbers up to floating-point summation order.
    """

    def __init__(self, most: int, every_s: float | None = None):
        from fpt.base.cpu import OtherLoad

        self.most = int(most)
        self.every_s = ADAPT_EVERY_S if every_s is None else float(every_s)
        self.load = OtherLoad()
        self.next_look = time.monotonic() + self.every_s
        self.changes: list[dict[str, Any]] = []
        self.start_threads: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_threads = torch.get_num_threads()

    def look(self, step: int) -> None:
        from fpt.base.cpu import threads_beside

        others = self.load.cpus()
        threads = threads_beside(others, self.most)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append({"step": step, "threads": threads, "other_cpus_busy": round(others or 0.0, 2)})
            say(f"fpt: other processes keep {others:.1f} CPUs busy: {threads} thread(s) from step {step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + self.every_s
            self.look(int(trainer.global_step))
