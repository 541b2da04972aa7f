"""fpt sweep --status: what each trial of a sweep is doing, read from its run dir and log."""

from __future__ import annotations

import json
import os
from pathlib import Path
import time
from typing import Any

from fpt.runs.checkpoint import checkpoint_step, results_or_none
from fpt.model.objectives import headline, test_score, val_score
from fpt.experiments.plan import Trial, load_plan
from fpt.base.text import format_metric
from fpt.runs.rundir import lock_owner

FAILED_MARK = "failed: "  # after "== <time> " in a trial's log: the trial ended with this error


INTERRUPTED_MARK = "interrupted: "  # stopped by a signal after a checkpoint (resumable)


def _mark(log, what: str, text: str) -> None:
    """The last line of a trial's log says how it ended (``fpt sweep --status`` reads it)."""
    if log is not None:
        line = " ".join(text.split())  # one line
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}: {line}\n")
        log.flush()


# -- the summary --------------------------------------------------------------------------------
def _tail(path: Path, size: int = 8192) -> list[str]:
    """The last lines of a (possibly large) log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def logged_outcome(log_path: Path) -> dict[str, Any]:
    """How the last attempt of a trial ended, from its log: ``{"state": "failed" | "interrupted", "error"}``, or {}."""
    for line in reversed(_tail(log_path)):
        if line.startswith("== "):
            words = line.split(" ", 3)  # "==", date, time, rest
            rest = words[3] if len(words) > 3 else ""
            if rest.startswith(FAILED_MARK):
                return {"state": "failed", "error": rest[len(FAILED_MARK):]}
            if rest.startswith(INTERRUPTED_MARK):
                return {"state": "interrupted", "error": rest[len(INTERRUPTED_MARK):]}
            return {}  # the header of an attempt that has not ended (running, or killed without a word)
    return {}


def _last_output_line(log_path: Path) -> str | None:
    """The last line a trial printed before fpt's own end-of-attempt line."""
    lines = [ln for ln in _tail(log_path) if ln.strip()]
    while lines and lines[-1].startswith("== "):
        lines.pop()
    return lines[-1].strip() if lines else None


def trial_status(trial: Trial) -> dict[str, Any]:
    """``{"status": finished | running | failed | interrupted | pending, "detail": ...}`` from the files alone."""
    run_dir = trial.run_dir
    results = results_or_none(run_dir)
    if results is not None:
        metric = headline(results)[0]
        return {"status": "finished", "detail": f"val {format_metric(val_score(results), metric)}  test "
                                                f"{format_metric(test_score(results), metric)} ({results.get('steps')} steps)"}
    owner = lock_owner(run_dir)
    if owner is not None:
        step = checkpoint_note(run_dir)
        return {"status": "running", "detail": f"pid {owner.get('pid')} on {owner.get('host')} since "
                                               f"{owner.get('started', '?')}{step}"}
    outcome = logged_outcome(trial.log_path)
    if outcome.get("state") == "failed":
        last = _last_output_line(trial.log_path)
        detail = outcome["error"] + (f" | last log line: {last}" if last and last not in outcome["error"] else "")
        return {"status": "failed", "detail": detail}
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return {"status": "interrupted", "detail": "resumable" + checkpoint_note(run_dir)}
    if run_dir.exists() and any(run_dir.iterdir()):
        return {"status": "interrupted", "detail": "before its first checkpoint: restarts from scratch"}
    return {"status": "pending", "detail": ""}


def checkpoint_note(run_dir: Path) -> str:
    """", last checkpoint at step N" (the checkpoint holds trained parameters only: small), or ""."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    step = checkpoint_step(ckpt) if ckpt.exists() else None  # None also for a file being written
    return f", last checkpoint at step {step}" if step is not None else ""


STATUSES = ("finished", "running", "failed", "interrupted", "pending")


def sweep_status(sweep_dir: str | Path) -> dict[str, Any]:
    """Every trial's status (see :func:`trial_status`) and the counts, from the sweep directory's files."""
    plan = load_plan(sweep_dir)
    jobs = _submitted_jobs(plan.sweep_dir)
    rows = []
    for name, (values, run_dir) in plan.sources.items():
        trial = Trial(None, {}, 0, values, f"sources/{name}", run_dir)
        rows.append({"trial": f"sources/{name}", **trial_status(trial)})
    for t in plan.trials:
        rows.append({"trial": f"{t.setting}/s{t.seed}", **trial_status(t)})
    for row in rows:
        if row["status"] in ("pending", "interrupted") and row["trial"] in jobs:
            row["detail"] = (row["detail"] + "; " if row["detail"] else "") + f"submitted as SLURM job {jobs[row['trial']]}"
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    return {"sweep_dir": str(plan.sweep_dir), "trials": rows, "counts": counts}


def format_status(status: dict[str, Any]) -> str:
    counts = status["counts"]
    lines = [f"{status['sweep_dir']}: {len(status['trials'])} trials: "
             + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    width = max((len(r["trial"]) for r in status["trials"]), default=0)
    for r in status["trials"]:
        lines.append(f"  {r['trial']:<{width}}  {r['status']:<11}  {r['detail']}".rstrip())
    return "\n".join(lines)


JOBS_FILE = "slurm/jobs.json"  # trial name -> SLURM job id, written by fpt.experiments.slurm


def _submitted_jobs(sweep_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads((sweep_dir / JOBS_FILE).read_text()))
    except (OSError, ValueError):
        return {}
