"""The user's own data as ``.npz`` arrays: loading, validation, splitting and preprocessing.

File layout (``np.savez``; loaded with ``allow_pickle=False``):

* ``x`` and ``y``: everything, split here into train / val / test with a seeded permutation
  (``val_fraction``, ``test_fraction``, ``split_seed``); or
* ``x_train``, ``y_train`` and optionally ``x_val``/``y_val`` and ``x_test``/``y_test``: the
  splits given are used as they are, missing ones are carved from train the same way.

``x`` (per split) is one of (``kind="auto"`` decides from shape and dtype; set ``kind`` to override):

* ``[N, T]`` integer: discrete token ids ``>= 0`` (``kind="discrete"``); the vocabulary is
  ``0..max id`` over all splits, shifted by one inside the model so that id 0 stays padding;
* ``[N, T, D]`` floating point: continuous token sequences (``kind="tokens"``);
* ``[N, H, W]`` integer or ``[N, H, W, C]``: images (``kind="image"``), cut into
  ``patch_size x patch_size`` patches (see :func:`fpt.data.patching.patchify`); ``uint8`` pixels are
  scaled by 1/255 first.

Continuous inputs are standardised (per channel for images, per feature for tokens) with the
training split's mean and std unless ``normalize=false``. ``y`` holds integer labels ``0..C-1``
(``C`` from the ``num_classes`` option, else ``max label + 1``).

Every problem is reported precisely (:class:`ArrayDataError`): which array, the shape or dtype
seen and the one expected, the number and first index of NaN / inf values or bad labels, empty
splits, and image sizes that the patch size does not divide.

For a later ``fpt predict``: a trained task's :class:`ArrayLayout` (``task.prediction_layout()``,
JSON-able via ``to_dict``) records the shape, patching and normalisation statistics, and
:func:`load_arrays_for_prediction` checks new data against it and preprocesses it identically.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt.data.patching import channel_stats, check_patch_size, patchify
from fpt.data.splits import ArraySplit, TaskSpec
from fpt.base.text import close_matches

KINDS = ("auto", "tokens", "discrete", "image")
SPLIT_KEYS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}
ALLOWED_KEYS = ("x", "y") + tuple(k for pair in SPLIT_KEYS.values() for k in pair)
EXPECTED_SHAPES = "[N, T] integer tokens, [N, T, D] continuous tokens, [N, H, W] or [N, H, W, C] images"
# The model's size follows the data: a head of hidden x classes, an input table of vocabulary x hidden. One
# stray label of 1e9 (or a token id of 2^40) would ask for terabytes: refuse, saying what to do, above these.
MAX_CLASSES = 100_000
MAX_VOCAB = 262_144


class ArrayDataError(ValueError):
    """Something is wrong with the user's arrays; the message says exactly what."""


# -- loading ----------------------------------------------------------------------------------
def resolve_path(path: str | os.PathLike, data_dir: str | None = None) -> Path:
    p = Path(path).expanduser()
    if p.is_file() or p.is_absolute():
        return p
    for base in (data_dir, os.environ.get("FPT_DATA_DIR")):
        if base and (Path(base).expanduser() / p).is_file():
            return Path(base).expanduser() / p
    return p


def load_npz(path: str | os.PathLike, what: str = "array") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded with ``allow_pickle=False``."""
    path = Path(path)
    if not path.is_file():
        raise ArrayDataError(f"{what}: file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x93NUMPY"):  # numpy would guess a pickle and say so
        ts_like = path.suffix.lower() == ".ts" or head.lstrip().startswith((b"@", b"#", b"%"))
        hint = (". It looks like a .ts time-series file: use --task timeseries -o path=" + str(path) if ts_like else
                f" (it starts with {head[:16]!r})")
        raise ArrayDataError(f"{what}: {path} is not an .npz archive{hint}; an npz is written with "
                             "numpy.savez(path, x=..., y=...)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArrayDataError(f"{what}: {path} is not a readable .npz file ({type(e).__name__}: {e}); "
                             f"write it with numpy.savez(path, x=..., y=...)") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ArrayDataError(f"{what}: {path} holds a single array, not an .npz archive of named arrays; "
                             f"write it with numpy.savez(path, x=..., y=...)")
    out = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as e:
                if "allow_pickle" in str(e) or "Object arrays" in str(e):
                    raise ArrayDataError(
                        f"{what}: array {key!r} in {path} holds Python objects (dtype=object), which are never "
                        f"loaded (allow_pickle=False, for safety); save plain numeric arrays, e.g. stack a list "
                        f"of equal-shape samples with np.stack"
                    ) from None
                raise ArrayDataError(f"{what}: array {key!r} in {path} cannot be read ({e})") from None
    return out


# -- checks -----------------------------------------------------------------------------------
def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask.reshape(-1))[0]), mask.shape))


def _fmt_index(idx: tuple[int, ...]) -> str:
    return f"sample {idx[0]} at index {idx}" if len(idx) > 1 else f"index {idx[0]}"


def check_numeric(name: str, a: np.ndarray) -> None:
    if a.dtype == object:
        raise ArrayDataError(f"array {name!r}: dtype object is not supported; expected integer or floating point")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise ArrayDataError(f"array {name!r}: dtype {a.dtype} is not supported; expected integer or floating point")


def check_finite(name: str, a: np.ndarray) -> None:
    if not np.issubdtype(a.dtype, np.floating):
        return
    nan = np.isnan(a)
    inf = np.isinf(a)
    problems = []
    if nan.any():
        problems.append(f"{int(nan.sum())} NaN value(s), first in {_fmt_index(_first_index(nan))}")
    if inf.any():
        problems.append(f"{int(inf.sum())} inf value(s), first in {_fmt_index(_first_index(inf))}")
    if problems:
        raise ArrayDataError(f"array {name!r} contains {' and '.join(problems)}; remove or impute them")
    if a.dtype.itemsize > 4:  # float64: values beyond float32, the dtype fpt computes in, would become inf there
        limit = float(np.finfo(np.float32).max)
        big = np.abs(a) > limit
        if big.any():
            idx = _first_index(big)
            raise ArrayDataError(f"array {name!r}: {int(big.sum())} value(s) beyond float32 (at most {limit:.3g} in "
                                 f"magnitude, the dtype fpt computes in), first in {_fmt_index(idx)} (value "
                                 f"{a[idx].item():g}); they would become inf. Rescale the array (e.g. divide by a "
                                 "power of ten)")


def check_labels(name: str, y: np.ndarray, n: int, num_classes: int | None = None) -> np.ndarray:
    """Validate labels of ``n`` samples; returns them as ``int64``."""
    check_numeric(name, y)
    if y.shape != (n,):
        raise ArrayDataError(f"array {name!r}: shape {y.shape}; expected one integer label per sample, shape ({n},)")
    if np.issubdtype(y.dtype, np.floating):
        check_finite(name, y)
        frac = y != np.round(y)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise ArrayDataError(f"array {name!r}: {int(frac.sum())} non-integer label(s), first at index {i} "
                                 f"(value {y[i].item()!r}); labels must be integers 0..C-1")
    if np.issubdtype(y.dtype, np.floating) and float(np.abs(y).max(initial=0)) >= 2**62:
        i = int(np.argmax(np.abs(y)))
        raise ArrayDataError(f"array {name!r}: label {y[i].item()!r} at index {i} is not a class index; labels must "
                             f"be integers 0..C-1")
    y64 = y.astype(np.int64)
    if num_classes is None and len(y64) and int(y64.max()) >= MAX_CLASSES:
        i = int(np.argmax(y64))
        raise ArrayDataError(
            f"array {name!r}: the largest label is {int(y64[i])} (index {i}), so the model would need {int(y64[i]) + 1:,} "
            f"classes; fpt accepts at most {MAX_CLASSES:,}. Labels must be 0..C-1: relabel them "
            f"(np.unique(y, return_inverse=True)[1]) or remove the outlier")
    bad = y64 < 0 if num_classes is None else (y64 < 0) | (y64 >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rng = "0..C-1" if num_classes is None else f"0..{num_classes - 1} (num_classes={num_classes})"
        raise ArrayDataError(f"array {name!r}: {int(bad.sum())} label(s) outside {rng}, first at index {i} "
                             f"(value {int(y64[i])})")
    return y64


def infer_kind(name: str, x: np.ndarray, kind: str = "auto") -> str:
    if kind not in KINDS:
        raise ArrayDataError(f"option kind must be one of {KINDS}, got {kind!r}")
    integer = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
    if x.ndim not in (2, 3, 4):
        raise ArrayDataError(f"array {name!r}: shape {x.shape} has {x.ndim} dimension(s); expected {EXPECTED_SHAPES}")
    if kind == "auto":
        if x.ndim == 4:
            return "image"
        if x.ndim == 2:
            if not integer:
                raise ArrayDataError(
                    f"array {name!r}: shape {x.shape} with dtype {x.dtype} is ambiguous: a 2-D array must hold "
                    f"integer token ids [N, T]; for continuous sequences with one feature per token save it as "
                    f"[N, T, 1] (x[..., None])"
                )
            return "discrete"
        return "image" if integer else "tokens"  # 3-D: integer pixels [N, H, W] vs float tokens [N, T, D]
    expected_ndim = {"tokens": (3,), "discrete": (2,), "image": (3, 4)}[kind]
    if x.ndim not in expected_ndim:
        want = {"tokens": "[N, T, D]", "discrete": "[N, T]", "image": "[N, H, W] or [N, H, W, C]"}[kind]
        raise ArrayDataError(f"array {name!r}: shape {x.shape}; kind={kind} expects {want}")
    if kind == "discrete" and not integer:
        raise ArrayDataError(f"array {name!r}: dtype {x.dtype}; kind=discrete expects integer token ids")
    return kind


def check_x(name: str, x: np.ndarray, kind: str) -> None:
    check_numeric(name, x)
    if len(x) == 0:
        raise ArrayDataError(f"array {name!r} is empty (0 samples)")
    if min(x.shape[1:], default=1) == 0:
        raise ArrayDataError(f"array {name!r}: shape {x.shape} has an empty dimension")
    check_finite(name, x)
    if kind == "discrete":
        neg = x < 0
        if neg.any():
            idx = _first_index(neg)
            raise ArrayDataError(f"array {name!r}: {int(neg.sum())} negative token id(s), first in "
                                 f"{_fmt_index(idx)} (value {int(x[idx])}); token ids must be >= 0")
        big = x >= MAX_VOCAB
        if big.any():
            idx = _first_index(big)
            raise ArrayDataError(
                f"array {name!r}: {int(big.sum())} token id(s) >= {MAX_VOCAB:,}, first in {_fmt_index(idx)} (value "
                f"{int(x[idx])}); the vocabulary is 0..max id, and fpt accepts at most {MAX_VOCAB:,} ids (an input table "
                f"of that many rows). Map the ids to 0..V-1 (np.unique(x, return_inverse=True)[1].reshape(x.shape))")


# -- layout (what a trained model expects) -----------------------------------------------------
@dataclass
class ArrayLayout:
    """How raw arrays become model inputs; saved with a trained model for ``predict``."""

    kind: str  # "tokens", "discrete" or "image"
    sample_shape: tuple[int, ...]  # per-sample raw shape: (T, D), (T,) or (H, W, C)
    num_classes: int
    patch_size: int = 1
    scale: float = 1.0  # raw values are divided by this first (255 for uint8 pixels)
    mean: list[float] | None = None  # per channel / feature, after scaling; None: no standardising
    std: list[float] | None = None
    vocab_size: int | None = None  # discrete: ids 0..vocab_size-1 (the model sees id + 1; 0 is padding)
    readout: str = "last"
    name: str = "array"
    # the training inputs as stored, for `fpt predict` to check new data against (None: not recorded, older runs)
    dtype: str | None = None  # e.g. "uint8", "float32"
    value_range: list[float] | None = None  # [min, max] over the training split

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sample_shape"] = list(self.sample_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArrayLayout":
        d = dict(d)
        d["sample_shape"] = tuple(d["sample_shape"])
        return cls(**d)

    def check_values(self, x: np.ndarray, name: str = "x") -> str | None:
        """New data against the training inputs' dtype and value range (``fpt predict``).

        Raises :class:`ArrayDataError` when the data is plainly on another scale than the training data
        (preprocessing it as in training would feed the model garbage: e.g. floats in [0, 1] given to a run
        trained on uint8 pixels in [0, 255], which it divides by 255 again); returns a warning, with the
        numbers, when it only reaches outside the training range; None when it matches."""
        if self.value_range is None or self.kind == "discrete" or x.size == 0:
            return None
        lo, hi = float(self.value_range[0]), float(self.value_range[1])
        new_lo, new_hi = float(x.min()), float(x.max())
        span, new_span = hi - lo, new_hi - new_lo
        seen = (f"array {name!r} is {x.dtype} with values in [{new_lo:.6g}, {new_hi:.6g}]; the run was trained on "
                f"{self.dtype or 'data'} with values in [{lo:.6g}, {hi:.6g}]")
        far = span > 0 and (new_span > 20 * span or new_span < span / 20 or new_lo > hi + span or new_hi < lo - span)
        if far:
            hint = ""
            if self.dtype == "uint8" and np.issubdtype(x.dtype, np.floating) and new_hi <= 1.0:
                hint = " Scale it as in training: (x * 255).round().astype(np.uint8)."
            raise ArrayDataError(f"{seen}: another scale, so its predictions would be meaningless (the training "
                                 f"preprocessing divides by {self.scale:g} and standardises with the training "
                                 f"statistics).{hint} Convert the data to the training format.")
        if new_lo < lo - 0.1 * span or new_hi > hi + 0.1 * span:
            return f"{seen}: it reaches outside the training range, so predictions there are extrapolation"
        return None

    @property
    def num_tokens(self) -> int:
        if self.kind == "image":
            h, w, _ = self.sample_shape
            return (h // self.patch_size) * (w // self.patch_size)
        return self.sample_shape[0]

    @property
    def input_dim(self) -> int:
        if self.kind == "image":
            return self.patch_size * self.patch_size * self.sample_shape[2]
        if self.kind == "tokens":
            return self.sample_shape[1]
        return int(self.vocab_size) + 1

    def spec(self):
        return TaskSpec(
            input_type="discrete" if self.kind == "discrete" else "continuous",
            input_dim=self.input_dim, max_tokens=self.num_tokens, num_classes=self.num_classes,
            readout=self.readout,
        )

    def preprocess(self, x) -> torch.Tensor:
        """A batch of raw samples (numpy or torch, ``[B, *sample_shape]``) -> model input."""
        x = torch.as_tensor(x)
        if self.kind == "discrete":
            return x.to(torch.int64) + 1
        if self.kind == "image" and x.ndim == 3:
            x = x[..., None]
        x = x.to(torch.float32)
        if self.scale != 1.0:
            x = x / self.scale
        if self.mean is not None:
            x = (x - torch.tensor(self.mean, dtype=torch.float32)) / torch.tensor(self.std, dtype=torch.float32)
        if self.kind == "image":
            x = patchify(x, self.patch_size)
        return x.contiguous()


def feature_stats(x: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Mean and std of the last axis of ``x / scale`` (float64, chunked); constant features get std 1."""
    mean, std = channel_stats(x, scale)
    return mean.tolist(), std.tolist()


# -- splitting --------------------------------------------------------------------------------
@dataclass
class ArraySplits:
    x: dict[str, np.ndarray] = field(default_factory=dict)
    y: dict[str, np.ndarray] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # "file" or "carved from train"


def _suggest(key: str) -> str:
    close = close_matches(key, ALLOWED_KEYS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def file_pairs(arrays: dict[str, np.ndarray], path: str = "the file") -> dict[str, tuple[str, str]]:
    """Which (x, y) array names the file gives for which split; raises on a bad set of names."""
    keys = set(arrays)
    unknown = sorted(keys - set(ALLOWED_KEYS))
    if unknown:
        hints = ", ".join(f"{k!r}{_suggest(k)}" for k in unknown)
        raise ArrayDataError(f"unexpected array(s) in {path}: {hints}; allowed names: {', '.join(ALLOWED_KEYS)}")
    if "x" in keys and "x_train" in keys:
        raise ArrayDataError(f"{path} has both 'x' and 'x_train': use either x/y (split here) or x_train/y_train "
                             f"[x_val/y_val, x_test/y_test]")
    if "x" in keys or "y" in keys:
        extra = sorted(keys - {"x", "y"})
        if extra:
            raise ArrayDataError(f"{path} has 'x'/'y' and also {extra}: use either x/y or the x_train/... names")
        if "x" not in keys or "y" not in keys:
            have, miss = ("x", "y") if "x" in keys else ("y", "x")
            raise ArrayDataError(f"{path} has {have!r} but not {miss!r}: both are needed")
        return {"train": ("x", "y")}
    if "x_train" not in keys or "y_train" not in keys:
        raise ArrayDataError(
            f"{path} must contain 'x' and 'y', or 'x_train' and 'y_train' (optionally 'x_val'/'y_val', "
            f"'x_test'/'y_test'); found: {sorted(keys) or 'no arrays'}"
        )
    pairs = {}
    for split, (xk, yk) in SPLIT_KEYS.items():
        if (xk in keys) != (yk in keys):
            have, miss = (xk, yk) if xk in keys else (yk, xk)
            raise ArrayDataError(f"{path} has {have!r} but not {miss!r}: each x_* needs its y_*")
        if xk in keys:
            pairs[split] = (xk, yk)
    return pairs


def validate_arrays(arrays: dict[str, np.ndarray], kind: str = "auto", num_classes: int | None = None,
                    path: str = "the file") -> tuple[str, tuple[int, ...], int, dict[str, tuple[str, str]]]:
    """Check every array of the file as stored (indices in messages are the file's).

    Returns ``(kind, per-sample shape, num_classes, {split: (x name, y name)})``.
    """
    pairs = file_pairs(arrays, path)
    xk_train = pairs["train"][0]
    check_numeric(xk_train, arrays[xk_train])
    kind = infer_kind(xk_train, arrays[xk_train], kind)
    ref_shape = None
    for split, (xk, yk) in pairs.items():
        x, y = arrays[xk], arrays[yk]
        check_numeric(xk, x)
        if x.ndim == 0 or len(x) == 0:
            raise ArrayDataError(f"split {split!r} is empty: {xk!r} has 0 samples (shape {x.shape})")
        k = infer_kind(xk, x, kind)
        check_x(xk, x, k)
        shape = x.shape[1:] + ((1,) if k == "image" and x.ndim == 3 else ())
        if ref_shape is None:
            ref_shape = shape
        elif shape != ref_shape:
            raise ArrayDataError(f"array {xk!r} has per-sample shape {shape} but {xk_train!r} has {ref_shape}; "
                                 f"all splits must agree")
        x_int = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
        t = arrays[xk_train]
        if x_int != (np.issubdtype(t.dtype, np.integer) or t.dtype == bool):
            raise ArrayDataError(f"array {xk!r} has dtype {x.dtype} but {xk_train!r} has {t.dtype}; "
                                 f"all splits must agree")
        if y.ndim >= 1 and len(y) != len(x):
            raise ArrayDataError(f"{xk!r} has {len(x)} samples but {yk!r} has {len(y)}")
        check_labels(yk, y, len(x), num_classes)
    if num_classes is None:
        num_classes = int(max(int(arrays[yk].max()) for _, yk in pairs.values())) + 1
        if num_classes < 2:
            raise ArrayDataError("all labels are 0: need at least 2 classes (or set the num_classes option)")
    return kind, tuple(ref_shape), num_classes, pairs


def split_arrays(arrays: dict[str, np.ndarray], pairs: dict[str, tuple[str, str]], val_fraction: float,
                 test_fraction: float, split_seed: int) -> ArraySplits:
    """Splits given in the file, plus val / test carved from train with a seeded permutation."""
    out = ArraySplits()
    for split, (xk, yk) in pairs.items():
        out.x[split] = arrays[xk]
        out.y[split] = arrays[yk].astype(np.int64)
        out.source[split] = f"file ({xk}, {yk})"
    carve = [s for s in ("test", "val") if s not in pairs]
    if not carve:
        return out
    fractions = {"val": val_fraction, "test": test_fraction}
    for s in carve:
        if not 0.0 < fractions[s] < 1.0:
            raise ArrayDataError(f"{s}_fraction must be in (0, 1) to carve a {s} split from train, got {fractions[s]}")
    n = len(out.x["train"])
    counts = {s: int(round(n * fractions[s])) for s in carve}
    for s in carve:
        if counts[s] == 0:
            raise ArrayDataError(f"split {s!r} would be empty: {s}_fraction={fractions[s]} of {n} training "
                                 f"samples rounds to 0; add data, raise {s}_fraction, or provide x_{s}/y_{s}")
    if n - sum(counts.values()) < 1:
        raise ArrayDataError(f"split 'train' would be empty: {n} samples minus "
                             f"{' + '.join(f'{counts[s]} {s}' for s in carve)}; lower the fractions")
    perm = np.random.default_rng([int(split_seed), 20210309]).permutation(n)
    x_all, y_all = out.x["train"], out.y["train"]
    start = 0
    for s in carve:
        idx = np.sort(perm[start: start + counts[s]])
        out.x[s], out.y[s] = x_all[idx], y_all[idx]
        out.source[s] = f"carved from train ({counts[s]} samples, split_seed={split_seed})"
        start += counts[s]
    rest = np.sort(perm[start:])
    out.x["train"], out.y["train"] = x_all[rest], y_all[rest]
    return out


def build_layout(splits: ArraySplits, kind: str, sample_shape: tuple[int, ...], num_classes: int,
                 patch_size: int = 4, normalize: bool = True, readout: str = "last") -> ArrayLayout:
    """The layout of validated splits; normalisation statistics come from the training split."""
    if readout not in ("last", "mean"):
        raise ArrayDataError(f"option readout must be 'last' or 'mean', got {readout!r}")
    x_train = splits.x["train"]
    recorded = {"dtype": str(x_train.dtype), "value_range": [float(x_train.min()), float(x_train.max())]}
    if kind == "discrete":
        vocab = int(max(int(x.max()) for x in splits.x.values())) + 1
        return ArrayLayout(kind, sample_shape, num_classes, vocab_size=vocab, readout=readout, **recorded)
    if kind == "image":
        h, w, _ = sample_shape
        try:
            check_patch_size(h, w, patch_size, "images")
        except ValueError as e:
            raise ArrayDataError(f"{e} (option patch_size)") from None
        scale = 255.0 if x_train.dtype == np.uint8 else 1.0
        mean = std = None
        if normalize:
            mean, std = feature_stats(x_train[..., None] if x_train.ndim == 3 else x_train, scale)
        return ArrayLayout(kind, sample_shape, num_classes, patch_size=patch_size, scale=scale,
                           mean=mean, std=std, readout=readout, **recorded)
    mean = std = None
    if normalize:
        mean, std = feature_stats(x_train, 1.0)
    return ArrayLayout(kind, sample_shape, num_classes, mean=mean, std=std, readout=readout, **recorded)


class PreprocessX:
    """An ``ArraySplit`` transform applying ``fn`` to the batch's ``x`` (picklable for worker processes)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, batch, rng):
        batch["x"] = self.fn(batch["x"])
        return batch


class _AsDtype:
    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, x):
        return torch.as_tensor(x).to(self.dtype)


# -- prediction -------------------------------------------------------------------------------
def check_against_layout(x: np.ndarray, layout: ArrayLayout, name: str = "x") -> None:
    check_numeric(name, x)
    if x.ndim == 0 or len(x) == 0:
        raise ArrayDataError(f"array {name!r} is empty (0 samples)")
    shape = x.shape[1:]
    if layout.kind == "image" and x.ndim == 3:
        shape = shape + (1,)
    if tuple(shape) != tuple(layout.sample_shape):
        raise ArrayDataError(f"array {name!r} has per-sample shape {tuple(shape)} but the model was trained on "
                             f"{tuple(layout.sample_shape)} ({layout.kind}); full shape seen: {x.shape}")
    integer = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
    if layout.kind == "discrete":
        if not integer:
            raise ArrayDataError(f"array {name!r}: dtype {x.dtype}; the model expects integer token ids")
        check_x(name, x, "discrete")
        big = x >= layout.vocab_size
        if big.any():
            idx = _first_index(big)
            raise ArrayDataError(f"array {name!r}: {int(big.sum())} token id(s) outside the training vocabulary "
                                 f"0..{layout.vocab_size - 1}, first in {_fmt_index(idx)} (value {int(x[idx])})")
    else:
        check_x(name, x, layout.kind)


def _warn(text: str) -> None:
    import sys

    print(f"fpt predict: warning: {text}", file=sys.stderr, flush=True)


def load_arrays_for_prediction(path: str | os.PathLike, layout, x_key: str | None = None, y_key: str | None = None,
                               data_dir: str | None = None, check_values: bool = True, warn=_warn):
    """Load and validate new data for a trained model; returns a ``Split`` of model-ready batches.

    ``layout``: the trained task's :class:`ArrayLayout`, its ``to_dict()``, or a ``TaskSpec`` (then
    ``x`` must already be model input: ``[N, T, input_dim]`` floats or ``[N, T]`` ids below
    ``input_dim``). ``x_key`` defaults to ``x`` (else ``x_test``); labels (``y``/``y_test``) are
    optional and, when present, validated and returned in the batches as ``y``. ``check_values``: compare
    the data with the training inputs' dtype and value range (:meth:`ArrayLayout.check_values`: an error
    on another scale, ``warn(text)`` outside the range). The split has
    ``n`` samples (``len(split)``); ``split.batch(np.arange(i, j))`` gives ``x`` (and ``y``).
    """
    path = resolve_path(path, data_dir)
    arrays = load_npz(path, "predict")
    if x_key is None:
        x_key = "x" if "x" in arrays else ("x_test" if "x_test" in arrays else None)
        if x_key is None:
            raise ArrayDataError(f"predict: {path} has no array 'x' (found: {sorted(arrays) or 'no arrays'}); "
                                 f"save the inputs as x=...")
    if x_key not in arrays:
        raise ArrayDataError(f"predict: {path} has no array {x_key!r} (found: {sorted(arrays)})")
    x = arrays[x_key]
    if y_key is None:
        y_key = {"x": "y", "x_test": "y_test"}.get(x_key, "y")
    y = arrays.get(y_key)

    if isinstance(layout, dict):
        layout = ArrayLayout.from_dict(layout)
    if isinstance(layout, TaskSpec):
        spec = layout
        check_numeric(x_key, x)
        if spec.input_type == "continuous":
            if x.ndim != 3 or x.shape[2] != spec.input_dim:
                raise ArrayDataError(f"array {x_key!r}: shape {x.shape}; the model expects continuous tokens "
                                     f"[N, T, {spec.input_dim}]")
            check_x(x_key, x, "tokens")
        else:
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
                raise ArrayDataError(f"array {x_key!r}: shape {x.shape} dtype {x.dtype}; the model expects "
                                     f"integer token ids [N, T]")
            check_x(x_key, x, "discrete")
            if (x >= spec.input_dim).any():
                idx = _first_index(x >= spec.input_dim)
                raise ArrayDataError(f"array {x_key!r}: token id(s) >= input_dim={spec.input_dim}, first in "
                                     f"{_fmt_index(idx)}")
        if x.shape[1] > spec.max_tokens:
            raise ArrayDataError(f"array {x_key!r}: {x.shape[1]} tokens per sample but the model takes at most "
                                 f"{spec.max_tokens}")
        prep = _AsDtype(torch.float32 if spec.input_type == "continuous" else torch.int64)
        num_classes = spec.num_classes
    elif isinstance(layout, ArrayLayout):
        check_against_layout(x, layout, x_key)
        if check_values:
            warning = layout.check_values(x, x_key)
            if warning:
                warn(warning)
        prep = layout.preprocess
        num_classes = layout.num_classes
    else:
        raise TypeError(f"layout must be an ArrayLayout, its to_dict() or a TaskSpec, got {type(layout).__name__}")

    data = {"x": x}
    if y is not None:
        data["y"] = check_labels(y_key, y, len(x), num_classes)

    return ArraySplit(data, shuffle_seed=None, transform=PreprocessX(prep))
