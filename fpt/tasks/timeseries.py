"""``timeseries``: classification or regression of the UCR / UEA / TSER archives' problems, or your own ``.ts`` files.

::

    fpt fit --task timeseries -o name=GunPoint --layers 2 --steps 100       # bundled with aeon: offline
    fpt fit --task timeseries -o name=Covid3Month                           # regression (from the header)
    fpt fit --task timeseries -o name=FordA                                 # online: downloaded once into the cache
    fpt fit --task timeseries -o path=my_TRAIN.ts                           # your own (and my_TEST.ts next to it)

**Data.** ``name=`` finds an archive problem as :func:`fpt.data.ts_archive.find_problem` describes
(``--data-dir``, ``$FPT_DATA_DIR``, the cache, the problems the ``aeon`` wheel ships; online, a
download from the archive's Zenodo record, checked for completeness and parsed: no published
checksums). ``path=`` is a ``NAME_TRAIN.ts`` (its ``NAME_TEST.ts`` next to it is the test split), a
directory holding one such pair, or a single ``.ts`` file (the test split is then carved from it,
``test_fraction``, and results say so). Classification or regression comes from the header
(``@classLabel`` / ``@targetLabel``); unlabelled files are refused. The test split is the archive's
own TEST file; validation is carved from TRAIN with a seeded permutation (``val_fraction``,
``split_seed``; stratified by class for classification), so fpt trains on 1 - val_fraction of the
archive's training cases, while the published baselines train on all of them.

**Normalisation** (statistics from the training split only, after the validation cases are taken
out; applied to every split): ``normalize=channel`` (default: each channel's mean and std over all
training time steps), ``global`` (one mean and std over every training value), ``series`` (each
series, each channel, by its own mean and std: no training statistics; removes level and scale),
``none``. A constant channel (std 0) is only centred.

**Tokens are patches over time** (GPT4TS, Zhou et al. 2023): the series is padded at its end by
repeating its last value ``stride`` times (``nn.ReplicationPad1d((0, stride))`` in GPT4TS; more if it
is shorter than a patch), then cut into windows of ``patch_size`` steps every ``stride`` steps:
``(length - patch_size) // stride + 2`` patches. ``channels=mixed`` (default, as GPT4TS
classification) puts all channels of a window into one token (``patch_size x channels`` values,
channel-minor); ``channels=independent`` gives each channel of a window its own token
(``patch_size`` values plus a one-hot channel id), ordered window by window, so no token mixes
channels and attention relates them. Variable-length series (``@equalLength false``) are
right-padded with a ``mask``; the head reads the last real token (``readout=last``) or the mean of
the real tokens (``readout=mean``).

**Missing values** (``?`` / ``NaN``): ``missing=error`` (default) stops with the file, count and
first line; ``missing=interpolate`` fills each gap linearly in time within its channel.

**Regression** targets are reported in their original units; the objective
(:class:`fpt.model.objectives.Regression`) standardises them with :meth:`target_statistics`.

**Forecasting** (GPT4TS's main use) is its own task, ``forecast`` (:mod:`fpt.tasks.forecast`): windows
of one long series, one channel per sample, GPT4TS's patching and flatten head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.data import ts, ts_archive
from fpt.base.options import FRACTION, SEEDS, at_least, bounded
from fpt.data.splits import ArraySplit, Split, TaskSpec
from fpt.tasks.base import NamedSplitsTask, register_task

NORMALIZE = ("channel", "global", "series", "none")
CHANNEL_MODES = ("mixed", "independent")
READOUTS = ("last", "mean")


class TimeSeriesDataError(ValueError):
    """The files of a time-series problem do not fit together (or with the options); says what to do."""


# -- preprocessing (shared by training and fpt predict) ----------------------------------------------
def patch_series(series: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """``[length, channels]`` -> ``[patches, patch_size, channels]``, GPT4TS's tail padding (see module doc)."""
    length = len(series)
    pad = max(stride, patch_size - length)
    padded = np.concatenate([series, np.repeat(series[-1:], pad, axis=0)], axis=0)
    n = (length + pad - patch_size) // stride + 1
    index = np.arange(n)[:, None] * stride + np.arange(patch_size)[None, :]
    return padded[index]


def num_patches(length: int, patch_size: int, stride: int) -> int:
    pad = max(stride, patch_size - length)
    return (length + pad - patch_size) // stride + 1


def tokens_of(series: np.ndarray, patch_size: int, stride: int, channels: str) -> np.ndarray:
    """One series ``[length, C]`` -> its tokens ``float32 [T, D]`` (``channels``: mixed or independent)."""
    patches = patch_series(series, patch_size, stride)  # [n, P, C]
    n, p, c = patches.shape
    if channels == "mixed":
        return patches.reshape(n, p * c).astype(np.float32)
    tokens = np.zeros((n, c, p + c), dtype=np.float32)
    tokens[:, :, :p] = patches.transpose(0, 2, 1)
    tokens[:, np.arange(c), p + np.arange(c)] = 1.0  # one-hot channel id
    return tokens.reshape(n * c, p + c)


def token_dim(patch_size: int, num_channels: int, channels: str) -> int:
    return patch_size * num_channels if channels == "mixed" else patch_size + num_channels


def normalise(series: list[np.ndarray], mode: str, mean: np.ndarray | None, std: np.ndarray | None) -> list[np.ndarray]:
    if mode == "none":
        return series
    if mode == "series":
        out = []
        for s in series:
            m, sd = s.mean(0, keepdims=True), s.std(0, keepdims=True)
            out.append((s - m) / np.where(sd > 1e-12, sd, 1.0))
        return out
    return [(s - mean) / std for s in series]


def train_statistics(series: list[np.ndarray], mode: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mean and std over every training time step: per channel (``channel``) or over everything (``global``)."""
    if mode in ("series", "none"):
        return None, None
    values = np.concatenate(series, axis=0)  # [sum of lengths, C]
    if mode == "global":
        mean = np.full(values.shape[1], values.mean())
        std = np.full(values.shape[1], values.std())
    else:
        mean, std = values.mean(0), values.std(0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant channel is only centred
    return mean.astype(np.float64), std.astype(np.float64)


def pad_tokens(tokens: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token sequences to ``width``: ``(float32 [N, width, D], bool mask [N, width])``."""
    d = tokens[0].shape[1]
    x = np.zeros((len(tokens), width, d), dtype=np.float32)
    mask = np.zeros((len(tokens), width), dtype=bool)
    for i, t in enumerate(tokens):
        x[i, : len(t)] = t
        mask[i, : len(t)] = True
    return x, mask


class TrimPadding:
    """An ``ArraySplit`` transform: cut a padded batch to its longest real sequence (less work per step).
    Picklable, for DataLoader workers."""

    augment = False

    def __call__(self, batch: dict[str, torch.Tensor], rng) -> dict[str, torch.Tensor]:
        longest = int(batch["mask"].sum(1).max())
        batch["x"] = batch["x"][:, :longest]
        batch["mask"] = batch["mask"][:, :longest]
        return batch


# -- the task -------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    x: dict[str, np.ndarray]  # split -> float32 [N, T, D] tokens (right-padded when variable length)
    mask: dict[str, np.ndarray]  # split -> bool [N, T]
    y: dict[str, np.ndarray]  # split -> int64 [N] classes or float32 [N, 1] targets (original units)


@register_task
class TimeSeries(NamedSplitsTask):
    name = "timeseries"
    description = ("UCR/UEA/TSER time-series classification or regression (.ts files): -o name=GunPoint "
                   "(bundled with aeon, or downloaded) or -o path=my_TRAIN.ts")

    @dataclass
    class Options:
        # an archive problem (GunPoint, BasicMotions, Covid3Month, ...): aeon's bundled files, --data-dir, the cache,
        # or downloaded
        name: str | None = None
        path: str | None = None  # your own files: NAME_TRAIN.ts (+ NAME_TEST.ts beside it), a directory holding them, or one .ts
        patch_size: int = bounded(8, at_least(1))  # time steps per token (GPT4TS classification: 8)
        stride: int | None = bounded(None, at_least(1))  # steps between token starts (None: patch_size, no overlap)
        # "mixed": one token holds every channel of a window; "independent": one token per channel and window
        channels: str = "mixed"
        normalize: str = "channel"  # "channel", "global", "series" or "none" (statistics from the training split)
        missing: str = "error"  # missing values (? / NaN): "error" or "interpolate" (linear in time)
        readout: str = "last"  # "last" real token or "mean" of real tokens
        val_fraction: float = bounded(0.2, FRACTION)  # validation carved from TRAIN (stratified by class for classification)
        # only for a single .ts file without a TEST file: the test split carved from it
        test_fraction: float = bounded(0.2, FRACTION)
        split_seed: int = bounded(0, SEEDS)  # seed of the carving (fixed across runs)
        download: bool = True  # fetch a missing archive problem into the cache (online)

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        o = options
        if bool(o.name) == bool(o.path):
            raise ValueError(f"{self.name}: give exactly one of -o name=PROBLEM (e.g. GunPoint) or -o path=FILE_OR_DIR"
                             + (f" (got name={o.name!r} and path={o.path!r})" if o.name else ""))
        if o.patch_size < 1:
            raise ValueError(f"{self.name}: patch_size must be >= 1, got {o.patch_size}")
        if o.stride is not None and o.stride < 1:
            raise ValueError(f"{self.name}: stride must be >= 1, got {o.stride}")
        for option, value, allowed in (("channels", o.channels, CHANNEL_MODES), ("normalize", o.normalize, NORMALIZE),
                                       ("missing", o.missing, ts.MISSING_POLICIES), ("readout", o.readout, READOUTS)):
            if value not in allowed:
                raise ValueError(f"{self.name}: option {option} must be one of {', '.join(allowed)}, got {value!r}")
        for option in ("val_fraction", "test_fraction"):
            if not 0 < getattr(o, option) < 1:
                raise ValueError(f"{self.name}: {option} must be in (0, 1), got {getattr(o, option)}")
        self.stride = o.stride or o.patch_size
        self._prepared: _Prepared | None = None
        self._info: dict[str, Any] = {}

    # -- loading ----------------------------------------------------------------------------------
    def _files(self) -> tuple[dict[str, Path | None], str]:
        o = self.options
        if o.name:
            return ts_archive.find_problem(o.name, self.data_dir, download=o.download, task=self.name), "archive"
        return ts_archive.find_user_files(o.path, self.data_dir), "your files"

    def _read(self, path: Path) -> ts.TSData:
        data = ts.fill_missing(ts.read_ts(path), self.options.missing, self.name)
        if data.kind == "unlabelled":
            raise TimeSeriesDataError(
                f"{self.name}: {path} has no labels (@classLabel false, or no label field): it is not a "
                "classification or regression problem. Add the labels, or use a labelled problem")
        return data

    def _load(self) -> _Prepared:
        if self._prepared is not None:
            return self._prepared
        o = self.options
        files, origin = self._files()
        train_file = self._read(files["train"])
        test_file = self._read(files["test"]) if files.get("test") else None
        kind = train_file.kind
        if test_file is not None:
            self._check_compatible(train_file, test_file)
        rng = np.random.default_rng(o.split_seed)
        n_file = len(train_file)
        if test_file is None:  # one file: test carved first, then validation from the rest
            rest, test_idx = self._carve(train_file, np.arange(n_file), o.test_fraction, rng, "test")
        else:
            rest, test_idx = np.arange(n_file), None
        train_idx, val_idx = self._carve(train_file, rest, o.val_fraction, rng, "validation")

        classes = train_file.class_values if kind == "classification" else ()
        if kind == "classification" and len(classes) < 2:
            raise TimeSeriesDataError(f"{self.name}: {files['train']}: {len(classes)} class: need at least 2")
        if kind == "classification" and test_file is not None:
            unknown = [(lab, int(n)) for lab, n in zip(test_file.labels, test_file.lines) if lab not in classes]
            if unknown:
                raise TimeSeriesDataError(f"{self.name}: {files['test']}, line {unknown[0][1]}: class {unknown[0][0]!r} "
                                          f"is not a class of the training file ({' '.join(classes)})")
        class_index = {c: i for i, c in enumerate(classes)}

        def take(data: ts.TSData, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
            series = [data.series[int(i)] for i in idx]
            if kind == "classification":
                y = np.asarray([class_index[data.labels[int(i)]] for i in idx], dtype=np.int64)
            else:
                y = data.targets[idx].astype(np.float32).reshape(-1, 1)
            return series, y

        raw = {"train": take(train_file, train_idx), "val": take(train_file, val_idx)}
        if test_file is not None:
            raw["test"] = take(test_file, np.arange(len(test_file)))
        else:
            raw["test"] = take(train_file, test_idx)

        mean, std = train_statistics(raw["train"][0], o.normalize)
        tokens = {split: [tokens_of(s, o.patch_size, self.stride, o.channels)
                          for s in normalise(series, o.normalize, mean, std)]
                  for split, (series, _) in raw.items()}
        lengths = np.array([len(t) for toks in tokens.values() for t in toks])
        width = int(lengths.max())
        padded = bool((lengths != width).any())  # any series shorter than the longest: masks and last-token readout
        x, mask = {}, {}
        for split, toks in tokens.items():
            x[split], mask[split] = pad_tokens(toks, width)
        self._prepared = _Prepared(x, mask, {split: y for split, (_, y) in raw.items()})
        all_lengths = np.concatenate([train_file.lengths] + ([test_file.lengths] if test_file is not None else []))
        self._padded = padded
        self._kind = kind
        self._classes = tuple(classes)
        self._channels = train_file.num_channels
        self._train_length = equal_length(train_file)
        self._stats = (mean, std)
        self._width = width
        ytrain = self._prepared.y["train"]
        if kind == "regression":
            tmean, tstd = ytrain.astype(np.float64).mean(0), ytrain.astype(np.float64).std(0)
            if not (tstd > 0).all():
                raise TimeSeriesDataError(f"{self.name}: every training target is {float(tmean[0])!r}: nothing to learn")
            self._target_stats = (tmean, tstd)
        problem = o.name or train_file.header.problem_name or Path(files["train"]).name.split("_TRAIN")[0]
        self._info = {
            "problem": problem, "origin": origin, "kind": kind,
            "files": {k: str(v) for k, v in files.items() if v is not None},
            "test_split": "the TEST file" if test_file is not None else f"carved from the one file ({o.test_fraction:g})",
            "official_split": test_file is not None,
            "n_train_file": n_file, "n_test": int(len(raw["test"][1])),
            "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
            "channels": self._channels, "length_min": int(all_lengths.min()), "length_max": int(all_lengths.max()),
            "tokens_max": width, "classes": list(classes), "normalize": o.normalize,
            "missing_values": train_file.missing_count() + (test_file.missing_count() if test_file is not None else 0),
            "trivial_baseline": self._trivial_baseline(),
        }
        return self._prepared

    def _trivial_baseline(self) -> dict[str, Any]:
        """What a model that ignores the series scores on the test split: the training split's majority
        class (accuracy) or its mean target (rmse, mae). Any model should beat it."""
        p = self._prepared
        ytrain, ytest = p.y["train"], p.y["test"]
        if self._kind == "classification":
            majority = int(np.bincount(ytrain, minlength=len(self._classes)).argmax())
            return {"predictor": "the training split's majority class", "accuracy": float((ytest == majority).mean())}
        err = ytest.astype(np.float64) - ytrain.astype(np.float64).mean(0)
        return {"predictor": "the training split's mean target", "rmse": float(np.sqrt((err ** 2).mean())),
                "mae": float(np.abs(err).mean())}

    def _check_compatible(self, train: ts.TSData, test: ts.TSData) -> None:
        if train.kind != test.kind:
            raise TimeSeriesDataError(f"{self.name}: {train.path} is {train.kind} but {test.path} is {test.kind}")
        if train.num_channels != test.num_channels:
            raise TimeSeriesDataError(f"{self.name}: {train.path} has {train.num_channels} channels but {test.path} "
                                      f"has {test.num_channels}")
        check_length(test, equal_length(train), f"{self.name}: ", f"TRAIN ({train.path.name})")

    def _carve(self, data: ts.TSData, pool: np.ndarray, fraction: float, rng: np.random.Generator,
               what: str) -> tuple[np.ndarray, np.ndarray]:
        """Split ``pool`` into (kept, carved): ``fraction`` of it, stratified by class for classification
        (every class with at least 2 cases keeps one and gives one)."""
        if data.kind == "classification":
            labels = np.asarray(data.labels, dtype=object)[pool]
            carved = []
            for c in sorted(set(labels.tolist())):
                members = pool[labels == c]
                members = members[rng.permutation(len(members))]
                k = int(round(fraction * len(members)))
                k = min(max(k, 1 if len(members) >= 2 else 0), len(members) - 1)
                carved.append(members[:k])
            carved = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
        else:
            k = min(max(1, int(round(fraction * len(pool)))), len(pool) - 1)
            carved = np.sort(pool[rng.permutation(len(pool))[:k]])
        kept = np.setdiff1d(pool, carved)
        if len(carved) == 0 or len(kept) == 0:
            raise TimeSeriesDataError(f"{self.name}: {data.path}: {len(pool)} cases are too few to carve a {what} "
                                      f"split ({fraction:g}) from")
        return kept, carved

    # -- what the model and the objective need ---------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        self._load()
        o = self.options
        regression = self._kind == "regression"
        return TaskSpec(input_type="continuous", input_dim=token_dim(o.patch_size, self._channels, o.channels),
                        max_tokens=self._width, num_classes=1 if regression else len(self._classes),
                        num_labels=1, readout=o.readout, padded=self._padded,
                        output="regression" if regression else "classification")

    def target_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the training targets, per target (regression only)."""
        self._load()
        if self._kind != "regression":
            raise ValueError(f"{self.name}: {self._info['problem']} is a classification problem: no target statistics")
        return self._target_stats

    def describe_data(self) -> dict[str, Any]:
        """Which data exactly (recorded in results.json ``data``; reports match published numbers on it)."""
        self._load()
        return dict(self._info)

    @property
    def classes(self) -> tuple[str, ...]:
        self._load()
        return self._classes

    def prediction_layout(self) -> "TimeSeriesLayout":
        self._load()
        o = self.options
        mean, std = self._stats
        return TimeSeriesLayout(
            problem=self._info["problem"], output=self._kind, channels=self._channels, channel_mode=o.channels,
            patch_size=o.patch_size, stride=self.stride, normalize=o.normalize, missing=o.missing,
            mean=None if mean is None else [float(v) for v in mean], std=None if std is None else [float(v) for v in std],
            classes=list(self._classes), max_tokens=self._width, padded=self._padded, train_length=self._train_length)

    # -- splits -----------------------------------------------------------------------------------
    def _split(self, name: str, training: bool = False) -> Split:
        p = self._load()
        arrays = {"x": p.x[name], "y": p.y[name]}
        if self._padded:
            arrays["mask"] = p.mask[name]
        return ArraySplit(arrays, shuffle_seed=self.seed if training else None,
                          transform=TrimPadding() if self._padded else None)


def equal_length(data: ts.TSData) -> int | None:
    """The one length of every series of ``data``, or None when the lengths vary."""
    lengths = set(data.lengths.tolist())
    return lengths.pop() if len(lengths) == 1 else None


def check_length(data: ts.TSData, length: int | None, prefix: str, trained_on: str) -> None:
    """When training saw one series length only, a series of another length is refused: longer, it reaches
    positions that never trained; shorter, the read-out sits where it never did. Variable-length training
    (padding and masks) accepts any length up to the position table."""
    if length is None:
        return
    other = np.flatnonzero(data.lengths != length)
    if len(other):
        i = int(other[0])
        raise TimeSeriesDataError(
            f"{prefix}{data.path}, line {int(data.lines[i])}: a series of length {int(data.lengths[i])}; every training "
            f"series has length {length} ({trained_on}), so the model never saw positions or read-outs of this one "
            f"({len(other)} of {len(data)} cases differ). Crop or resample the series to length {length}, or train on "
            "series of both lengths")


# -- fpt predict ------------------------------------------------------------------------------------
@dataclass
class TimeSeriesLayout:
    """How a trained run turns a ``.ts`` file into model input (``prediction_layout.json``)."""

    problem: str
    output: str  # classification | regression
    channels: int
    channel_mode: str
    patch_size: int
    stride: int
    normalize: str
    missing: str
    mean: list[float] | None
    std: list[float] | None
    classes: list[str]
    max_tokens: int
    padded: bool
    kind: str = "timeseries"
    train_length: int | None = None  # the one length of every training series; None: lengths vary (or an older run)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimeSeriesLayout":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def load_for_prediction(path: str | Path, layout: dict[str, Any] | TimeSeriesLayout, data_dir=None) -> tuple[Split, ts.TSData]:
    """A ``.ts`` file as model input, preprocessed exactly as in training; labels (classes or targets)
    are returned as ``y`` when the file has them. Returns ``(split, the file's data)``."""
    if isinstance(layout, dict):
        layout = TimeSeriesLayout.from_dict(layout)
    files = ts_archive.find_user_files(path, data_dir)
    data = ts.fill_missing(ts.read_ts(files["train"]), layout.missing, "predict")
    if data.num_channels != layout.channels:
        raise TimeSeriesDataError(f"predict: {data.path} has {data.num_channels} channels; the run was trained on "
                                  f"{layout.channels} ({layout.problem})")
    check_length(data, layout.train_length, "predict: ", f"the run's, {layout.problem}")
    mean = None if layout.mean is None else np.asarray(layout.mean)
    std = None if layout.std is None else np.asarray(layout.std)
    tokens = [tokens_of(s, layout.patch_size, layout.stride, layout.channel_mode)
              for s in normalise(data.series, layout.normalize, mean, std)]
    longest = max(len(t) for t in tokens)
    if longest > layout.max_tokens:
        worst = int(data.lines[int(np.argmax([len(t) for t in tokens]))])
        raise TimeSeriesDataError(f"predict: {data.path}, line {worst}: a series of {longest} tokens; the run was "
                                  f"trained with at most {layout.max_tokens} (its position table ends there)")
    x, mask = pad_tokens(tokens, longest)
    arrays: dict[str, np.ndarray] = {"x": x}
    padded = layout.padded or len({len(t) for t in tokens}) > 1
    if padded:
        arrays["mask"] = mask
    if data.kind == "classification" and layout.output == "classification":
        index = {c: i for i, c in enumerate(layout.classes)}
        unknown = [(lab, int(n)) for lab, n in zip(data.labels, data.lines) if lab not in index]
        if unknown:
            raise TimeSeriesDataError(f"predict: {data.path}, line {unknown[0][1]}: class {unknown[0][0]!r} is not "
                                      f"one the run was trained on ({' '.join(layout.classes)})")
        arrays["y"] = np.asarray([index[lab] for lab in data.labels], dtype=np.int64)
    elif data.kind == "regression" and layout.output == "regression":
        arrays["y"] = data.targets.astype(np.float32).reshape(-1, 1)
    elif data.kind != "unlabelled":
        raise TimeSeriesDataError(f"predict: {data.path} holds {data.kind} labels; the run is {layout.output}")
    return ArraySplit(arrays, transform=TrimPadding() if padded else None), data
