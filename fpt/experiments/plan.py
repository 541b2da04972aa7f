"""A sweep's plan: base config x experiment variants x grid x seeds, one trial (run directory) each, and
plan.json, which makes the sweep directory its own source of truth (overview: fpt/experiments/__init__.py,
docs/experiments.md)."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpt.config.files import (
    build_config,
    preset_dir,
    read_yaml,
)
from fpt.model.fastpath import physical_cores
from fpt.base.io import atomic_write_json
from fpt.config.protocols import resolve
from fpt.config.run import MACHINERY
from fpt.experiments.files import Experiment, load_experiment
from fpt.config.files import assemble, merge, preset_values

# MACHINERY (fpt.config): options that only say *how* a trial runs (declared with role "how"): they may
# differ between the command that started a trial and the one that resumes or re-checks it.
# What a source run takes over from the swept config, so that its backbone fits the trials.
INHERITED_BY_SOURCES = ("backbone", "layers", "lstm_width", "attn_implementation", "trust_remote_code",
                        "backbone_revision", "device",
                        "precision", "num_threads", "protocol", "lstm_kind")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    return "null" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text) or "base"


MAX_TRIALS = 10_000  # trials in one sweep: far more than any machine runs, and a plan that is made at once


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
        written, source_keys = preset_values(source_preset)
        written = merge(written, {k: base[k] for k in INHERITED_BY_SOURCES if k in base})
        for key in INHERITED_BY_SOURCES:
            if key not in base:
                written.pop(key, None)  # the swept config uses the default: so does its source
        values, may_override = assemble((written, source_keys),
                                        per_run={**spec, "seed": 0, **machinery, "run_dir": str(root / "sources" / source_name)})
        values = resolve(values, may_override)  # the protocol's settings (fpt.config.protocols)
        values["label"] = (str(values.get("label", "")) + f" [source {source_name} of {name}]").strip()
        build_config(values)
        sources[source_name] = (values, root / "sources" / source_name)
    return sources


def make_plan(preset: str, *, experiment: str | Experiment | None = None, grid: dict[str, list[Any]] | None = None,
              seeds: int | list[int] | None = None, sets: dict[str, Any] | None = None,
              sweep_dir: str | Path | None = None, threads: int | None = None, parallel: int = 1,
              command: str = "") -> Plan:
    """Every trial of a sweep, each config validated (a typo fails here, before anything runs)."""
    # read once; its keys that --set protocol=paper may override (fpt.config.protocols: preset < protocol < yours)
    written = preset_values(preset)
    base, _ = assemble(written, sets)  # the label names what --set changed
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment) if experiment else None
    full_grid: dict[str, list[Any]] = dict(exp.grid) if exp else {}
    full_grid.update({k.replace("-", "_"): v for k, v in (grid or {}).items()})
    if seeds is None:
        seeds = exp.seeds if exp and exp.seeds else 1
    count = (len(exp.variants) if exp else 1) * math.prod(len(v) for v in full_grid.values()) \
        * (int(seeds) if isinstance(seeds, int) else len(seeds))
    if count > MAX_TRIALS:  # checked before any trial is built: a typo of --seeds answers at once
        raise ValueError(f"this sweep has {count:,} trials; fpt plans at most {MAX_TRIALS:,} in one sweep (each is a "
                         "training run). Use fewer --seeds or grid values, or split it into several sweeps")
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("--seeds must be at least 1")
    if "seed" in full_grid:
        raise ValueError("sweep seeds with --seeds N, not --grid seed=...")
    for given, keys in (("--grid", full_grid), ("--set", {k.replace("-", "_") for k in (sets or {})})):
        if "run_dir" in keys:  # every trial's directory is the sweep's: SWEEP_DIR/<setting>/s<seed>
            raise ValueError(f"{given} run_dir: a sweep puts each trial in SWEEP_DIR/<setting>/s<seed>; choose where "
                             "with --sweep-dir DIR")
    cli_keys = [k.replace("-", "_") for k in (grid or {}) if not (exp and k.replace("-", "_") in exp.grid)]
    name = Path(preset).stem + (f"-{exp.name}" if exp else "") + "".join(f"-{k}" for k in cli_keys)
    if threads is None and parallel > 1 and "num_threads" not in base:
        threads = max(1, physical_cores() // parallel)
    machinery = {"num_threads": threads} if threads else {}

    def build(root: Path) -> Plan:
        return _build_plan(preset, base, exp, full_grid, seed_list, root, name, machinery, sets, written, command)

    if sweep_dir:  # yours: it holds this plan (or a part of it), or nothing
        plan = build(Path(sweep_dir))
        conflict = plan_conflict(plan)
        if conflict:
            raise ValueError(f"{conflict}. A sweep directory belongs to one plan: give this sweep its own, e.g. "
                             f"--sweep-dir {_free_sweep_dir(Path(sweep_dir))}")
        return plan
    # the default name: the first of NAME, NAME-2, NAME-3... that holds this plan (or a part of it) or nothing,
    # so two different sweeps with one name (--grid init=... and --experiment init) never share a directory
    default = Path("runs") / "sweeps" / name
    for i in range(1, 1000):
        plan = build(default if i == 1 else default.with_name(f"{name}-{i}"))
        if not plan_conflict(plan):
            return plan
    raise ValueError(f"{default} and 998 more directories beside it hold other sweeps: give --sweep-dir")


def _free_sweep_dir(root: Path) -> Path:
    """``root-2``, ``root-3``...: the first that holds no sweep."""
    i = 2
    while (root.with_name(f"{root.name}-{i}") / PLAN_FILE).exists():
        i += 1
    return root.with_name(f"{root.name}-{i}")


def plan_conflict(plan: Plan) -> str | None:
    """Why ``plan`` may not use its directory, or None: the ``plan.json`` there is another sweep's when one of its
    trials (or sources) is not in ``plan`` or has other settings (a sweep with more seeds or grid values, or the
    same command again, extends or re-runs its own directory; nothing it holds is ever orphaned)."""
    path = plan.sweep_dir / PLAN_FILE
    if not path.is_file():
        return None
    try:
        stored = load_plan(plan.sweep_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged plan.json: the trial directories still refuse other settings (trial_state)
    ours = {f"{t.setting}/s{t.seed}": t.values for t in plan.trials}
    ours.update({f"sources/{n}": values for n, (values, _) in plan.sources.items()})
    theirs = {f"{t.setting}/s{t.seed}": t.values for t in stored.trials}
    theirs.update({f"sources/{n}": values for n, (values, _) in stored.sources.items()})
    where = f"{plan.sweep_dir} holds another sweep" + (f" ({stored.command})" if stored.command else "")
    missing = sorted(set(theirs) - set(ours))
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        return f"{where}: its trial(s) {listed} are not in this one (they would be orphaned)"
    for key in sorted(theirs):
        try:
            a, b = _comparable(theirs[key]), _comparable(ours[key])
        except ValueError:
            return f"{where}: its trial {key} no longer reads as a config"
        diffs = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        if diffs:
            listed = "; ".join(f"{k}: there {x!r}, now {y!r}" for k, (x, y) in sorted(diffs.items())[:6])
            return f"{where}: its trial {key} has other settings ({listed})"
    return None


def _build_plan(preset, base, exp, full_grid, seed_list, root, name, machinery, sets, written, command) -> Plan:
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
                run_dir = root / setting / f"s{seed}"
                values, may_override = assemble(written, sets, {**overrides, **params, "seed": seed, **machinery,
                                                                "run_dir": str(run_dir)})
                values = resolve(values, may_override)  # the protocol's settings, stored with the trial
                build_config(values)
                trials.append(Trial(variant, params, seed, values, setting, run_dir))
    if len({t.run_dir for t in trials}) != len(trials):
        raise ValueError("two trials of this sweep map to the same directory; give the variants distinct names")
    return Plan(preset, base, exp, full_grid, seed_list, root, sources, trials, command)


def describe_plan(plan: Plan) -> str:
    lines = [f"sweep of {plan.preset}" + (f", experiment {plan.experiment.name}" if plan.experiment else "")
             + f": {len(plan.trials)} trials in {plan.sweep_dir}"]
    for name, (_, run_dir) in plan.sources.items():
        lines.append(f"  source {name}: {run_dir} [{trial_state(*plan.sources[name])}]")
    for t in plan.trials:
        lines.append(f"  {t.setting}/s{t.seed} [{trial_state(t.values, t.run_dir)}]")
    return "\n".join(lines)


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
