"""``fpt sweep``: many runs of one preset, one run directory per trial, best setting picked on validation.

::

    fpt sweep bit-xor-small --lr 1e-4,1e-3,1e-2 --seeds 3            # a learning-rate sweep, 3 seeds each
    fpt sweep bit-xor-small --experiment table1                       # FPT vs full transformer vs full LSTM
    fpt sweep mnist-small --experiment rothermel --parallel 2         # lr x {frozen, unfrozen} x 3 seeds
    fpt sweep bit-xor-small --grid init=pretrained,random --grid layers=1,2 --set steps=300

A sweep is a *base config* (a preset or YAML file, plus ``--set KEY=VALUE`` overrides), optionally
an *experiment* (named variants, each a set of overrides, from ``fpt/presets/experiments/NAME.yaml``),
a *grid* (``--grid KEY=V1,V2,...`` and its shorthand ``--lr``; cartesian product) and *seeds*
(``--seeds N``: seeds 0..N-1). Every combination is one trial, written to
``SWEEP_DIR/<setting>/s<seed>/`` (a normal run directory: ``fpt test``, ``fpt report`` work on it);
the default ``SWEEP_DIR`` is ``runs/sweeps/<preset>[-<experiment>][-<swept keys>]``.

Model selection is on **validation** (``results.json`` ``val.best``: accuracy, or RMSE for
regression tasks, :mod:`fpt.objectives`), averaged over seeds: within each experiment variant, the
grid setting with the best mean validation value (highest accuracy, lowest RMSE) is *chosen*, and
its test value *at the best validation point* (``at_best_val``: the weights kept in
``best.safetensors``, as Rothermel et al. 2021 select and evaluate) is reported as mean and
standard deviation over seeds (per setting too); the test at the final weights is shown beside it.
Test numbers never choose anything. With ``--set protocol=paper`` the protocol may override the
preset's keys (not ``--set``, ``--grid`` or an experiment's), as for ``fpt fit``.

Re-running the same command skips finished trials (``results.json`` present), resumes a trial that
was interrupted after its first checkpoint (``fit(..., resume=True)``) and restarts one that was
interrupted before it (the partial directory is moved aside to ``<dir>.old-<timestamp>``). A trial
directory that holds a run with *different* settings is an error, never silently reused.
``SWEEP_DIR/sweep.json`` and ``sweep.md`` are rewritten after every trial; each trial's output
goes to ``SWEEP_DIR/<setting>/s<seed>.log`` (a failed trial's last line there says why).
``SWEEP_DIR/plan.json`` holds every trial's full config, so that the sweep directory alone is the
source of truth: ``fpt sweep --status SWEEP_DIR`` (trials pending / running / finished / failed /
interrupted, read from the files) and ``fpt sweep SWEEP_DIR --summarize`` (sweep.json and sweep.md
rebuilt) need nothing else.

``--launcher local`` (default) runs the trials here, ``--parallel`` at a time; ``--launcher slurm``
submits every pending trial as a SLURM job array through submitit (:mod:`fpt.slurm`).

Experiments may name *sources*: runs trained once before the trials, whose directory a variant
uses as ``backbone: run:@NAME`` (the bit-memory-pretrained initialisation). A source is a preset
(its ``-small`` version when the swept preset is a ``-small`` one) with the experiment's overrides,
on the swept config's backbone, depth and LSTM width, seed 0, in ``SWEEP_DIR/sources/NAME``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fpt import reference
from fpt.checkpoint import checkpoint_step, read_results, results_or_none
from fpt.config import (
    DOCUMENTATION_KEYS, MACHINERY, build_config, is_shipped_preset, note_changes_in_label, parse_yaml, preset_dir,
    preset_keys, read_text_file, read_yaml,
)
from fpt.fastpath import physical_cores
from fpt.io import atomic_write_json, atomic_write_text
from fpt.objectives import better, headline, test_score, val_score
from fpt.options import parse_text as parse_value
from fpt.protocol import resolve
from fpt.rundir import LOCK_NAME, RunLock, _pid_alive, move_aside
from fpt.text import description, suggest

# MACHINERY (fpt.config): options that only say *how* a trial runs (declared with role "how"): they may
# differ between the command that started a trial and the one that resumes or re-checks it.
# What a source run takes over from the swept config, so that its backbone fits the trials.
INHERITED_BY_SOURCES = ("backbone", "layers", "lstm_width", "attn_implementation", "trust_remote_code", "device",
                        "precision", "num_threads", "protocol", "lstm_kind")


# -- experiments -------------------------------------------------------------------------------
@dataclass
class Experiment:
    name: str
    description: str
    variants: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: int | None = None


def experiment_dir():
    return resources.files("fpt") / "presets" / "experiments"


def list_experiments() -> dict[str, str]:
    """Shipped experiments: name -> the description paragraph at the top of the file."""
    root = experiment_dir()
    if not root.is_dir():
        return {}
    return {entry.name[:-5]: description(entry.read_text())
            for entry in sorted(root.iterdir(), key=lambda p: p.name) if entry.name.endswith(".yaml")}


def load_experiment(name_or_path: str) -> Experiment:
    path = Path(name_or_path)
    if path.is_file():
        text, name = read_text_file(path, "experiment file"), path.stem
    else:
        entry = experiment_dir() / f"{name_or_path}.yaml"
        if not entry.is_file():
            known = list_experiments()
            raise FileNotFoundError(f"no experiment named {name_or_path!r}.{suggest(name_or_path, known)} "
                                    f"Experiments: {', '.join(known)}.")
        text, name = entry.read_text(), name_or_path
    data = parse_yaml(text, f"experiment {name!r}") or {}
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict) or not data["variants"]:
        raise ValueError(f"experiment {name!r} must be a mapping with a non-empty 'variants' mapping")
    unknown = sorted(set(data) - {"variants", "sources", "grid", "seeds", "description"})
    if unknown:
        raise ValueError(f"experiment {name!r}: unknown keys {unknown} (variants, sources, grid, seeds)")
    variants = {str(k): dict(v or {}) for k, v in data["variants"].items()}
    grid = {str(k): list(v) if isinstance(v, list) else [v] for k, v in (data.get("grid") or {}).items()}
    return Experiment(name, description(text), variants, dict(data.get("sources") or {}), grid, data.get("seeds"))


# -- parsing ------------------------------------------------------------------------------------
def parse_assignment(text: str, many: bool) -> tuple[str, Any]:
    """``KEY=VALUE`` (``many=False``) or ``KEY=V1,V2,...`` (``many=True``; values split on commas)."""
    if "=" not in text:
        raise ValueError(f"expected KEY=VALUE{',VALUE...' if many else ''}, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if many:
        values = [parse_value(v.strip()) for v in value.split(",") if v.strip()]
        if not values:
            raise ValueError(f"{key}: no values given")
        return key, values
    return key, parse_value(value)


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a flat config dict; ``task_options.KEY`` and a ``task_options``
    mapping update the task options instead of replacing them."""
    out = dict(values)
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key.startswith("task_options."):
            out["task_options"] = {**out.get("task_options", {}), key.split(".", 1)[1]: value}
        elif key == "task_options" and isinstance(value, dict):
            out["task_options"] = {**out.get("task_options", {}), **value}
        else:
            out[key] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    return "null" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text) or "base"


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class Trial:
    variant: str | None
    params: dict[str, Any]  # the grid values of this trial
    seed: int
    values: dict[str, Any]  # the full flat config
    setting: str  # variant + grid values, the name of the settings directory
    run_dir: Path

    @property
    def log_path(self) -> Path:
        return self.run_dir.with_name(self.run_dir.name + ".log")


@dataclass
class Plan:
    preset: str
    base: dict[str, Any]
    experiment: Experiment | None
    grid: dict[str, list[Any]]
    seeds: list[int]
    sweep_dir: Path
    sources: dict[str, tuple[dict[str, Any], Path]]
    trials: list[Trial]
    command: str = ""


def _source_preset(preset: str, small: bool) -> str:
    if small and not preset.endswith("-small") and (preset_dir() / f"{preset}-small.yaml").is_file():
        return f"{preset}-small"
    return preset


def _is_small(preset: str, base: dict[str, Any]) -> bool:
    return Path(preset).stem.endswith("-small") or str(base.get("label", "")).startswith("-small")


def _resolve_sources(value: Any, sources: dict[str, tuple[dict[str, Any], Path]]) -> Any:
    if isinstance(value, str) and value.startswith("run:@"):
        name = value[len("run:@"):]
        if name not in sources:
            raise ValueError(f"{value!r} names no source of this experiment (sources: {', '.join(sources) or 'none'})")
        return f"run:{sources[name][1].resolve()}"
    return value


def _plan_sources(exp: Experiment | None, preset: str, base: dict[str, Any], root: Path, name: str,
                  machinery: dict[str, Any]) -> dict[str, tuple[dict[str, Any], Path]]:
    """The experiment's source runs (trained before the trials), each config validated."""
    sources: dict[str, tuple[dict[str, Any], Path]] = {}
    for source_name, spec in (exp.sources if exp else {}).items():
        spec = dict(spec or {})
        if "preset" not in spec:
            raise ValueError(f"experiment {exp.name!r}: source {source_name!r} needs a 'preset'")
        source_preset = _source_preset(str(spec.pop("preset")), _is_small(preset, base))
        values = read_yaml(source_preset)
        for key in DOCUMENTATION_KEYS:
            values.pop(key, None)
        values = apply_overrides(values, {k: base[k] for k in INHERITED_BY_SOURCES if k in base})
        for key in INHERITED_BY_SOURCES:
            if key not in base:
                values.pop(key, None)  # the swept config uses the default: so does its source
        values = apply_overrides(values, {**spec, "seed": 0, **machinery})
        values["run_dir"] = str(root / "sources" / source_name)
        source_keys = preset_keys(read_yaml(source_preset)) if is_shipped_preset(source_preset) else set()
        values = resolve(values, source_keys - preset_keys(spec))  # the protocol's settings (fpt.protocol)
        values["label"] = (str(values.get("label", "")) + f" [source {source_name} of {name}]").strip()
        build_config(values)
        sources[source_name] = (values, root / "sources" / source_name)
    return sources


def make_plan(preset: str, *, experiment: str | None = None, grid: dict[str, list[Any]] | None = None,
              seeds: int | list[int] | None = None, sets: dict[str, Any] | None = None,
              sweep_dir: str | Path | None = None, threads: int | None = None, parallel: int = 1,
              command: str = "") -> Plan:
    """Every trial of a sweep, each config validated (a typo fails here, before anything runs)."""
    preset_values = read_yaml(preset)
    # keys a shipped preset set, which --set protocol=paper may override (fpt.protocol: preset < protocol < yours)
    from_preset = preset_keys(preset_values) if is_shipped_preset(preset) else set()
    base = note_changes_in_label(preset_values, apply_overrides(preset_values, sets or {}))  # --set vs the label
    for key in DOCUMENTATION_KEYS:
        base.pop(key, None)
    exp = load_experiment(experiment) if experiment else None
    full_grid: dict[str, list[Any]] = dict(exp.grid) if exp else {}
    full_grid.update({k.replace("-", "_"): v for k, v in (grid or {}).items()})
    if seeds is None:
        seeds = exp.seeds if exp and exp.seeds else 1
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("--seeds must be at least 1")
    if "seed" in full_grid:
        raise ValueError("sweep seeds with --seeds N, not --grid seed=...")
    cli_keys = [k.replace("-", "_") for k in (grid or {}) if not (exp and k.replace("-", "_") in exp.grid)]
    name = Path(preset).stem + (f"-{exp.name}" if exp else "") + "".join(f"-{k}" for k in cli_keys)
    root = Path(sweep_dir) if sweep_dir else Path("runs") / "sweeps" / name
    if threads is None and parallel > 1 and "num_threads" not in base:
        threads = max(1, physical_cores() // parallel)
    machinery = {"num_threads": threads} if threads else {}

    sources = _plan_sources(exp, preset, base, root, name, machinery)
    variants: list[tuple[str | None, dict[str, Any]]] = list(exp.variants.items()) if exp else [(None, {})]
    keys = list(full_grid)
    trials = []
    for variant, overrides in variants:
        overrides = {k: _resolve_sources(v, sources) for k, v in overrides.items()}
        for combo in itertools.product(*(full_grid[k] for k in keys)):
            params = dict(zip(keys, combo))
            parts = ([variant] if variant else []) + [f"{k}={_fmt(v)}" for k, v in params.items()]
            setting = _slug("_".join(parts)) if parts else "base"
            for seed in seed_list:
                values = apply_overrides(apply_overrides(base, overrides), params)
                values = apply_overrides(values, {"seed": seed, **machinery})
                run_dir = root / setting / f"s{seed}"
                values["run_dir"] = str(run_dir)
                explicit = preset_keys({**(sets or {}), **overrides, **params})
                values = resolve(values, from_preset - explicit)  # the protocol's settings, stored with the trial
                build_config(values)
                trials.append(Trial(variant, params, seed, values, setting, run_dir))
    if len({t.run_dir for t in trials}) != len(trials):
        raise ValueError("two trials of this sweep map to the same directory; give the variants distinct names")
    return Plan(preset, base, exp, full_grid, seed_list, root, sources, trials, command)


# -- running trials -----------------------------------------------------------------------------
def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in build_config(values).to_dict().items() if k not in MACHINERY}


def trial_state(values: dict[str, Any], run_dir: Path) -> str:
    """``done`` (results.json), ``resume`` (a checkpoint), ``restart`` (partial, no checkpoint) or ``new``.

    Raises if the directory holds a run with other settings than ``values``.
    """
    if (run_dir / "config.yaml").exists():
        stored = _comparable(read_yaml(str(run_dir / "config.yaml")))
        planned = _comparable(values)
        diffs = {k: (stored.get(k), planned.get(k)) for k in set(stored) | set(planned) if stored.get(k) != planned.get(k)}
        if diffs:
            listed = "; ".join(f"{k}: there {a!r}, now {b!r}" for k, (a, b) in sorted(diffs.items())[:6])
            raise ValueError(f"{run_dir} holds a run with other settings ({listed}). Use another --sweep-dir, "
                             "or remove that directory to run it again.")
        if (run_dir / "results.json").exists():
            return "done"
        if (run_dir / "checkpoints" / "last.ckpt").exists():
            return "resume"
        return "restart"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "restart"
    return "new"


def execute_trial(values: dict[str, Any], log_path: str | None = None) -> dict[str, Any]:
    """Run (or resume, or restart) one trial; returns ``{"state", "results" | "error", "seconds"}``.

    Module-level so that worker processes (``--parallel``) can call it.
    """
    from fpt.training import fit  # Lightning: imported by the processes that train, not by fpt sweep --dry-run

    run_dir = Path(values["run_dir"])
    state = trial_state(values, run_dir)
    if state == "done":
        return {"state": "done", "results": read_results(run_dir), "seconds": 0.0}
    if state == "restart":
        # Under the run lock: a folder that a live parallel worker is writing is refused, never moved.
        with RunLock(run_dir):
            aside = move_aside(run_dir)
        (aside / LOCK_NAME).unlink(missing_ok=True)
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


FAILED_MARK = "failed: "  # after "== <time> " in a trial's log: the trial ended with this error
INTERRUPTED_MARK = "interrupted: "  # stopped by a signal after a checkpoint (resumable)


def _mark(log, what: str, text: str) -> None:
    """The last line of a trial's log says how it ended (``fpt sweep --status`` reads it)."""
    if log is not None:
        line = " ".join(text.split())  # one line
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}: {line}\n")
        log.flush()


def describe_outcome(name: str, outcome: dict[str, Any], where: str = "") -> str:
    """One line for a trial that has ended (the sweep prints it as each trial finishes)."""
    if outcome["state"] in ("failed", "interrupted"):
        return f"{where}{name}: {outcome['state'].upper()} ({outcome['error']})"
    r = outcome["results"]
    metric = headline(r)[0]
    return (f"{where}{name}: {outcome['state']}  val {_value(val_score(r), metric)}  "
            f"test {_value(test_score(r), metric)} at the best validation "
            f"({_value(test_score(r, at='final'), metric)} final)  ({r.get('steps')} steps, {r.get('seconds', 0):.0f} s)")


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


# -- the summary --------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}"


def _value(x: Any, metric: str) -> str:
    """Accuracies in %, other metrics (rmse) as they are."""
    if metric in ("accuracy", "exact_accuracy"):
        return _pct(x)
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.4g}"


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _trial_entry(trial: Trial, results: dict[str, Any] | None, outcome: dict[str, Any]) -> dict[str, Any]:
    """One trial's line of sweep.json: its status and, when finished, its numbers."""
    status = "done" if results else outcome.get("state", "pending")
    if results is None and status not in ("failed",):
        status = "pending" if not trial.run_dir.exists() else "incomplete"
    entry = {"setting": trial.setting, "variant": trial.variant, "params": trial.params, "seed": trial.seed,
             "run_dir": str(trial.run_dir), "status": status}
    if outcome.get("error"):
        entry["error"] = outcome["error"]
    if results:
        at_best = (results.get("at_best_val") or {}).get("test") or {}
        entry.update(metric=headline(results)[0], val_value=val_score(results),
                     test_value=test_score(results), test_value_final=test_score(results, at="final"),
                     val_accuracy=results.get("val", {}).get("best_accuracy"),
                     test_accuracy=at_best.get("accuracy", results.get("test", {}).get("accuracy")),
                     test_accuracy_final=results.get("test", {}).get("accuracy"),
                     test_exact_accuracy=results.get("test", {}).get("exact_accuracy"),
                     first_step_at_target=results.get("val", {}).get("first_step_at_target"),
                     steps=results.get("steps"), seconds=results.get("seconds"))
    return entry


def summarize(plan: Plan, outcomes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-setting validation / test statistics over seeds and the setting chosen on validation."""
    outcomes = outcomes or {}
    settings: dict[str, dict[str, Any]] = {}
    trials = []
    for trial in plan.trials:
        results = results_or_none(trial.run_dir)
        outcome = outcomes.get(f"{trial.setting}/s{trial.seed}") or ({} if results else logged_outcome(trial.log_path))
        trials.append(_trial_entry(trial, results, outcome))
        s = settings.setdefault(trial.setting, {"setting": trial.setting, "variant": trial.variant,
                                                "params": trial.params, "seeds": [], "results": []})
        s["seeds"].append(trial.seed)
        if results:
            s["results"].append(results)
    for s in settings.values():
        res = s.pop("results")
        s["done"] = len(res)
        s["metric"], s["higher_is_better"] = headline(res[0]) if res else ("accuracy", True)
        s["val"] = _stats([v for v in map(val_score, res) if v is not None])
        # the validation loss at those best points: breaks ties between settings (small validation sets)
        s["val_loss"] = _stats([float(v) for r in res if (v := (r.get("val") or {}).get("best_loss")) is not None
                                and not math.isnan(float(v))])
        s["test"] = _stats([v for v in map(test_score, res) if v is not None])  # at the best validation
        s["test_final"] = _stats([v for r in res if (v := test_score(r, at="final")) is not None])
        s["seconds"] = sum(float(r.get("seconds") or 0) for r in res)
        reached = [r["val"]["first_step_at_target"] for r in res if r.get("val", {}).get("first_step_at_target") is not None]
        s["steps_to_target"] = _stats([float(x) for x in reached])
        if res:
            r0 = res[0]
            comparison = reference.compare(r0)
            ref = comparison.reference
            s["reference"] = ({"setting": comparison.setting, "accuracy": ref.accuracy, "source": ref.source,
                               "where": ref.where, "model": ref.model, "label": ref.label(),
                               "variant": comparison.variant, "differences": comparison.differences}
                              if ref else {"setting": comparison.setting, "variant": comparison.variant,
                                           "note": comparison.note})
            if r0.get("task") == "timeseries":  # the field's published numbers for the same problem and split
                published, _ = reference.ts_lookup(r0.get("data"))
                s["reference"]["published"] = ", ".join(f"{p.method} {p.value:g}" for p in published) or None
    chosen: dict[str, str] = {}
    for s in settings.values():
        key = s["variant"] or "all"
        if s["val"]["mean"] is None:
            continue
        best = settings.get(chosen.get(key, ""))
        # the better mean validation value; on a tie, the lower mean validation loss at those points
        if best is None or better(s["val"]["mean"], best["val"]["mean"], s["higher_is_better"],
                                  s["val_loss"]["mean"], best["val_loss"]["mean"]):
            chosen[key] = s["setting"]
    for s in settings.values():
        s["chosen"] = chosen.get(s["variant"] or "all") == s["setting"]
    return {
        "preset": plan.preset, "experiment": plan.experiment.name if plan.experiment else None,
        "command": plan.command, "sweep_dir": str(plan.sweep_dir), "grid": plan.grid, "seeds": plan.seeds,
        "selection": "per variant, the setting with the best mean validation value (val.best: highest accuracy, "
                     "lowest rmse) over seeds, ties to the lower mean validation loss at those points; test reported "
                     "at the best validation point (at_best_val)",
        "sources": {n: str(d) for n, (_, d) in plan.sources.items()},
        "chosen": chosen, "settings": list(settings.values()), "trials": trials,
        "complete": all(t["status"] == "done" for t in trials),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _mean_std(stats: dict[str, Any], metric: str = "accuracy") -> str:
    if stats["mean"] is None:
        return "-"
    if metric not in ("accuracy", "exact_accuracy"):  # rmse: as it is
        return f"{stats['mean']:.4g}" + (f" ± {stats['std']:.2g}" if stats["n"] > 1 else "")
    text = f"{100 * stats['mean']:.1f}"
    return text + (f" ± {100 * stats['std']:.1f}" if stats["n"] > 1 else "")


def render_markdown(summary: dict[str, Any]) -> str:
    exp = f", experiment `{summary['experiment']}`" if summary["experiment"] else ""
    lines = [f"# Sweep of `{summary['preset']}`{exp}", ""]
    if summary.get("command"):
        lines += [f"Command: `{summary['command']}`", ""]
    metrics = sorted({s.get("metric", "accuracy") for s in summary["settings"] if s["done"]}) or ["accuracy"]
    units = ", ".join("accuracy in %" if m == "accuracy" else f"{m} in the targets' units" for m in metrics)
    lines += [f"Seeds: {', '.join(map(str, summary['seeds']))}. Selection: {summary['selection']}; "
              f"the chosen setting of each variant is marked **bold**. Metric: {units}; mean ± std over seeds.", ""]
    shown = metrics[0] if len(metrics) == 1 else "value"
    lines += [f"| variant | setting | seeds done | val {shown} | test {shown} (best val) | test {shown} (final) | "
              "steps to target | paper | how it differs | time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        ref = s.get("reference") or {}
        paper = (f"{ref['accuracy']:g} ({ref['label']})" if ref.get("accuracy") is not None
                 else (ref.get("published") or "-"))
        differs = "; ".join(ref.get("differences") or []) if ref.get("accuracy") is not None else ref.get("note", "-")
        name = f"**{s['setting']}**" if s["chosen"] else s["setting"]
        steps = s["steps_to_target"]
        reached = f"{steps['mean']:.0f} ({steps['n']}/{s['done']})" if steps["mean"] is not None else "-"
        metric = s.get("metric", "accuracy")
        lines.append(f"| {s['variant'] or '-'} | {name} | {s['done']}/{len(s['seeds'])} | {_mean_std(s['val'], metric)} | "
                     f"{_mean_std(s['test'], metric)} | {_mean_std(s['test_final'], metric)} | {reached} | {paper} | "
                     f"{differs or '-'} | {s['seconds']:.0f} |")
    lines += ["", "Chosen on validation:", ""]
    by_name = {s["setting"]: s for s in summary["settings"]}
    for variant, setting in summary["chosen"].items():
        s = by_name[setting]
        metric = s.get("metric", "accuracy")
        lines.append(f"- {variant}: `{setting}`: test {metric} at the best validation {_mean_std(s['test'], metric)} "
                     f"({s['test']['n']} seeds; final weights {_mean_std(s['test_final'], metric)}), "
                     f"val {_mean_std(s['val'], metric)}")
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- {t['run_dir']}: {t.get('error', '')}" for t in failed]
    if not summary["complete"]:
        lines += ["", "Not complete: run the same command again to finish (finished trials are skipped)."]
    return "\n".join(lines) + "\n"


def write_summary(plan: Plan, outcomes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    summary = summarize(plan, outcomes)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.sweep_dir / "sweep.json", summary)
    atomic_write_text(plan.sweep_dir / "sweep.md", render_markdown(summary))
    return summary


def describe_plan(plan: Plan) -> str:
    lines = [f"sweep of {plan.preset}" + (f", experiment {plan.experiment.name}" if plan.experiment else "")
             + f": {len(plan.trials)} trials in {plan.sweep_dir}"]
    for name, (_, run_dir) in plan.sources.items():
        lines.append(f"  source {name}: {run_dir} [{trial_state(*plan.sources[name])}]")
    for t in plan.trials:
        lines.append(f"  {t.setting}/s{t.seed} [{trial_state(t.values, t.run_dir)}]")
    return "\n".join(lines)


def command_line(argv: list[str] | None = None) -> str:
    return "fpt " + " ".join(argv if argv is not None else sys.argv[1:])


# -- the sweep directory alone: plan.json, --status, --summarize ----------------------------------
PLAN_FILE = "plan.json"
PLAN_FORMAT = 1


def save_plan(plan: Plan) -> None:
    """``SWEEP_DIR/plan.json``: every trial and source with its full config (paths relative to the sweep)."""
    record = {
        "format": PLAN_FORMAT, "preset": plan.preset, "command": plan.command,
        "experiment": ({"name": plan.experiment.name, "description": plan.experiment.description}
                       if plan.experiment else None),
        "grid": plan.grid, "seeds": plan.seeds, "base": plan.base,
        "sources": {name: values for name, (values, _) in plan.sources.items()},
        "trials": [{"variant": t.variant, "params": t.params, "seed": t.seed, "setting": t.setting, "values": t.values}
                   for t in plan.trials],
    }
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.sweep_dir / PLAN_FILE, record)


def load_plan(sweep_dir: str | Path) -> Plan:
    """The plan of an existing sweep, from its ``plan.json``; run directories are taken relative to
    ``sweep_dir`` (so a sweep directory read from another working directory, or moved, still works)."""
    root = Path(sweep_dir)
    path = root / PLAN_FILE
    if not path.is_file():
        hint = (" It has a sweep.json: it was started by an older fpt; run the sweep command again (finished trials "
                "are skipped) to write plan.json." if (root / "sweep.json").is_file() else
                " Is it a sweep directory (fpt sweep ... --sweep-dir DIR)?")
        raise FileNotFoundError(f"{root}: no {PLAN_FILE}.{hint}")
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run the sweep command again to rewrite it") from None
    if record.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path}: unknown plan format {record.get('format')!r} (this fpt reads {PLAN_FORMAT})")
    exp = record.get("experiment")
    experiment = Experiment(exp["name"], exp.get("description", ""), {}) if exp else None
    sources = {}
    for name, values in record.get("sources", {}).items():
        run_dir = root / "sources" / name
        sources[name] = ({**values, "run_dir": str(run_dir)}, run_dir)
    trials = []
    for t in record["trials"]:
        run_dir = root / t["setting"] / f"s{t['seed']}"
        trials.append(Trial(t["variant"], t["params"], t["seed"], {**t["values"], "run_dir": str(run_dir)},
                            t["setting"], run_dir))
    return Plan(record["preset"], record.get("base", {}), experiment, record.get("grid", {}), record.get("seeds", []),
                root, sources, trials, record.get("command", ""))


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


def _lock_owner(run_dir: Path) -> dict[str, Any] | None:
    """The live process writing ``run_dir`` (its lock), or None. A lock from another host counts as live:
    fpt cannot check it from here."""
    try:
        owner = json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    import socket

    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
            and not _pid_alive(owner["pid"]):
        return None  # stale: that process is gone
    return owner


def trial_status(trial: Trial) -> dict[str, Any]:
    """``{"status": finished | running | failed | interrupted | pending, "detail": ...}`` from the files alone."""
    run_dir = trial.run_dir
    results = results_or_none(run_dir)
    if results is not None:
        metric = headline(results)[0]
        return {"status": "finished", "detail": f"val {_value(val_score(results), metric)}  test "
                                                f"{_value(test_score(results), metric)} ({results.get('steps')} steps)"}
    owner = _lock_owner(run_dir)
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


JOBS_FILE = "slurm/jobs.json"  # trial name -> SLURM job id, written by fpt.slurm


def _submitted_jobs(sweep_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads((sweep_dir / JOBS_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def summarize_dir(sweep_dir: str | Path) -> dict[str, Any]:
    """``fpt sweep SWEEP_DIR --summarize``: sweep.json and sweep.md rebuilt from the trial directories."""
    return write_summary(load_plan(sweep_dir))
