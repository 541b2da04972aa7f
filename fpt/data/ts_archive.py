"""Find a time-series problem's files.

Where a problem's files are found (:func:`find_problem`; the source description is
:func:`fpt.data.sources.timeseries_problem`): ``--data-dir`` /
``$FPT_DATA_DIR`` / the cache (``~/.cache/fpt/timeseries/<Name>``) as :mod:`fpt.data.store`
searches them, then the problems the ``aeon`` wheel ships in ``aeon/datasets/data`` (located with
``importlib``; aeon is never imported, its dependencies are not needed). Online, a missing problem is
downloaded once into the cache from its Zenodo record (the archive's home since 2024), whose id is
read from aeon's installed tables without running aeon's code. The archive publishes no checksums:
a download is checked for completeness (``Content-Length``) and must parse before it is used.
"""

from __future__ import annotations

from pathlib import Path

from fpt.data.aeon import bundled_non_problems, bundled_problems


def find_problem(name: str, data_dir=None, download: bool = True, task: str = "timeseries") -> dict[str, Path]:
    """``{"train": path, "test": path}`` of an archive problem, downloading it into the cache if needed.

    A name that aeon ships only as a forecasting / anomaly / segmentation series is refused with a
    message; a missing problem raises :class:`fpt.data.store.MissingDataError` naming the files, the
    folders searched and how to get them.
    """
    from fpt.data.sources import timeseries_problem
    from fpt.data.store import ensure_files, find_files

    dataset = timeseries_problem(name)
    if find_files(dataset, data_dir) is None:
        others = bundled_non_problems()
        if name in others:
            raise ValueError(
                f"{task}: aeon's {name!r} is not a classification or regression problem: its folder holds "
                f"{', '.join(others[name])} (a forecasting, anomaly-detection or segmentation series with no "
                "NAME_TRAIN.ts / NAME_TEST.ts of labelled series). The timeseries task needs a labelled problem: "
                f"{', '.join(bundled_problems()) or 'none bundled'}, or any UCR/UEA/TSER problem by name online")
    found = ensure_files(dataset, data_dir, task=task, download_ok=download)
    return {"train": found[f"{name}_TRAIN.ts"], "test": found[f"{name}_TEST.ts"]}


def find_user_files(path: str | Path, data_dir=None) -> dict[str, Path | None]:
    """The user's own files: ``{"train": path, "test": path or None}`` from ``-o path=...``.

    ``path`` is a directory holding exactly one ``NAME_TRAIN.ts`` (and its ``NAME_TEST.ts``), a
    ``NAME_TRAIN.ts`` file (its ``NAME_TEST.ts`` next to it is used when present), or any other ``.ts``
    file (train only: the test split is then carved from it too, and the task says so).
    Relative paths are also tried under ``data_dir`` and ``$FPT_DATA_DIR``.
    """
    import os

    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute():
        for base in (data_dir, os.environ.get("FPT_DATA_DIR")):
            if base and (Path(base).expanduser() / p).exists():
                p = Path(base).expanduser() / p
                break
    if p.is_dir():
        trains = sorted(p.glob("*_TRAIN.ts")) or sorted(p.glob("*_train.ts"))
        if len(trains) != 1:
            found = ", ".join(t.name for t in trains) if trains else "none"
            raise FileNotFoundError(f"timeseries: {p} must hold exactly one NAME_TRAIN.ts (and its NAME_TEST.ts); "
                                    f"found {found}. Point -o path= at one file instead")
        p = trains[0]
    if not p.is_file():
        raise FileNotFoundError(f"timeseries: {p}: no such .ts file or directory")
    stem = p.name
    for tag in ("_TRAIN.ts", "_train.ts"):
        if stem.endswith(tag):
            test = p.with_name(stem[: -len(tag)] + tag.replace("TRAIN", "TEST").replace("train", "test"))
            return {"train": p, "test": test if test.is_file() else None}
    return {"train": p, "test": None}
