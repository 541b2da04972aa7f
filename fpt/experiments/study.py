"""``fpt study FILE``: one question ("does pretraining help here?") asked of many problems at once.

::

    fpt study offline --threads 1                 # a shipped study (fpt/presets/studies/offline.yaml)
    fpt study my-study.yaml --parallel 2          # your own file
    fpt study offline --dry-run                   # every trial and its state; runs nothing
    fpt study offline --status                    # trials finished / left, from the files
    fpt study offline --report --out docs/reports/study     # the statistics (fpt report STUDY_DIR does the same)

A **study** file names

* ``problems``: name -> a shipped preset (``{preset: timeseries-gunpoint-small}``) with optional overrides
  (``{preset: bit-xor-small, steps: 200}``), or a config of its own (``{task: array, task_options: {...}}``);
* ``arms``: name -> option overrides (``{backbone: minilm-l6, layers: null, init: random}``): each arm is
  applied to every problem (an arm's keys win over the problem's);
* ``pairs``: the arm pairs to test against each other (``[minilm-pretrained, minilm-random]``, first minus
  second); by default every pair;
* ``seeds`` (N: seeds 0..N-1, or a list) and ``lr`` (the learning-rate grid);
* ``set``: options for every problem unless the problem sets them (e.g. ``steps: 100``).

Each problem is an ordinary sweep (:mod:`fpt.experiments`: the arms are its experiment's variants, ``lr`` its grid)
in ``STUDY_DIR/<problem>/``: its trials are run directories ``<arm>_lr=<lr>/s<seed>/``, its ``plan.json``,
``sweep.json`` and ``sweep.md`` are the sweep's, and each (problem, arm)'s learning rate is chosen there on
validation only (:func:`fpt.model.objectives.better` over the seeds' means). ``STUDY_DIR/study.json`` records the
study, so that ``fpt report STUDY_DIR`` needs nothing else. The default ``STUDY_DIR`` is
``runs/studies/<study name>``.

**Order.** Trials run so that comparable units finish first: seed by seed; within a seed, problem by
problem in the file's order (put the cheap ones first); within a problem every arm at every learning
rate. Stopped at any point, the study has every arm of a prefix of the problems at the first seeds.

**In-process runner.** With ``--parallel 1`` every trial runs in this process; with ``--parallel N``, in N
worker processes that live for the whole study. Either way a process loads each backbone identity once
and gives every trial a deep copy (:mod:`fpt.backbones.cache`): results are bit-identical to a trial run on
its own. ``--launcher slurm`` submits every unfinished trial as the sweeps do (:mod:`fpt.experiments.slurm`, one job
array per problem; one trial per job).

**Resuming.** Running the same command again skips finished trials, resumes interrupted ones from their
checkpoint and restarts those interrupted before it (:func:`fpt.experiments.execute.execute_trial`).

**Progress.** Up front and after every trial: trials finished, left, and an ETA from the trial times
measured so far (a trial's estimate: the mean wall time of the finished trials of the same problem and arm;
else of the same arm, scaled by how this problem compares on the arms both have run; else of every
finished trial), a progress bar on a terminal and plain lines otherwise. ``STUDY_DIR/trials.jsonl`` keeps
each trial's wall and CPU seconds as this runner measured them (backbone loading included).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fpt.base.io import atomic_write_json, atomic_write_text
from fpt.base.text import description, suggest
from fpt.config.files import parse_yaml, read_text_file
from fpt.experiments.execute import describe_outcome, execute_trial
from fpt.experiments.files import Experiment
from fpt.experiments.plan import Plan, Trial, load_plan, make_plan, save_plan, trial_state
from fpt.experiments.status import trial_status
from fpt.experiments.summary import write_summary
from fpt.runs.checkpoint import results_or_none

STUDY_FILE = "study.json"
STUDY_FORMAT = 1
TIMING_FILE = "trials.jsonl"
STUDY_KEYS = ("problems", "arms", "pairs", "seeds", "lr", "set")


# -- the study file -------------------------------------------------------------------------------
@dataclass
class Study:
    name: str
    description: str
    problems: dict[str, dict[str, Any]]  # name -> {preset: NAME, overrides...} or a config of its own
    arms: dict[str, dict[str, Any]]  # name -> option overrides
    pairs: list[tuple[str, str]]  # (a, b): is a better than b? a's value minus b's
    seeds: list[int]
    lrs: list[float]
    sets: dict[str, Any] = field(default_factory=dict)  # for every problem unless it sets the key itself
    source: str = ""  # the file it came from


def studies_dir():
    return resources.files("fpt") / "presets" / "studies"


def list_studies() -> dict[str, str]:
    """Shipped studies: name -> the description paragraph at the top of the file."""
    root = studies_dir()
    if not root.is_dir():
        return {}
    return {e.name[:-5]: description(e.read_text()) for e in sorted(root.iterdir(), key=lambda p: p.name)
            if e.name.endswith(".yaml")}


def load_study(name_or_path: str | Path) -> Study:
    path = Path(name_or_path)
    if path.is_file():
        text, name, source = read_text_file(path, "study file"), path.stem, str(path)
    else:
        entry = studies_dir() / f"{name_or_path}.yaml"
        if not entry.is_file():
            known = list_studies()
            raise FileNotFoundError(f"no study file or shipped study named {str(name_or_path)!r}."
                                    f"{suggest(str(name_or_path), known)} Shipped studies: {', '.join(known) or 'none'}.")
        text, name, source = entry.read_text(), str(name_or_path), f"fpt/presets/studies/{name_or_path}.yaml"
    data = parse_yaml(text, f"study {name!r}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"study {name!r} must be a mapping with problems, arms, seeds and lr")
    unknown = sorted(set(data) - set(STUDY_KEYS) - {"description"})
    if unknown:
        raise ValueError(f"study {name!r}: unknown keys {unknown} (known: {', '.join(STUDY_KEYS)})")
    for key in ("problems", "arms"):
        if not isinstance(data.get(key), dict) or not data[key]:
            raise ValueError(f"study {name!r} needs a non-empty '{key}' mapping")
    problems = {str(k): dict(v or {}) for k, v in data["problems"].items()}
    for pname, spec in problems.items():
        if "preset" not in spec and "task" not in spec:
            raise ValueError(f"study {name!r}: problem {pname!r} needs a 'preset' (a shipped preset or YAML file) "
                             "or a 'task' (a config of its own)")
    arms = {str(k): dict(v or {}) for k, v in data["arms"].items()}
    for aname, spec in arms.items():
        if "lr" in spec or "seed" in spec:
            raise ValueError(f"study {name!r}: arm {aname!r} sets {'lr' if 'lr' in spec else 'seed'}; the study's "
                             "lr grid and seeds apply to every arm")
    names = list(arms)
    pairs_raw = data.get("pairs")
    if pairs_raw is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    else:
        pairs = []
        for pair in pairs_raw:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"study {name!r}: each pair is [arm, other arm], got {pair!r}")
            for arm in pair:
                if arm not in arms:
                    raise ValueError(f"study {name!r}: pair {pair!r} names no arm {arm!r}.{suggest(str(arm), names)}")
            pairs.append((str(pair[0]), str(pair[1])))
    seeds = data.get("seeds", 1)
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError(f"study {name!r}: seeds must be at least 1")
    lrs = data.get("lr")
    lrs = [float(x) for x in (lrs if isinstance(lrs, list) else [lrs])] if lrs is not None else []
    if not lrs:
        raise ValueError(f"study {name!r}: give the learning-rate grid, e.g. lr: [3.0e-4, 1.0e-3]")
    sets = dict(data.get("set") or {})
    return Study(name, description(text), problems, arms, pairs, seed_list, lrs, sets, source)


# -- the plan -------------------------------------------------------------------------------------
@dataclass
class StudyPlan:
    study: Study
    root: Path
    plans: dict[str, Plan]  # problem -> its sweep
    order: list[tuple[str, Trial]]  # every trial, in the order it runs
    command: str = ""

    def arm_of(self, trial: Trial) -> str:
        return str(trial.variant)


def _problem_base(study: Study, problem: str, spec: dict[str, Any], root: Path) -> tuple[str, dict[str, Any]]:
    """(preset or config file, overrides) of one problem: a preset with its overrides on top of the study's
    ``set``, or a config of its own written to ``STUDY_DIR/problems/<problem>.yaml``."""
    import yaml

    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None:
        return str(preset), {**study.sets, **spec}
    path = root / "problems" / f"{problem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# problem {problem!r} of study {study.name!r} ({study.source}), written by fpt study\n" + yaml.safe_dump(spec)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return str(path), {k: v for k, v in study.sets.items() if k not in spec}


def make_study_plan(study: Study, root: str | Path | None = None, *, threads: int | None = None, parallel: int = 1,
                    command: str = "") -> StudyPlan:
    """Every trial of every problem, each config validated (a typo fails here, before anything runs)."""
    root = Path(root) if root else Path("runs") / "studies" / study.name
    experiment = Experiment(study.name, study.description, study.arms, grid={"lr": list(study.lrs)})
    plans: dict[str, Plan] = {}
    for problem, spec in study.problems.items():
        preset, sets = _problem_base(study, problem, spec, root)
        try:
            plans[problem] = make_plan(preset, experiment=experiment, seeds=study.seeds, sets=sets,
                                       sweep_dir=root / problem, threads=threads, parallel=parallel, command=command)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"study {study.name!r}, problem {problem!r}: {err}") from None
    arm_index = {a: i for i, a in enumerate(study.arms)}
    lr_index = {lr: i for i, lr in enumerate(study.lrs)}
    seed_index = {s: i for i, s in enumerate(study.seeds)}
    problem_index = {p: i for i, p in enumerate(plans)}
    order = [(p, t) for p, plan in plans.items() for t in plan.trials]
    order.sort(key=lambda pt: (seed_index[pt[1].seed], problem_index[pt[0]], arm_index[pt[1].variant],
                               lr_index[float(pt[1].params["lr"])]))
    return StudyPlan(study, root, plans, order, command)


def save_study(plan: StudyPlan) -> None:
    """``STUDY_DIR/study.json`` (the study and where each problem's sweep is) and every problem's plan.json."""
    s = plan.study
    record = {"format": STUDY_FORMAT, "name": s.name, "description": s.description, "source": s.source,
              "command": plan.command, "problems": {p: p for p in plan.plans}, "problem_specs": s.problems,
              "arms": s.arms, "pairs": [list(p) for p in s.pairs], "seeds": s.seeds, "lr": s.lrs, "set": s.sets,
              "order": "seed, then problem (file order), then arm, then learning rate"}
    plan.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.root / STUDY_FILE, record)
    for p in plan.plans.values():
        save_plan(p)


def read_study_dir(root: str | Path) -> tuple[dict[str, Any], dict[str, Plan]]:
    """``study.json`` and each problem's sweep plan, from a study directory alone."""
    root = Path(root)
    path = root / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no {STUDY_FILE}; is it a study directory (fpt study FILE --study-dir DIR)?")
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run the study command again to rewrite it") from None
    if record.get("format") != STUDY_FORMAT:
        raise ValueError(f"{path}: unknown study format {record.get('format')!r} (this fpt reads {STUDY_FORMAT})")
    plans = {}
    for problem, sub in record["problems"].items():
        if (root / sub / "plan.json").is_file():
            plans[problem] = load_plan(root / sub)
    return record, plans


def is_study_dir(path: str | Path) -> bool:
    return (Path(path) / STUDY_FILE).is_file()


# -- progress and ETA -----------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Progress:
    """Trials finished and left, and the ETA from the wall times measured so far (see the module doc)."""

    def __init__(self, plan: StudyPlan, parallel: int = 1):
        self.plan = plan
        self.parallel = max(1, parallel)
        self.times: dict[tuple[str, str], list[float]] = {}  # (problem, arm) -> wall seconds per finished trial
        self.done: set[str] = set()
        self.total = len(plan.order)
        self.started = time.time()
        self.ran = 0
        for problem, trial in plan.order:
            results = results_or_none(trial.run_dir)
            if results is not None:
                self.done.add(str(trial.run_dir))
                if results.get("seconds") is not None:
                    self.times.setdefault((problem, str(trial.variant)), []).append(float(results["seconds"]))

    def record(self, problem: str, trial: Trial, seconds: float | None, finished: bool) -> None:
        self.ran += 1
        if finished:
            self.done.add(str(trial.run_dir))
            if seconds is not None:
                self.times.setdefault((problem, str(trial.variant)), []).append(float(seconds))

    def estimate(self, problem: str, arm: str) -> float | None:
        """Expected wall seconds of one trial of (problem, arm)."""
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        own = self.times.get((problem, arm))
        if own:
            return mean(own)
        arm_times = {p: mean(v) for (p, a), v in self.times.items() if a == arm and v}
        if arm_times:
            # this problem vs the others on the arms both have run: how much slower or faster it is
            ratios = []
            for (p, a), v in self.times.items():
                if p == problem and v:
                    others = [mean(w) for (q, b), w in self.times.items() if b == a and q != problem and w]
                    if others:
                        ratios.append(mean(v) / mean(others))
            return mean(list(arm_times.values())) * (mean(ratios) if ratios else 1.0)
        every = [x for v in self.times.values() for x in v]
        return mean(every) if every else None

    def left(self) -> list[tuple[str, Trial]]:
        return [(p, t) for p, t in self.plan.order if str(t.run_dir) not in self.done]

    def eta_seconds(self) -> float | None:
        estimates = [self.estimate(p, str(t.variant)) for p, t in self.left()]
        if any(e is None for e in estimates):
            return None
        return sum(estimates) / self.parallel

    def line(self) -> str:
        left = len(self.left())
        eta = self.eta_seconds()
        when = ("ETA: after the first trial" if eta is None and left else
                f"ETA {_duration(eta)} (~{time.strftime('%H:%M', time.localtime(time.time() + eta))})" if left else "done")
        return f"{self.total - left}/{self.total} trials finished, {left} left; {when}"


class _Bar:
    """tqdm on a terminal (the line as its postfix), else nothing: the plain lines say it all."""

    def __init__(self, progress: Progress, stream):
        self.bar = None
        if getattr(stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:  # Lightning brings tqdm; without it, plain lines
                return
            self.bar = tqdm(total=progress.total, initial=progress.total - len(progress.left()), unit="trial",
                            dynamic_ncols=True, file=stream)

    def echo(self, text: str, echo: Callable[[str], None]) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            echo(text)

    def update(self, progress: Progress) -> None:
        if self.bar is not None:
            self.bar.n = progress.total - len(progress.left())
            self.bar.set_postfix_str(progress.line().split("; ", 1)[1], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- running --------------------------------------------------------------------------------------
def _timed_trial(values: dict[str, Any], log_path: str) -> dict[str, Any]:
    """:func:`fpt.experiments.execute.execute_trial` with this process's wall and CPU seconds for the whole trial (the
    backbone's load or copy, the task's data, training and tests)."""
    wall, cpu = time.time(), time.process_time()
    outcome = execute_trial(values, log_path)
    outcome["wall_seconds"] = time.time() - wall
    outcome["cpu_seconds"] = time.process_time() - cpu
    outcome["pid"] = os.getpid()
    return outcome


def _init_worker(threads: int | None, capacity: int) -> None:
    from fpt.backbones.cache import enable_for_process

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    enable_for_process(capacity)


def _log_timing(root: Path, problem: str, trial: Trial, outcome: dict[str, Any]) -> None:
    entry = {"problem": problem, "arm": trial.variant, "lr": trial.params.get("lr"), "seed": trial.seed,
             "state": outcome.get("state"), "wall_seconds": outcome.get("wall_seconds"),
             "cpu_seconds": outcome.get("cpu_seconds"), "pid": outcome.get("pid"),
             "fit_seconds": (outcome.get("results") or {}).get("seconds"),
             "fit_cpu_seconds": (outcome.get("results") or {}).get("cpu_seconds"),
             "ended": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(root / TIMING_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def run_study(plan: StudyPlan, parallel: int = 1, echo: Callable[[str], None] = print, stream=None,
              cache_capacity: int = 6) -> dict[str, Any]:
    """Run every unfinished trial in the study's order; returns ``{problem: sweep summary}``."""
    from fpt.backbones.cache import reuse_backbones

    stream = stream if stream is not None else sys.stdout
    save_study(plan)
    for _, trial in plan.order:  # a directory holding other settings is an error before anything runs
        trial_state(trial.values, trial.run_dir)
        trial.run_dir.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(plan, parallel)
    outcomes: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in plan.plans}
    pending = progress.left()
    echo(f"study {plan.study.name}: {len(plan.plans)} problems x {len(plan.study.arms)} arms x "
         f"{len(plan.study.lrs)} learning rates x {len(plan.study.seeds)} seeds = {progress.total} trials in {plan.root}")
    echo(progress.line())
    bar = _Bar(progress, stream)
    bar.update(progress)

    def ended(problem: str, trial: Trial, outcome: dict[str, Any]) -> None:
        name = f"{trial.setting}/s{trial.seed}"
        outcomes[problem][name] = outcome
        write_summary(plan.plans[problem], outcomes[problem])
        _log_timing(plan.root, problem, trial, outcome)
        finished = outcome["state"] not in ("failed", "interrupted")
        progress.record(problem, trial, outcome.get("wall_seconds"), finished)
        bar.echo(describe_outcome(f"{problem} {name}", outcome) + f" | {progress.line()}", echo)
        bar.update(progress)

    try:
        if parallel <= 1:
            with reuse_backbones(cache_capacity):
                for problem, trial in pending:
                    ended(problem, trial, _timed_trial(trial.values, str(trial.log_path)))
        elif pending:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = next((t.values.get("num_threads") for _, t in pending), None)
            pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(threads, cache_capacity))
            try:
                futures = {pool.submit(_timed_trial, t.values, str(t.log_path)): (p, t) for p, t in pending}
                for future in as_completed(futures):
                    problem, trial = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as err:
                        outcome = {"state": "failed", "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                    ended(problem, trial, outcome)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    summaries = {p: write_summary(sweep) for p, sweep in plan.plans.items()}
    echo(f"wall time of this invocation: {_duration(time.time() - progress.started)} for {progress.ran} trials; "
         + progress.line())
    return summaries


def launch_study(plan: StudyPlan, options, wait: bool = True, echo: Callable[[str], None] = print) -> bool:
    """``--launcher slurm`` / ``submitit-local``: every problem's unfinished trials submitted as the sweeps do
    (one job array per problem, :func:`fpt.slurm.launch`); with ``wait``, the trials' files are read every few
    seconds and the progress line printed as trials end, until none is pending or running. Returns whether
    every trial finished (False when not waiting)."""
    from fpt.experiments.slurm import launch

    save_study(plan)
    for problem, sweep in plan.plans.items():
        echo(f"{problem}:")
        launch(sweep, options, wait=False, echo=lambda text: echo("  " + text))
    if not wait:
        return False
    echo("waiting for them (Ctrl-C stops waiting, not the jobs)")
    last = None
    while True:
        states = [trial_status(t)["status"] for _, t in plan.order]
        progress = Progress(plan, parallel=max(1, int(options.array_parallelism or 1)))
        if progress.line() != last:
            last = progress.line()
            echo(last)
        if not any(s in ("pending", "running") for s in states):
            for sweep in plan.plans.values():
                write_summary(sweep)
            return all(s == "finished" for s in states)
        time.sleep(options.poll_seconds)


# -- status ---------------------------------------------------------------------------------------
def study_status(plan: StudyPlan) -> str:
    """Per problem, trials finished / running / failed / interrupted / pending (from the files), and the ETA."""
    lines = []
    totals: dict[str, int] = {}
    for problem, sweep in plan.plans.items():
        counts: dict[str, int] = {}
        for t in sweep.trials:
            s = trial_status(t)["status"]
            counts[s] = counts.get(s, 0) + 1
            totals[s] = totals.get(s, 0) + 1
        lines.append(f"  {problem}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    head = f"{plan.root}: {len(plan.order)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
    return "\n".join([head, "  " + Progress(plan).line()] + lines)


def describe_study(plan: StudyPlan, limit: int | None = None) -> str:
    lines = [f"study {plan.study.name} ({plan.study.source}): {len(plan.order)} trials in {plan.root}, in this order:"]
    for i, (problem, t) in enumerate(plan.order, 1):
        if limit is not None and i > limit:
            lines.append(f"  ... {len(plan.order) - limit} more")
            break
        lines.append(f"  {i:>4} {problem}/{t.setting}/s{t.seed} [{trial_state(t.values, t.run_dir)}]")
    return "\n".join(lines)
