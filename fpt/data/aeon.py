"""Where the UCR / UEA / TSER archive's problems are: the aeon wheel's files and the Zenodo records."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from pathlib import Path


# -- where problems are ------------------------------------------------------------------------
AEON_DISTRIBUTION = "aeon"


def aeon_data_root() -> Path | None:
    """``aeon/datasets/data`` inside the installed aeon wheel (found without importing aeon), or None."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(AEON_DISTRIBUTION)
        candidates.append(Path(dist.locate_file("aeon/datasets/data")))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec("aeon")  # locates the package; does not run its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates += [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations or ()]
    return next((c for c in candidates if c.is_dir()), None)


def base_name(name: str) -> str:
    """The archive folder a problem's files live in: ``JapaneseVowels_eq`` -> ``JapaneseVowels``."""
    for suffix in ("_eq_nmv", "_nmv", "_eq"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def bundled_problems() -> dict[str, Path]:
    """Problems the aeon wheel ships as NAME_TRAIN.ts + NAME_TEST.ts: name -> folder."""
    root = aeon_data_root()
    if root is None:
        return {}
    out = {}
    for train in sorted(root.glob("*/*_TRAIN.ts")):
        name = train.name[: -len("_TRAIN.ts")]
        if (train.parent / f"{name}_TEST.ts").is_file():
            out[name] = train.parent
    return out


def bundled_non_problems() -> dict[str, list[str]]:
    """Folders of aeon's data that hold no TRAIN/TEST .ts pair (forecasting, anomaly, segmentation data)."""
    root = aeon_data_root()
    if root is None:
        return {}
    problems = bundled_problems()
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if d.name not in problems and not any(v == d for v in problems.values()):
            out[d.name] = sorted(f.name for f in d.iterdir() if f.is_file())
    return out


def zenodo_record(name: str) -> int | None:
    """The Zenodo record of a UCR/UEA/TSER problem, from aeon's installed tables (``tsc_zenodo`` in
    ``tsc_datasets.py``, ``tsr_zenodo`` in ``tser_datasets.py``), read as Python literals: nothing of
    aeon is run."""
    root = aeon_data_root()
    if root is None:
        return None
    for file, table in (("tsc_datasets.py", "tsc_zenodo"), ("tser_datasets.py", "tsr_zenodo")):
        try:
            tree = ast.parse((root.parent / file).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table for t in node.targets):
                try:
                    records = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(records, dict) and isinstance(records.get(name), int):
                    return records[name]
    return None
