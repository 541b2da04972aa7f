"""Long multivariate series for forecasting: reading them, the field's split borders, windows and baselines.

**Files.** A CSV whose first row names the columns, with one time-index column (``date`` in ETT's format;
aeon's forecasting files name theirs ``Date``, ``Time``, ``Quarter`` or leave it unnamed) and numeric value
columns; an aeon forecasting series by name (``Airline``, ``Lynx``, ``ShampooSales``, ``Uschange``... read from
the installed wheel's ``datasets/data/NAME/NAME.csv``); or an ``.npz`` holding ``series`` (``[rows, channels]``,
optional ``columns``). Every problem is reported with its row (1-based, as a spreadsheet counts, the header
being row 1) and column: a missing column, a non-numeric or empty cell, NaN, a series too short.

**Splits** (:func:`borders`). ``split=ett`` is the ETT benchmark's, read from the LTSF-Linear / PatchTST /
One-Fits-All loaders (``Dataset_ETT_hour``: ``border1s = [0, 12*30*24 - seq_len, 12*30*24 + 4*30*24 - seq_len]``,
``border2s = [12*30*24, 12*30*24 + 4*30*24, 12*30*24 + 8*30*24]``): training rows 0-8640, validation
8640-11520, test 11520-14400, each evaluation split's windows starting one look-back before its border (its
first target is its first row), rows after 14400 never used. ``split=fraction`` cuts the rows at
``train_fraction`` / ``val_fraction`` in time order, with the same one-look-back overlap. A window is
``lookback`` rows of input and the ``horizon`` rows after them; a split of ``n`` rows holds
``n - lookback - horizon + 1`` windows (stride 1), every one of them used (no ``drop_last``).

**Scaling.** z-scores per channel with the mean and (population) std of the training rows only
(sklearn's ``StandardScaler``, as the loaders above), applied to every row.

**Baselines** (:func:`baselines`, on exactly the windows a model is tested on): repeat the last value;
seasonal naive (the value one season earlier); LTSF-Linear's "Linear" (one ``lookback -> horizon`` linear map
shared by every channel, ``individual=False``), fitted here in closed form by least squares on every
training window, where LTSF-Linear trains it by Adam on shuffled batches (drop_last) with early stopping.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpt.data.store import Dataset, Remote

SPLITS = ("ett", "fraction")
# ETTh* borders of Dataset_ETT_hour (12 / 4 / 4 months of 30 days, hourly)
ETT_HOUR_BORDERS = (0, 12 * 30 * 24, 12 * 30 * 24 + 4 * 30 * 24, 12 * 30 * 24 + 8 * 30 * 24)  # 0, 8640, 11520, 14400
TIME_COLUMNS = ("date", "time", "timestamp", "datetime", "quarter", "month", "year", "period", "")

# The ETDataset repository at the commit the benchmark copies were checked against (/work/shared README).
ETT_COMMIT = "1d16c8f4f943005d613b5bc962e9eeb06058cf07"
ETT_SHA256 = {"ETTh1": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
              "ETTh2": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b"}


class ForecastDataError(ValueError):
    """A series file cannot be used for forecasting; the message names the file, row and column."""


def ett_dataset(name: str) -> Dataset:
    """ETTh1 / ETTh2 as a store :class:`~fpt.data.store.Dataset`: the CSV, fetched by pooch from the ETDataset
    repository at :data:`ETT_COMMIT` and checked against its sha256."""
    url = f"https://raw.githubusercontent.com/zhouhaoyi/ETDataset/{ETT_COMMIT}/ETT-small/{name}.csv"
    return Dataset(
        key="ett", files=((f"{name}.csv",),), subdirs=("", "ETT-small", "ett", "ETT"),
        remotes=(Remote(f"{name}.csv", (url,), sha256=ETT_SHA256[name]),),
        how_to_get=f"{name}.csv from the ETDataset repository (github.com/zhouhaoyi/ETDataset, folder ETT-small/, "
                   f"commit {ETT_COMMIT[:7]}; CC BY-ND 4.0): {url} . Put it in one of the directories above, or "
                   f"pass your own copy with -o path=/path/to/{name}.csv")


@dataclass
class Series:
    """A multivariate series: ``values float64 [rows, channels]`` and what they are."""

    values: np.ndarray
    columns: list[str]  # one name per channel
    path: str  # where it was read from
    time: list[str] | None = None  # the time-index column's cells, when the file has one
    time_column: str | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])


def aeon_series_path(name: str) -> Path | None:
    """``aeon/datasets/data/NAME/NAME.csv`` of the installed aeon wheel (read as a file; aeon is not imported)."""
    from fpt.data.aeon import aeon_data_root

    root = aeon_data_root()
    if root is None:
        return None
    path = root / name / f"{name}.csv"
    return path if path.is_file() else None


def bundled_series() -> list[str]:
    """The forecasting series aeon's wheel ships as ``NAME/NAME.csv``."""
    from fpt.data.aeon import aeon_data_root

    root = aeon_data_root()
    if root is None:
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / f"{d.name}.csv").is_file())


def _number(cell: str) -> float:
    return float(cell.strip())


def read_csv(path: str | Path, columns: list[str] | None = None, time_column: str | None = None) -> Series:
    """A CSV series. ``time_column``: the name of the time-index column (default: a column named like one,
    ``date``/``Date``/``Time``/..., or an unnamed first column); ``columns``: the value columns to keep (default:
    every other column). Raises :class:`ForecastDataError` naming the row and column of the first bad cell."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise ForecastDataError(f"forecast: {path} is not a text CSV file ({err})") from None
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()  # trailing blank lines
    if len(rows) < 2:
        raise ForecastDataError(f"forecast: {path}: {len(rows)} line(s); need a header row and at least one row of values")
    header = [h.strip() for h in rows[0]]
    if time_column is not None:
        if time_column not in header:
            raise ForecastDataError(f"forecast: {path}, row 1: no column {time_column!r} (time_column); the columns are "
                                    f"{', '.join(repr(h) for h in header)}")
        t_index: int | None = header.index(time_column)
    else:
        named = [i for i, h in enumerate(header) if h.lower() in TIME_COLUMNS]
        t_index = named[0] if named else None
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise ForecastDataError(f"forecast: {path}, row 1: no column {missing[0]!r}; the columns are "
                                    f"{', '.join(repr(h) for h in header)}")
        value_idx = [header.index(c) for c in columns]
    else:
        value_idx = [i for i in range(len(header)) if i != t_index]
        # an unnamed pandas index column ("", 0, 1, 2...) beside a named time column is not a channel (Uschange)
        value_idx = [i for i in value_idx if header[i] != "" or t_index is None]
    if not value_idx:
        raise ForecastDataError(f"forecast: {path}: no value column besides the time column {header[t_index]!r}")
    values = np.empty((len(rows) - 1, len(value_idx)), dtype=np.float64)
    for r, row in enumerate(rows[1:]):
        line = r + 2
        if len(row) != len(header):
            raise ForecastDataError(f"forecast: {path}, row {line}: {len(row)} cells, but the header has {len(header)} "
                                    "columns")
        for j, i in enumerate(value_idx):
            cell = row[i]
            try:
                v = _number(cell)
            except ValueError:
                what = "an empty cell" if not cell.strip() else f"{cell.strip()!r} is not a number"
                raise ForecastDataError(f"forecast: {path}, row {line}, column {header[i]!r}: {what}. Fix or fill the "
                                        "cell (fpt does not guess missing values)") from None
            if not math.isfinite(v):
                raise ForecastDataError(f"forecast: {path}, row {line}, column {header[i]!r}: {cell.strip()!r} (a missing "
                                        "or infinite value). Fill or interpolate it in the file; fpt does not guess")
            values[r, j] = v
    time = [row[t_index] for row in rows[1:]] if t_index is not None else None
    return Series(values, [header[i] or f"column{i}" for i in value_idx], str(path), time,
                  header[t_index] if t_index is not None else None)


def read_npz(path: str | Path, columns: list[str] | None = None) -> Series:
    """An ``.npz`` with ``series`` ``[rows, channels]`` (or ``[rows]``) and optionally ``columns`` (names)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if "series" not in z:
            raise ForecastDataError(f"forecast: {path} has no array 'series' (it holds {', '.join(z.files) or 'nothing'}); "
                                    "save it as np.savez(path, series=values) with values [rows, channels]")
        values = np.asarray(z["series"])
        names = [str(c) for c in z["columns"]] if "columns" in z else None
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ForecastDataError(f"forecast: {path}: 'series' must be numbers [rows, channels], got {values.dtype} "
                                f"{list(values.shape)}")
    names = names or [f"channel{i}" for i in range(values.shape[1])]
    if len(names) != values.shape[1]:
        raise ForecastDataError(f"forecast: {path}: {len(names)} column names for {values.shape[1]} channels")
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, c = (int(v) for v in bad[0])
        raise ForecastDataError(f"forecast: {path}, row {r} (0-based), column {names[c]!r}: {values[r, c]} (a missing or "
                                "infinite value). Fill it; fpt does not guess")
    series = Series(values.astype(np.float64), names, str(path))
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ForecastDataError(f"forecast: {path}: no column {missing[0]!r}; the columns are {', '.join(names)}")
        keep = [names.index(c) for c in columns]
        series = Series(series.values[:, keep], list(columns), str(path))
    return series


def read_series(path: str | Path, columns: list[str] | None = None, time_column: str | None = None) -> Series:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"forecast: {path}: no such file (a .csv with a header row, or an .npz with 'series')")
    if path.suffix == ".npz":
        return read_npz(path, columns)
    return read_csv(path, columns, time_column)


# -- splits and windows ---------------------------------------------------------------------------------
def borders(split: str, rows: int, lookback: int, horizon: int, train_fraction: float = 0.7,
            val_fraction: float = 0.1, path: str = "") -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of each split's windows (an evaluation split starts one look-back before
    its first target row). Raises :class:`ForecastDataError` when a split holds no whole window."""
    if split == "ett":
        b = ETT_HOUR_BORDERS
        if rows < b[3]:
            raise ForecastDataError(f"forecast: {path} has {rows} rows; split=ett needs the ETTh* layout's {b[3]} (train "
                                    f"0-{b[1]}, val {b[1]}-{b[2]}, test {b[2]}-{b[3]}). Use split=fraction for other series")
        ranges = {"train": (0, b[1]), "val": (b[1] - lookback, b[2]), "test": (b[2] - lookback, b[3])}
    elif split == "fraction":
        n_train = int(rows * train_fraction)
        n_test = int(rows * (1 - train_fraction - val_fraction))
        n_val = rows - n_train - n_test
        if n_val < 0 or n_test < 0:
            raise ForecastDataError(f"forecast: train_fraction + val_fraction must be at most 1, got {train_fraction} + "
                                    f"{val_fraction}")
        ranges = {"train": (0, n_train), "val": (n_train - lookback, n_train + n_val),
                  "test": (rows - n_test - lookback, rows)}
    else:
        raise ValueError(f"forecast: split must be one of {', '.join(SPLITS)}, got {split!r}")
    need = lookback + horizon
    for name, (start, end) in ranges.items():
        if start < 0 or end - start < need:
            raise ForecastDataError(
                f"forecast: {path} ({rows} rows): the {name} split (rows {max(start, 0)}-{end}) is too short for one "
                f"window of look-back {lookback} + horizon {horizon} = {need} rows. Use a shorter lookback or horizon, "
                "a longer series, or other split fractions")
    return ranges


def window_count(start: int, end: int, lookback: int, horizon: int) -> int:
    return end - start - lookback - horizon + 1


def windows(values: np.ndarray, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of ``values [rows, C]`` (stride 1): inputs ``[W, lookback, C]`` and targets ``[W, horizon, C]``
    (views, no copy)."""
    from numpy.lib.stride_tricks import sliding_window_view

    full = sliding_window_view(values, lookback + horizon, axis=0)  # [W, C, L + H]
    full = full.transpose(0, 2, 1)
    return full[:, :lookback], full[:, lookback:]


def z_statistics(train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of the training rows (sklearn StandardScaler); a constant channel
    has std 1 (only centred)."""
    mean = train_rows.mean(0)
    std = train_rows.std(0)
    return mean, np.where(std > 1e-12, std, 1.0)


def revin(lookback: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Instance normalisation of each window (GPT4TS / RevIN without the affine part): the mean and
    ``sqrt(var + eps)`` over the look-back, per window and channel; inputs ``[..., L]`` -> ``[..., 1]`` each."""
    mean = lookback.mean(-1, keepdims=True)
    std = np.sqrt(lookback.var(-1, keepdims=True) + eps)
    return mean, std


# -- baselines -----------------------------------------------------------------------------------------
def fit_linear(train: np.ndarray, lookback: int, horizon: int, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """LTSF-Linear's Linear (``individual=False``: one map for all channels) by least squares on every training
    window of every channel: ``y = x @ W + b``, ``W [lookback, horizon]``, ``b [horizon]``."""
    x, y = windows(train, lookback, horizon)  # [W, L, C], [W, H, C]
    xs = x.transpose(0, 2, 1).reshape(-1, lookback)
    ys = y.transpose(0, 2, 1).reshape(-1, horizon)
    a = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
    gram = a.T @ a
    if ridge:
        gram[:-1, :-1] += ridge * np.eye(lookback)
    # lstsq on the normal equations: the minimum-norm solution when windows are collinear (a constant series)
    coef = np.linalg.lstsq(gram, a.T @ ys, rcond=None)[0]
    return coef[:-1], coef[-1]


def baselines(train: np.ndarray, split_values: np.ndarray, lookback: int, horizon: int, season: int | None,
              std: np.ndarray, every: int = 1) -> dict[str, dict[str, Any]]:
    """MSE / MAE of the baselines on every window of ``split_values`` (z-scored ``[rows, C]``; ``every``: each
    ``every``-th window only), on the z-scored scale and in original units (``std``: the per-channel scale)."""
    x, y = windows(split_values, lookback, horizon)  # [W, L, C], [W, H, C]
    x, y = x[::every], y[::every]
    preds: dict[str, tuple[np.ndarray, str]] = {
        "repeat-last": (np.repeat(x[:, -1:, :], horizon, axis=1), "the last look-back value, repeated"),
    }
    if season and season <= lookback:
        idx = lookback - season + (np.arange(horizon) % season)
        preds[f"seasonal-naive ({season})"] = (x[:, idx, :], f"the value one season ({season} steps) earlier")
    w, b = fit_linear(train, lookback, horizon)
    linear = np.einsum("wlc,lh->whc", x, w) + b[None, :, None]
    preds["linear (least squares)"] = (linear, "LTSF-Linear's Linear (one map for all channels), closed-form least "
                                                "squares on the training windows")
    out = {}
    for name, (p, what) in preds.items():
        err = p - y
        out[name] = {"mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean()),
                     "mse_original": float(((err * std) ** 2).mean()), "mae_original": float(np.abs(err * std).mean()),
                     "windows": int(len(y)), "what": what}
    return out
