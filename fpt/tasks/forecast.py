"""``forecast``: the next ``horizon`` values of every channel of a long series, from the ``lookback`` before them
(GPT4TS / PatchTST / LTSF-Linear's long-horizon benchmark, with the field's protocol).

::

    fpt fit --config forecast-etth1                                     # ETTh1, look-back 336, H=96 (the preset)
    fpt fit --task forecast -o name=ETTh1 -o lookback=336 -o horizon=96  # ETT by name: /work-free, fetched online once
    fpt fit --task forecast -o name=Airline -o lookback=24 -o horizon=12 # aeon's bundled series, offline
    fpt fit --task forecast -o path=my.csv -o lookback=96 -o horizon=24  # your own CSV (a date column + numbers) or .npz
    fpt predict RUN_DIR --data my.csv --out next.csv                    # the next H values after the file's last row

**Data** (:mod:`fpt.data.forecast`). ``name=ETTh1`` / ``ETTh2``: the ETDataset CSV, found by the data
store (``--data-dir``, ``$FPT_DATA_DIR``, the cache) or, online, fetched with pooch from the ETDataset
repository at commit ``1d16c8f`` and checked against its sha256; offline, the message says where to put it.
``name=Airline`` (``Lynx``, ``ShampooSales``, ``Uschange``...): aeon's bundled series. ``path=``: your own CSV
(one time-index column, e.g. ``date``, and numeric columns; ``columns=`` picks some) or ``.npz``
(``series [rows, channels]``). A bad file (missing column, non-numeric or empty cell, NaN, too short for
look-back + horizon) stops with its row and column.

**Split.** ``split=auto`` (default): the ETT benchmark's borders for ``name=ETTh1/ETTh2`` (train rows
0-8640, val 8640-11520, test 11520-14400, val and test windows starting one look-back before their border,
rows after 14400 never used), ``fraction`` otherwise (``train_fraction``, ``val_fraction``, the rest test,
in time order; LTSF-Linear's ``Dataset_Custom`` uses 0.7 / 0.1 / 0.2). Every window of every split is used
(stride 1): **no drop_last**, unlike the published loaders (results.json ``data.windows`` says how many).

**Scaling and tokens.** Every row is z-scored per channel with the training rows' mean and std (the
published protocol). ``instance_norm=true`` (default, GPT4TS / PatchTST's RevIN without affine weights)
further normalises each look-back window by its own mean and ``sqrt(var + 1e-5)``; the prediction is mapped
back before the loss, so the loss and ``mse`` / ``mae`` are always on the z-scored scale, as published
(``mse_original`` / ``mae_original``: in the series' units). **Channel independence** (GPT4TS, PatchTST):
each channel of each window is its own sample (``windows x channels`` samples per split, so a batch of B
samples holds B channel-windows), cut into patches of ``patch_size`` every ``stride`` steps after
repeating the last value ``stride`` times (GPT4TS's ``ReplicationPad1d``: ``(lookback - patch) // stride + 2``
tokens, 42 at 336 / 16 / 8). The head reads every token (``readout=flatten``: GPT4TS's flatten + linear).

**Batches.** ``x float32 [B, tokens, patch_size]``; ``y float32 [B, horizon + 3]``: the ``horizon`` z-scored
targets, then the window's location and scale (what the model's outputs are multiplied by and shifted by to
be z-scored values; 0 and 1 without instance norm) and the channel's index (for the original units):
the :class:`fpt.model.objectives.Forecast` objective reads that layout.

**Baselines** on the same test windows (results.json ``data.baselines``): repeat-last, seasonal naive
(``season``; 24 for ETT's hourly rows) and LTSF-Linear's Linear by least squares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.data import forecast as fc
from fpt.base.options import FRACTION, at_least, bounded
from fpt.data.splits import ArraySplit, Split, TaskSpec
from fpt.tasks.base import NamedSplitsTask, register_task

ETT_NAMES = ("ETTh1", "ETTh2")
SPLIT_CHOICES = ("auto",) + fc.SPLITS


def num_patches(lookback: int, patch_size: int, stride: int) -> int:
    """GPT4TS's token count: ``(lookback - patch_size) // stride + 1`` windows plus one from the padding."""
    return (lookback - patch_size) // stride + 2


def patch_windows(look: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """``[B, L]`` look-back values -> ``[B, tokens, patch_size]``: the last value repeated ``stride`` times
    (``nn.ReplicationPad1d((0, stride))``), then ``unfold(size=patch_size, step=stride)``, as GPT4TS."""
    padded = np.concatenate([look, np.repeat(look[:, -1:], stride, axis=1)], axis=1)
    n = num_patches(look.shape[1], patch_size, stride)
    index = np.arange(n)[:, None] * stride + np.arange(patch_size)[None, :]
    return padded[:, index]


def model_inputs(look: np.ndarray, patch_size: int, stride: int,
                 instance_norm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-scored look-backs ``[B, L]`` -> (tokens ``float32 [B, T, P]``, loc ``[B]``, scale ``[B]``): the map from
    the model's output scale back to z-scored values (instance norm; else 0 and 1). Training and predict share it."""
    if instance_norm:
        loc, scale = fc.revin(look)
        look = (look - loc) / scale
        loc, scale = loc[:, 0], scale[:, 0]
    else:
        loc, scale = np.zeros(len(look)), np.ones(len(look))
    return patch_windows(look, patch_size, stride).astype(np.float32), loc, scale


class ForecastWindows:
    """An ``ArraySplit`` transform: sample ids (``channel * windows + window``, GPT4TS's order) -> the batch
    (``x`` tokens, ``y`` targets + loc + scale + channel). Windows are cut on the fly from the split's
    z-scored rows, so memory holds the series, not every window. Picklable, for DataLoader workers."""

    augment = False

    def __init__(self, values: np.ndarray, lookback: int, horizon: int, patch_size: int, stride: int,
                 instance_norm: bool):
        self.values = np.ascontiguousarray(values, dtype=np.float64)  # [rows, C], z-scored
        self.lookback, self.horizon, self.patch_size, self.stride = lookback, horizon, patch_size, stride
        self.instance_norm = instance_norm
        self.windows = fc.window_count(0, len(values), lookback, horizon)

    def __call__(self, batch: dict[str, torch.Tensor], rng) -> dict[str, torch.Tensor]:
        ids = batch.pop("sample").numpy()
        channel, start = ids // self.windows, ids % self.windows
        rows = start[:, None] + np.arange(self.lookback + self.horizon)[None, :]
        series = self.values[rows, channel[:, None]]  # [B, L + H]
        look, target = series[:, : self.lookback], series[:, self.lookback:]
        x, loc, scale = model_inputs(look, self.patch_size, self.stride, self.instance_norm)
        y = np.concatenate([target, loc[:, None], scale[:, None], channel[:, None].astype(np.float64)], axis=1)
        batch["x"] = torch.from_numpy(x)
        batch["y"] = torch.from_numpy(y.astype(np.float32))
        return batch


@register_task
class Forecast(NamedSplitsTask):
    name = "forecast"
    description = ("long-horizon forecasting of a multivariate series (ETTh1/ETTh2, aeon's series, your CSV or npz): "
                   "-o name=ETTh1 -o lookback=336 -o horizon=96")

    @dataclass
    class Options:
        name: str | None = None  # ETTh1 / ETTh2 (the store, or fetched online) or an aeon series (Airline, Lynx, ...)
        path: str | None = None  # your own series: a .csv (a time column + numeric columns) or an .npz with 'series'
        columns: str | None = None  # comma-separated value columns to use (default: every column but the time column)
        time_column: str | None = None  # the CSV's time-index column (default: one named date/time/..., or unnamed)
        lookback: int = bounded(336, at_least(1))  # input steps per window (GPT4TS, DLinear, PatchTST/42: 336)
        horizon: int = bounded(96, at_least(1))  # steps to predict (the benchmark: 96, 192, 336, 720)
        patch_size: int = bounded(16, at_least(1))  # steps per token (GPT4TS / PatchTST: 16)
        stride: int = bounded(8, at_least(1))  # steps between token starts (GPT4TS / PatchTST: 8)
        split: str = "auto"  # auto (ett for ETTh1/ETTh2, else fraction), ett (rows 8640/11520/14400), fraction
        train_fraction: float = bounded(0.7, FRACTION)  # split=fraction: the first rows for training
        val_fraction: float = bounded(0.1, FRACTION)  # split=fraction: the next rows for validation (the rest: test)
        instance_norm: bool = True  # RevIN-style: each look-back window by its own mean and std (GPT4TS)
        season: int | None = bounded(None, at_least(1))  # seasonal-naive period (default: 24 for ETT, else none)
        # evaluate every k-th window of val and test (1: every window, the protocol; more: a cheaper, labelled subset)
        eval_stride: int = bounded(1, at_least(1))
        download: bool = True  # fetch ETTh1 / ETTh2 into the cache when missing (online)

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        o = self.options
        if bool(o.name) == bool(o.path):
            raise ValueError(f"{self.name}: give exactly one of -o name=ETTh1 (or an aeon series) and -o path=FILE"
                             + (f" (got name={o.name!r} and path={o.path!r})" if o.name else ""))
        if o.split not in SPLIT_CHOICES:
            raise ValueError(f"{self.name}: option split must be one of {', '.join(SPLIT_CHOICES)}, got {o.split!r}")
        if o.patch_size > o.lookback:
            raise ValueError(f"{self.name}: patch_size {o.patch_size} is longer than the look-back {o.lookback}")
        if o.split != "ett" and not o.train_fraction + o.val_fraction < 1:
            raise ValueError(f"{self.name}: train_fraction + val_fraction must be below 1 (the rest is the test split), "
                             f"got {o.train_fraction} + {o.val_fraction}")
        self._loaded = False

    # -- loading ------------------------------------------------------------------------------------
    def _file(self) -> tuple[Path, str]:
        o = self.options
        if o.path:
            return Path(o.path).expanduser(), "your file"
        if o.name in ETT_NAMES:
            from fpt.data.store import ensure_files

            found = ensure_files(fc.ett_dataset(o.name), self.data_dir, task=self.name, download_ok=o.download)
            return found[f"{o.name}.csv"], "ETDataset"
        path = fc.aeon_series_path(o.name)
        if path is None:
            known = ", ".join(ETT_NAMES + tuple(fc.bundled_series()))
            raise ValueError(f"{self.name}: unknown series {o.name!r}. Known by name: {known}; or pass your own file "
                             "with -o path=FILE.csv")
        return path, "aeon"

    def _load(self) -> None:
        if self._loaded:
            return
        o = self.options
        path, origin = self._file()
        columns = [c.strip() for c in o.columns.split(",") if c.strip()] if o.columns else None
        series = fc.read_series(path, columns, o.time_column)
        split = o.split if o.split != "auto" else ("ett" if o.name in ETT_NAMES else "fraction")
        self._borders = fc.borders(split, series.rows, o.lookback, o.horizon, o.train_fraction, o.val_fraction,
                                   str(path))
        train = series.values[slice(*self._borders["train"])]
        self.mean, self.std = fc.z_statistics(train)
        self._z = (series.values - self.mean) / self.std
        self._series = series
        self._split_name = split
        season = o.season if o.season is not None else (24 if o.name in ETT_NAMES else None)
        windows = {k: fc.window_count(a, b, o.lookback, o.horizon) for k, (a, b) in self._borders.items()}
        counted = {k: len(range(0, w, 1 if k == "train" else o.eval_stride)) for k, w in windows.items()}
        z_train = self._z[slice(*self._borders["train"])]
        self._info = {
            "problem": o.name or path.stem, "origin": origin, "file": str(path), "rows": series.rows,
            "channels": series.channels, "columns": series.columns, "time_column": series.time_column,
            "split": split, "borders": {k: list(v) for k, v in self._borders.items()},
            "rows_unused": series.rows - self._borders["test"][1],
            "lookback": o.lookback, "horizon": o.horizon, "patch_size": o.patch_size, "stride": o.stride,
            "tokens": num_patches(o.lookback, o.patch_size, o.stride), "instance_norm": o.instance_norm,
            "windows": windows, "windows_counted": counted,
            "samples": {k: v * series.channels for k, v in counted.items()}, "drop_last": False,
            "eval_stride": o.eval_stride,
            "windows_note": ("every window of every split is counted (stride 1, no drop_last)" if o.eval_stride == 1 else
                             f"training on every window; validation and test on one window in {o.eval_stride} only "
                             f"({counted['test']} of {windows['test']} test windows; a subset, not the protocol's "
                             "every window), no drop_last") + "; a sample is one channel of one window (channel "
                            "independence)",
            "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
            "season": season,
            # on every window, and (eval_stride > 1) on the windows the model is evaluated on
            "baselines": {s: fc.baselines(z_train, self._z[slice(*self._borders[s])], o.lookback, o.horizon, season,
                                          self.std) for s in ("val", "test")},
            "baselines_counted": {s: fc.baselines(z_train, self._z[slice(*self._borders[s])], o.lookback, o.horizon,
                                                  season, self.std, every=o.eval_stride) for s in ("val", "test")}
            if o.eval_stride > 1 else None,
        }
        self._loaded = True

    # -- what the model and the objective need -------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        o = self.options
        return TaskSpec(input_type="continuous", input_dim=o.patch_size,
                        max_tokens=num_patches(o.lookback, o.patch_size, o.stride), num_classes=1,
                        num_labels=o.horizon, readout="flatten", output="forecast")

    def channel_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The training rows' mean and std per channel (z-scored -> original units)."""
        self._load()
        return self.mean, self.std

    def describe_data(self) -> dict[str, Any]:
        self._load()
        return dict(self._info)

    def prediction_layout(self) -> "ForecastLayout":
        self._load()
        o = self.options
        return ForecastLayout(problem=self._info["problem"], columns=list(self._series.columns),
                              time_column=self._series.time_column, lookback=o.lookback, horizon=o.horizon,
                              patch_size=o.patch_size, stride=o.stride, instance_norm=o.instance_norm,
                              mean=[float(v) for v in self.mean], std=[float(v) for v in self.std])

    # -- splits -----------------------------------------------------------------------------------
    def split_values(self, name: str) -> np.ndarray:
        """The z-scored rows of a split (an evaluation split starts one look-back before its border)."""
        self._load()
        return self._z[slice(*self._borders[name])]

    def _split(self, name: str, training: bool = False) -> Split:
        o = self.options
        values = self.split_values(name)
        transform = ForecastWindows(values, o.lookback, o.horizon, o.patch_size, o.stride, o.instance_norm)
        every = 1 if training else o.eval_stride
        starts = np.arange(0, transform.windows, every, dtype=np.int64)
        ids = (np.arange(values.shape[1], dtype=np.int64)[:, None] * transform.windows + starts[None, :]).reshape(-1)
        return ArraySplit({"sample": ids}, shuffle_seed=self.seed if training else None, transform=transform)


# -- fpt predict --------------------------------------------------------------------------------------
@dataclass
class ForecastLayout:
    """How a trained forecasting run turns a file's last ``lookback`` rows into model input
    (``prediction_layout.json``)."""

    problem: str
    columns: list[str]
    time_column: str | None
    lookback: int
    horizon: int
    patch_size: int
    stride: int
    instance_norm: bool
    mean: list[float]
    std: list[float]
    kind: str = "forecast"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ForecastLayout":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@torch.no_grad()
def forecast_file(model, layout: dict[str, Any] | ForecastLayout, path: str | Path) -> dict[str, Any]:
    """The next ``horizon`` values of each channel after the last row of ``path`` (the run's columns, read and
    z-scored as in training): ``{"columns", "values" [H, C] in original units, "rows", "last_time"}``."""
    if isinstance(layout, dict):
        layout = ForecastLayout.from_dict(layout)
    series = fc.read_series(path, layout.columns, layout.time_column)
    if series.rows < layout.lookback:
        raise fc.ForecastDataError(f"predict: {path} has {series.rows} rows; the run forecasts from the last "
                                   f"{layout.lookback} (its look-back): give at least that many")
    mean, std = np.asarray(layout.mean), np.asarray(layout.std)
    z = (series.values[-layout.lookback:] - mean) / std  # [L, C]
    x, loc, scale = model_inputs(z.T, layout.patch_size, layout.stride, layout.instance_norm)  # one sample per channel
    out = model(torch.from_numpy(x)).float().reshape(len(x), layout.horizon).numpy()
    z_pred = out * scale[:, None] + loc[:, None]  # [C, H]
    values = z_pred.T * std + mean  # [H, C], original units
    return {"columns": layout.columns, "values": values, "rows": series.rows,
            "last_time": series.time[-1] if series.time else None, "time_column": series.time_column}
