"""``fpt sweep --launcher slurm``: every pending trial one task of a SLURM job array, submitted through submitit.

::

    fpt sweep listops --experiment rothermel --launcher slurm --slurm-partition gpu --slurm-gpus-per-task 1 \\
        --slurm-cpus-per-task 8 --slurm-time 4:00:00 --slurm-array-parallelism 16 --slurm-setup "module load cuda"
    fpt sweep --status runs/sweeps/listops-rothermel          # pending / running / finished / failed, from the files
    fpt sweep runs/sweeps/listops-rothermel --summarize       # sweep.json and sweep.md rebuilt

What runs where:

* here: the plan (every trial's config is checked before anything is submitted), ``SWEEP_DIR/plan.json``,
  the submission (submitit writes the sbatch script; fpt writes none), the job ids
  (``SWEEP_DIR/slurm/jobs.json``); then, unless ``--no-wait``, a poll every few seconds (``squeue`` and
  the trials' files) that prints each trial as it ends and rewrites sweep.md. Stopping this command
  (Ctrl-C) leaves the jobs running;
* in each job: :func:`fpt.experiments.execute.execute_trial`, the function the local launcher calls (a finished trial
  is skipped, an interrupted one resumed from its checkpoint, a partial one restarted), its output in
  ``SWEEP_DIR/<setting>/s<seed>.log``; then sweep.json and sweep.md are rewritten from the files.
  submitit's own logs are in ``SWEEP_DIR/slurm/<job id>/``.

Experiments with *sources* (runs trained before the trials) submit them first, and the trials' array
waits for them (``--dependency=afterok``).

Time limits and preemption: submitit asks SLURM for ``SIGUSR2`` ``--slurm-signal-delay`` seconds (90)
before the time limit (``sbatch --signal=USR2@90``). fpt's training loop takes ``SIGUSR2`` as it takes
``SIGTERM`` (:class:`fpt.training.callbacks.GracefulStop`): the current step finishes, ``checkpoints/last.ckpt``
is written and training stops; the job then hands the signal back to submitit, which requeues it
(``scontrol requeue``; at most ``--slurm-max-requeue`` times for time limits, always for preemption)
and the requeued job resumes the trial from that checkpoint. A ``SIGTERM`` alone (``scancel``, or a
time limit without the warning) also checkpoints; the trial is then reported interrupted, and
running the sweep command again resumes it.

``--launcher submitit-local`` runs the same code path with submitit's local executor (processes on
this machine, no scheduler): for machines without SLURM, and the tests where SLURM cannot be installed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fpt.base.io import atomic_write_json
from fpt.experiments.execute import describe_outcome, execute_trial
from fpt.experiments.plan import Plan, load_plan, save_plan, trial_state
from fpt.experiments.status import JOBS_FILE, _submitted_jobs
from fpt.experiments.summary import write_summary

LAUNCHERS = ("local", "slurm", "submitit-local")
# The signal submitit asks SLURM to send before the time limit (and on preemption): fpt checkpoints on it.
REQUEUE_SIGNAL_NAME = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")


@dataclass
class SlurmOptions:
    """The ``--slurm-*`` flags of ``fpt sweep`` (each a submitit parameter)."""

    partition: str | None = None  # sbatch --partition (default: the cluster's default partition)
    time: str = "60"  # the time limit of each trial's job: minutes, or [D-]HH:MM[:SS] as sbatch reads it
    cpus_per_task: int | None = None  # CPUs per trial (default: --threads, else the cluster's default)
    gpus_per_task: int | None = None  # GPUs per trial
    array_parallelism: int = 256  # trials running at once (the job array's %N)
    setup: list[str] = field(default_factory=list)  # shell lines run before each trial (module load ..., source ...)
    signal_delay: int = 90  # seconds before the time limit at which SIGUSR2 asks the trial to checkpoint
    max_requeue: int = 3  # requeues after a time limit (preemptions are always requeued)
    sbatch: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "proj"}
    cluster: str = "slurm"  # slurm, or local (submitit's local executor: the same path without a scheduler)
    poll_seconds: float = 2.0  # how often the waiting command looks at the queue and the files


def time_minutes(text: str | int) -> int:
    """A SLURM time limit in whole minutes: ``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(f"--slurm-time {value!r}: give minutes (90) or [D-]HH:MM[:SS] (1:30:00, 2-00:00)")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # minutes
        seconds = int(a) * 60
    if seconds <= 0:
        raise ValueError(f"--slurm-time {value!r} must be positive")
    return -(-seconds // 60)


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError("--launcher slurm needs submitit: pip install 'fpt[slurm]' (or pip install submitit)") from None
    return submitit


def make_executor(folder: Path, options: SlurmOptions, name: str):
    """A submitit executor for the trials' jobs: logs in ``folder/<job id>/``."""
    submitit = _submitit()
    extra = {"slurm_max_num_timeout": options.max_requeue} if options.cluster == "slurm" else {}
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=options.cluster, **extra)
    params: dict[str, Any] = {"timeout_min": time_minutes(options.time), "name": name}
    if options.cluster == "slurm":
        params.update(slurm_array_parallelism=options.array_parallelism, slurm_signal_delay_s=options.signal_delay)
        if options.cpus_per_task:
            params["slurm_cpus_per_task"] = options.cpus_per_task
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.gpus_per_task:
            params["slurm_gpus_per_task"] = options.gpus_per_task
        if options.setup:
            params["slurm_setup"] = list(options.setup)
        if options.sbatch:
            params["slurm_additional_parameters"] = dict(options.sbatch)
    executor.update_parameters(**params)
    return executor


class TrialJob:
    """What each job runs: one trial (:func:`fpt.experiments.execute.execute_trial`), then the sweep's summary.

    submitit calls :meth:`checkpoint` when it requeues the job (time limit, preemption): the requeued job
    runs the same trial again, which resumes it from ``checkpoints/last.ckpt``.
    """

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self, name: str, values: dict[str, Any], log_path: str) -> dict[str, Any]:
        from fpt.runs.health import TrainingInterrupted

        job = os.environ.get("SLURM_ARRAY_JOB_ID", "")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job and "SLURM_ARRAY_TASK_ID" in os.environ \
            else os.environ.get("SLURM_JOB_ID", "local")
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job} on {socket.gethostname()}"
                      f" (restart {os.environ.get('SLURM_RESTART_COUNT', '0')})\n")
        try:
            outcome = execute_trial(values, log_path)
        except TrainingInterrupted as stop:
            if stop.signum == getattr(signal, "SIG" + REQUEUE_SIGNAL_NAME, None):
                # The checkpoint is written; submitit's handler (back in place now that training has ended)
                # calls checkpoint() below, requeues this job (scontrol requeue) and exits.
                signal.raise_signal(stop.signum)
            outcome = {"state": "interrupted", "error": str(stop).splitlines()[0], "seconds": 0.0}
        self.summarize()
        return outcome

    def summarize(self) -> None:
        try:
            write_summary(load_plan(self.sweep_dir))
        except (OSError, ValueError) as err:  # the trial's own results are written; the summary can be rebuilt
            print(f"fpt: could not rewrite the sweep's summary ({err}); fpt sweep {self.sweep_dir} --summarize",
                  flush=True)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same trial again (fpt resumes it from its last checkpoint)."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _queued(job_ids: list[str]) -> set[str] | None:
    """Which of ``job_ids`` SLURM still has (pending, running, requeued...), from ``squeue``; None if unknown."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "--jobs=" + ",".join(arrays)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return set() if "Invalid job id" in out.stderr else None  # every job has left the queue, or squeue failed
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _outcome(job) -> dict[str, Any]:
    """What a finished job returned (execute_trial's outcome), or its error."""
    try:
        return job.result()
    except Exception as err:  # the job raised, or was not requeued again (submitit's messages)
        text = str(err).strip().splitlines()
        last = next((ln for ln in reversed(text) if ln.strip()), type(err).__name__)
        state = "interrupted" if "not requeued" in str(err) else "failed"
        return {"state": state, "error": f"{last.strip()} (job {job.job_id}; logs: {job.paths.stderr})", "seconds": 0.0}


def wait_for(jobs: dict[str, Any], options: SlurmOptions, on_end: Callable[[str, dict[str, Any]], None]) -> None:
    """Poll until every job has ended; ``on_end(name, outcome)`` as each does."""
    remaining = dict(jobs)
    gone: dict[str, int] = {}
    while remaining:
        queued = _queued([job.job_id for job in remaining.values()]) if options.cluster == "slurm" else None
        for name, job in list(remaining.items()):
            if job.paths.result_pickle.exists() or (options.cluster != "slurm" and job.done()):
                del remaining[name]
                on_end(name, _outcome(job))
            elif queued is not None and job.job_id not in queued:
                gone[name] = gone.get(name, 0) + 1
                if gone[name] >= 3:  # left the queue without a result, three polls running: killed
                    del remaining[name]
                    on_end(name, {"state": "failed", "seconds": 0.0,
                                  "error": f"SLURM job {job.job_id} ended without a result (cancelled, out of memory, "
                                           f"or a node failure?); its logs: {job.paths.stderr}"})
        if remaining:
            time.sleep(options.poll_seconds)


def _record_jobs(sweep_dir: Path, ids: dict[str, str]) -> None:
    atomic_write_json(sweep_dir / JOBS_FILE, {**_submitted_jobs(sweep_dir), **ids})


def launch(plan: Plan, options: SlurmOptions, wait: bool = True, echo: Callable[[str], None] = print
           ) -> dict[str, Any] | None:
    """Submit every unfinished source and trial of ``plan``; with ``wait``, follow them to the end and return
    the summary (sweep.json), else return None once they are submitted."""
    root = plan.sweep_dir
    save_plan(plan)
    sources = [(f"sources/{name}", values, str(run_dir) + ".log") for name, (values, run_dir) in plan.sources.items()
               if trial_state(values, run_dir) != "done"]
    trials = [(f"{t.setting}/s{t.seed}", t.values, str(t.log_path)) for t in plan.trials
              if trial_state(t.values, t.run_dir) != "done"]  # raises for a directory with other settings
    for name, values, _ in sources + trials:
        if int(values.get("devices") or 1) * int(values.get("num_nodes") or 1) > 1:
            raise ValueError(f"{name}: trials with several processes (devices x num_nodes > 1) cannot be launched "
                             "as sweep jobs yet; run them with sbatch + srun (docs/distributed.md)")
        Path(values["run_dir"]).parent.mkdir(parents=True, exist_ok=True)
    if not (sources or trials):
        echo(f"every trial of {root} has finished: nothing to submit")
        return write_summary(plan)
    executor = make_executor(root / "slurm", options, name=f"fpt-{root.name}")
    job = TrialJob(str(root))
    submitted: dict[str, Any] = {}

    def submit(batch: list[tuple[str, dict[str, Any], str]]) -> list:
        jobs = executor.map_array(job, [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch])
        submitted.update({b[0]: j for b, j in zip(batch, jobs)})
        _record_jobs(root, {b[0]: j.job_id for b, j in zip(batch, jobs)})
        return jobs

    where = "SLURM" if options.cluster == "slurm" else "submitit's local executor"
    if sources:
        source_jobs = submit(sources)
        echo(f"submitted {len(sources)} source run(s) to {where}: job {source_jobs[0].job_id.split('_')[0]}")
        if options.cluster == "slurm":  # the trials start once every source has finished
            executor.update_parameters(slurm_additional_parameters={
                **options.sbatch, "dependency": f"afterok:{source_jobs[0].job_id.split('_')[0]}"})
        else:
            _wait_sources(dict(zip([s[0] for s in sources], source_jobs)), options, echo)
    if trials:
        trial_jobs = submit(trials)
        echo(f"submitted {len(trials)} of {len(plan.trials)} trials to {where} as job array "
             f"{trial_jobs[0].job_id.split('_')[0]} (logs: {root}/<setting>/s<seed>.log, submitit's: {root}/slurm)")
    write_summary(plan)
    if not wait:
        echo(f"not waiting: follow them with  fpt sweep --status {root}  (sweep.md is rewritten as trials end)")
        return None
    echo(f"waiting for them (Ctrl-C stops waiting, not the jobs; fpt sweep --status {root} shows where they are)")
    outcomes: dict[str, dict[str, Any]] = {}
    total = len(plan.trials)
    index = {f"{t.setting}/s{t.seed}": i for i, t in enumerate(plan.trials, 1)}

    def ended(name: str, outcome: dict[str, Any]) -> None:
        outcomes[name] = outcome
        echo(describe_outcome(name, outcome, f"[{index[name]}/{total}] " if name in index else ""))
        if name.startswith("sources/") and outcome["state"] in ("failed", "interrupted"):
            _cancel([j.job_id for n, j in submitted.items() if not n.startswith("sources/")], options)
            raise RuntimeError(f"source {name} did not finish ({outcome['error']}); the trials that needed it were "
                               f"cancelled. Its log: {root / name}.log")
        write_summary(plan, outcomes)

    wait_for({n: j for n, j in submitted.items() if options.cluster == "slurm" or not n.startswith("sources/")},
             options, ended)
    return write_summary(plan, outcomes)


def _wait_sources(jobs: dict[str, Any], options: SlurmOptions, echo: Callable[[str], None]) -> None:
    """Without a scheduler (no dependencies): wait for the sources before submitting the trials."""
    def ended(name: str, outcome: dict[str, Any]) -> None:
        echo(describe_outcome(name, outcome))
        if outcome["state"] in ("failed", "interrupted"):
            raise RuntimeError(f"source {name} did not finish ({outcome['error']})")

    wait_for(jobs, options, ended)


def _cancel(job_ids: list[str], options: SlurmOptions) -> None:
    if options.cluster == "slurm" and job_ids:
        subprocess.run(["scancel", *sorted({j.split("_")[0] for j in job_ids})], capture_output=True, timeout=60)
