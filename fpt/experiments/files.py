"""Experiment files: the YAML grids under fpt/presets/experiments (docs/experiments.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fpt.config.files import parse_yaml, read_text_file
from fpt.base.options import parse_text as parse_value
from fpt.base.text import description, suggest


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
