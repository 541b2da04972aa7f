"""``fpt bench --load N``: the same measurement with N other processes training on the same CPU cores.

Each competitor is a separate process (``python -m fpt.bench.load DIR I``) that builds the ``fast`` path of
the same benchmark (same backbone, shape, batch, thread settings and environment: another fpt job with
fpt's defaults) and runs its training step in a loop. The measured process starts timing once every
competitor has warmed up; a competitor counts the steps it runs while the measured process times its
own, so the table can give every process's step time and the samples/s of all of them together, the
number that says how well a shared machine is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ARGS, _READY, _TIMING, _STOP, _EXIT = "args.json", "ready-{}", "timing", "stop", "exit"


class Competitors:
    """N competing processes: started at once (they load while this process builds its own paths)."""

    def __init__(self, args: argparse.Namespace, n: int):
        self.n = n
        self.dir = Path(tempfile.mkdtemp(prefix="fpt-bench-load-"))
        plain = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))
                 and not k.startswith("_")}
        (self.dir / _ARGS).write_text(json.dumps(plain))
        self.logs = [open(self.dir / f"log-{i}.txt", "w") for i in range(n)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "fpt.bench.load", str(self.dir), str(i), str(os.getpid())],
                                       stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(self.logs)]

    def _check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                text = (self.dir / f"log-{i}.txt").read_text()[-2000:]
                raise RuntimeError(f"fpt bench --load: competing process {i} exited with {p.returncode}:\n{text}")

    def wait_ready(self, timeout: float = 1800) -> None:
        end = time.time() + timeout
        while not all((self.dir / _READY.format(i)).exists() for i in range(self.n)):
            self._check_alive()
            if time.time() > end:
                raise RuntimeError("fpt bench --load: the competing processes did not warm up in time")
            time.sleep(0.2)

    def start_timing(self) -> None:
        (self.dir / _TIMING).touch()

    def stop_timing(self) -> None:
        (self.dir / _STOP).touch()

    def finish(self) -> list[dict[str, Any]]:
        """End the competitors; their step times while this process was timing its own."""
        (self.dir / _EXIT).touch()
        out = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
            path = self.dir / f"result-{i}.json"
            out.append(json.loads(path.read_text()) if path.exists() else {"error": f"exit {p.returncode}"})
        self.close()
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


def competitor(directory: str, index: int, parent: int) -> None:
    """One competing process: the fast path's training step in a loop (see the module doc), until the measuring
    process ``parent`` says so or is gone."""
    import torch

    from fpt.model import fastpath
    from fpt.bench.paths import StepPath, spec_and_batch

    d = Path(directory)
    args = argparse.Namespace(**json.loads((d / _ARGS).read_text()))
    torch.set_num_threads(fastpath.cpu_threads(getattr(args, "load_threads", None) or args.num_threads))
    device = torch.device("cpu")
    spec, batch, _, objective = spec_and_batch(args, device)
    path = StepPath("fast", args, device, spec, batch, objective)
    (d / _READY.format(index)).touch()
    times: list[float] = []
    while not (d / _EXIT).exists() and os.getppid() == parent:
        timing = (d / _TIMING).exists() and not (d / _STOP).exists()
        t0 = time.perf_counter()
        path.step()
        elapsed = time.perf_counter() - t0
        if timing and not (d / _STOP).exists():  # the whole step inside the measured process's timing
            times.append(elapsed)
    result = {"steps": len(times), "threads": torch.get_num_threads()}
    if times:
        result.update(step_ms=statistics.median(times) * 1000, samples_per_s=args.batch_size / statistics.median(times))
    (d / f"result-{index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    competitor(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
