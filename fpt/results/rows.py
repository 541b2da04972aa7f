"""Finished runs as rows: find run dirs, read their results and curves (fpt report's input)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
import math
from typing import Any, Iterable

import yaml

from fpt.base.io import atomic_write_text
from fpt.config.files import finish_advice
from fpt.results import reference
from fpt.runs.checkpoint import read_results
from fpt.base.text import as_percent


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (holding results.json) given directly, or found under the given folders
    (sweeps, folders of runs); directories moved aside (``*.old-*``) are skipped."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "results.json").exists():
            found.append(p)
            continue
        if not p.is_dir():
            raise ValueError(f"{p} is not a run directory")
        below = sorted(r.parent for r in p.rglob("results.json") if ".old-" not in str(r.parent))
        if not below:
            hint = f" (the run has not finished; {finish_advice(p)})" if (p / "config.yaml").exists() else ""
            raise FileNotFoundError(f"no finished run (results.json) in {p}{hint}")
        found.extend(below)
    unique = []
    for p in found:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def _eval_every(run_dir: Path) -> int | None:
    try:
        return int((yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("eval_every") or 0) or None
    except (OSError, ValueError, TypeError):
        return None


def _labels_completed_steps(run_dir: Path, steps: list[int]) -> bool:
    """Whether ``metrics.csv`` labels a validation with the optimizer steps before it (fpt's convention since
    results.json has ``metrics_step``), or, in older runs, with Lightning's count of finished batches (one less)."""
    try:
        marker = json.loads((run_dir / "results.json").read_text()).get("metrics_step")
    except (OSError, ValueError, AttributeError):
        marker = None
    if marker is not None:
        return marker == "completed"
    if not steps or 0 in steps:  # a validation after 0 steps is an old label (after step 1)
        return False
    every = _eval_every(run_dir)
    if not every or every == 1:
        return True
    # every validation but the last one (the last step, always validated now) at a multiple of eval_every
    return all(s % every == 0 for s in steps[:-1]) and not all((s + 1) % every == 0 for s in steps)


def read_curve(run_dir: str | Path, metric: str = "val/accuracy") -> tuple[list[int], list[float]]:
    """(optimizer steps, values) of a logged metric from ``metrics.csv`` (one value per step, the last
    logged; see the module doc for the step convention)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return [], []
    by_step: dict[int, float] = {}
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):  # a row cut mid-write (a kill, a full disk): its values may be cut too
        text = text[: text.rfind("\n") + 1]
    with io.StringIO(text, newline="") as f:
        for row in csv.DictReader(f):
            value, step = row.get(metric), row.get("step")
            if value not in (None, "") and step not in (None, ""):
                by_step[int(float(step))] = float(value)
    steps = sorted(by_step)
    offset = 0 if _labels_completed_steps(Path(run_dir), steps) else 1
    return [s + offset for s in steps], [by_step[s] for s in steps]


def metrics_cut_mid_row(run_dir: str | Path) -> bool:
    """True when ``metrics.csv``'s last row is incomplete (no line end): :func:`read_curve` leaves it out."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False


# -- the table ------------------------------------------------------------------------------------
def _short_backbone(results: dict[str, Any]) -> str:
    backbone = str(results.get("backbone", ""))
    if backbone.startswith("run:"):
        ident = results.get("backbone_identity") or {}
        source = str(ident.get("source_backbone", ""))
        source = Path(source).name if Path(source).is_absolute() or Path(source).exists() else source
        return f"run:{Path(backbone[4:]).name} ({ident.get('source_task', '?')}-trained {source})"
    if Path(backbone).is_absolute() or backbone.startswith("."):
        return Path(backbone).name
    return backbone


def _freeze_text(freeze: Any) -> str:
    return freeze if isinstance(freeze, str) else "+".join(freeze)


def run_row(run_dir: Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """One report row: our numbers and the published one for the same setting and task variant."""
    r = results or read_results(run_dir)
    task = r.get("task", "")
    comparison = reference.compare(r)
    setting, ref = comparison.setting, comparison.reference
    val = r.get("val") or {}
    test = r.get("test") or {}
    at_best = (r.get("at_best_val") or {}).get("test") or {}
    if ref is None:
        paper_note = comparison.note
    else:
        paper_note = "; ".join([ref.note] if ref.note else []
                               + [f"also {o.accuracy:g} ({o.label()})" for o in comparison.others])
    return {
        "run": str(run_dir),
        "label": r.get("label", ""),
        "task": task,
        "backbone": _short_backbone(r),
        "init": r.get("init"),
        "freeze": _freeze_text(r.get("freeze", "")),
        "layers": r.get("layers"),
        "seed": r.get("seed"),
        "setting": setting or "",
        "protocol": reference.protocol_of(r),
        "variant": comparison.variant,
        "test_accuracy": as_percent(test.get("accuracy")),
        "test_accuracy_at_best_val": as_percent(at_best.get("accuracy")),
        # the paper's own form where it scaled its numbers (remote homology: x 0.9739), else None
        "test_accuracy_as_published": as_percent(test.get("accuracy_as_published")),
        "paper_accuracy": ref.accuracy if ref else None,
        # the 2021 loop evaluated its test split as it trained (no validation split): its numbers say so
        "paper_source": (ref.label() + ("; test-monitored" if ref.test_monitored() else "")) if ref else "",
        "paper_unverified": ref.unverified if ref else "",
        # fpt's own runs never read a test split before the final test (results.json test_monitored: false)
        "test_monitored": r.get("test_monitored", None),
        "differences": "; ".join(comparison.differences) if ref else "",
        "paper_note": paper_note,
        "val_best_accuracy": as_percent(val.get("best_accuracy")),
        "target_accuracy": as_percent(val.get("target_accuracy")),
        "steps_to_target": val.get("first_step_at_target"),
        "paper_steps_to_converge": reference.paper_steps(task, setting),
        "batch_size": r.get("batch_size"),
        "steps": r.get("steps"),
        "trainable_params": r.get("trainable_params"),
        "total_params": r.get("total_params"),
        "seconds": r.get("seconds"),
        "device": r.get("device", ""),
    }


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_rows(rows: list[dict[str, Any]], path: Path, columns: Iterable[str]) -> None:
    """``rows`` as a CSV file of ``columns``, written whole (``fpt.base.io``: a full disk names the file and leaves no
    stub)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in columns})
    atomic_write_text(path, text.getvalue())
