"""Run a plan's trials, in parallel processes, each logged to its own file; resume what is unfinished."""

from __future__ import annotations

import os
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable

from fpt.runs.checkpoint import read_results
from fpt.config.files import build_config
from fpt.model.objectives import headline, test_score, val_score
from fpt.runs.rundir import move_aside
from fpt.experiments.plan import Plan, save_plan, trial_state
from fpt.experiments.status import _mark
from fpt.experiments.summary import write_summary
from fpt.base.text import format_metric


def execute_trial(values: dict[str, Any], log_path: str | None = None) -> dict[str, Any]:
    """Run (or resume, or restart) one trial; returns ``{"state", "results" | "error", "seconds"}``.

    Module-level so that worker processes (``--parallel``) can call it.
    """
    from fpt.training.fitting import fit

    run_dir = Path(values["run_dir"])
    state = trial_state(values, run_dir)
    if state == "done":
        return {"state": "done", "results": read_results(run_dir), "seconds": 0.0}
    if state == "restart":
        move_aside(run_dir)  # under the run lock: a folder a live parallel worker is writing is refused, never moved
    start = time.time()
    config = build_config(values)
    log = open(log_path, "a") if log_path else None
    try:
        if log is not None:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {state} {run_dir}\n")
            log.flush()
            with redirect_stdout(log), redirect_stderr(log):
                results = fit(config, resume=state == "resume", enable_progress_bar=False)
        else:
            results = fit(config, resume=state == "resume", enable_progress_bar=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # a failed trial is recorded; the sweep goes on with the others
        if type(err).__name__ == "TrainingInterrupted":
            _mark(log, "interrupted", str(err).splitlines()[0])
            raise
        error = f"{type(err).__name__}: {err}"
        _mark(log, "failed", error)
        return {"state": "failed", "error": error, "seconds": time.time() - start}
    finally:
        if log is not None:
            log.close()
    return {"state": {"new": "ran", "resume": "resumed", "restart": "restarted"}[state], "results": results,
            "seconds": time.time() - start}


def describe_outcome(name: str, outcome: dict[str, Any], where: str = "") -> str:
    """One line for a trial that has ended (the sweep prints it as each trial finishes)."""
    if outcome["state"] in ("failed", "interrupted"):
        return f"{where}{name}: {outcome['state'].upper()} ({outcome['error']})"
    r = outcome["results"]
    metric = headline(r)[0]
    return (f"{where}{name}: {outcome['state']}  val {format_metric(val_score(r), metric)}  "
            f"test {format_metric(test_score(r), metric)} at the best validation "
            f"({format_metric(test_score(r, at='final'), metric)} final)  ({r.get('steps')} steps, {r.get('seconds', 0):.0f} s)")


def _init_worker(threads: int | None) -> None:
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def run_plan(plan: Plan, parallel: int = 1, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the sources, then every trial (skipping finished ones); returns the summary (sweep.json)."""
    save_plan(plan)
    outcomes: dict[str, dict[str, Any]] = {}
    total = len(plan.trials)

    def record(name: str, outcome: dict[str, Any], index: int | None = None) -> None:
        outcomes[name] = outcome
        echo(describe_outcome(name, outcome, f"[{index}/{total}] " if index else ""))
        write_summary(plan, outcomes)

    for name, (values, run_dir) in plan.sources.items():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        outcome = execute_trial(values, str(run_dir.with_name(run_dir.name + ".log")))
        record(f"sources/{name}", outcome)
        if outcome["state"] == "failed":
            raise RuntimeError(f"source {name} failed ({outcome['error']}); its log: {run_dir}.log")
    pending = []
    for i, trial in enumerate(plan.trials, 1):
        trial.run_dir.parent.mkdir(parents=True, exist_ok=True)
        name = f"{trial.setting}/s{trial.seed}"
        if trial_state(trial.values, trial.run_dir) == "done":
            record(name, execute_trial(trial.values), i)
        else:
            pending.append((i, trial, name))
    if parallel <= 1:
        for i, trial, name in pending:
            echo(f"[{i}/{total}] {name}: running (log: {trial.log_path})")
            record(name, execute_trial(trial.values, str(trial.log_path)), i)
    elif pending:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = next((t.values.get("num_threads") for _, t, _ in pending), None)
        pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
        try:
            futures = {pool.submit(execute_trial, t.values, str(t.log_path)): (i, name) for i, t, name in pending}
            echo(f"running {len(futures)} trials, {parallel} at a time (logs: {plan.sweep_dir}/<setting>/s<seed>.log)")
            for future in as_completed(futures):
                i, name = futures[future]
                try:
                    outcome = future.result()
                except Exception as err:
                    outcome = {"state": "failed", "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                record(name, outcome, i)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return write_summary(plan, outcomes)
