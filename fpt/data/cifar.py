"""CIFAR-10's official "python version" batches, read without trusting pickle.

Each batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) is a pickled dict with bytes keys:
``b'data'`` a ``uint8 [10000, 3072]`` array (1024 red, 1024 green, 1024 blue values per image,
row-major) and ``b'labels'`` a list of ints (plus ``b'batch_label'`` and ``b'filenames'``).

``pickle.load`` on a file can run arbitrary code. :class:`RestrictedUnpickler` only lets through the
globals that rebuilding a numpy array needs and refuses everything else with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path

import numpy as np

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


class UnsafePickleError(pickle.UnpicklingError):
    pass


def _numpy_attr(modules: tuple[str, ...], name: str):
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"cannot resolve numpy's {name} in this numpy version")


def _codecs_encode(obj, encoding="utf-8"):
    # Protocol <= 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding != "latin1" or not isinstance(obj, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr(_MULTIARRAY, "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr(_MULTIARRAY, "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only reconstructs numpy arrays, dicts, lists, bytes, str and numbers."""

    def find_class(self, module: str, name: str):
        maker = _ALLOWED.get((module, name))
        if maker is None:
            raise UnsafePickleError(
                f"refusing to load {module}.{name} from a pickle: only numpy array reconstruction is allowed "
                f"in a CIFAR batch (is this file really an official CIFAR-10 batch?)"
            )
        return maker()


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def restricted_load(path: str | Path):
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding="bytes").load()


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as images ``uint8 [N, 32, 32, 3]`` (channels last) and labels ``int64 [N]``."""
    path = Path(path)
    try:
        batch = restricted_load(path)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # truncated / not a pickle
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing b'data' or b'labels' (keys: {sorted(map(repr, batch))})")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All five training batches concatenated, and the test batch."""
    directory = Path(directory)
    parts = [read_cifar_batch(directory / name) for name in TRAIN_BATCHES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_cifar_batch(directory / TEST_BATCH)
    return x_train, y_train, x_test, y_test


# ITU-R BT.601 luma weights, as tf.image.rgb_to_grayscale (used by LRA's image task).
LUMA_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])


def to_greyscale(images: np.ndarray) -> np.ndarray:
    """``uint8 [N, H, W, 3]`` -> ``uint8 [N, H, W, 1]``.

    Follows tf.image.rgb_to_grayscale on uint8 images: scale to [0, 1], weighted sum, and convert
    back to uint8 the way tf.image.convert_image_dtype does (multiply by 255.5, truncate).
    """
    grey = (images.astype(np.float32) / 255.0) @ LUMA_WEIGHTS.astype(np.float32)
    return np.clip(np.floor(grey * 255.5), 0, 255).astype(np.uint8)[..., None]
