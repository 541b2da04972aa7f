"""Image classification tasks of the paper: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-10 LRA.

Images are cut into ``patch_size x patch_size`` patches (row-major patch order, channels last in
a patch; see :func:`fpt.data.patching.patchify`), one token per patch. Pixels are scaled to
[0, 1] and standardised per channel with the mean / std of the training split, so every input
feature is unit-scale.

Splits: ``train`` is the official training set minus a validation set carved from it with a
fixed seed (``val_fraction`` of it, default 10%, chosen by ``split_seed``, independent of the run
seed so every run sees the same validation set); ``test`` is the official test set.

CIFAR-10 training augmentation (on by default for ``cifar10``, off for ``cifar10-lra``, option
``augment``): a random 32x32 crop of the image zero-padded by 4 pixels and a horizontal flip with
probability 1/2, drawn from the training stream's seeded generator (so reproducible); with
``rotation=D`` also a random rotation by up to D degrees (the 2021 code: RandomRotation(20),
after crop and flip, for both CIFAR tasks).

``normalize``: ``stats`` (default) standardises with the training split's per-channel mean / std;
``paper`` uses the 2021 code's constants instead: none for MNIST (``Normalize(0, 1)`` on pixels in
[0, 1]; Fashion-MNIST follows MNIST), CIFAR-10's usual (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994,
0.2010), greyscale CIFAR 0.5 / 0.5.

Files are looked for as :mod:`fpt.data.store` describes (``data_dir``, ``FPT_DATA_DIR``, the
cache, system folders) and downloaded into the cache when missing and allowed (``download``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fpt.data import sources
from fpt.data.arrays import ArrayLayout
from fpt.data.cifar import load_cifar10, to_greyscale
from fpt.data.idx import load_idx_dataset
from fpt.data.patching import channel_stats, check_patch_size, normalise, patchify, random_crop_flip, random_rotation
from fpt.data.store import Dataset, ensure_files
from fpt.base.options import FRACTION, SEEDS, at_least, between, bounded
from fpt.data.splits import ArraySplit, TaskSpec, carve_validation
from fpt.tasks.base import Task, register_task


def _stamp(paths) -> tuple:
    return tuple((str(p), os.path.getmtime(p), os.path.getsize(p)) for p in paths)


@functools.lru_cache(maxsize=2)
def _read_idx_cached(stamp: tuple):
    paths = {Path(p).name.replace(".gz", ""): Path(p) for p, _, _ in stamp}
    return load_idx_dataset(paths)


@functools.lru_cache(maxsize=1)
def _read_cifar_cached(stamp: tuple):
    return load_cifar10(Path(stamp[0][0]).parent)


class ImageTransform:
    """Batch ``{"images": uint8 [B,H,W,C], "y"}`` -> ``{"x": float32 [B,T,D], "y"}`` (picklable).

    With ``augment``: random crop of the 4-pixel zero-padded image + horizontal flip, drawn from the
    generator that :class:`ArraySplit` seeds from the stream positions.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, patch_size: int, augment: bool = False, padding: int = 4,
                 rotation: float = 0.0):
        self.mean, self.std, self.patch_size, self.augment, self.padding = mean, std, patch_size, augment, padding
        self.rotation = rotation

    def __call__(self, batch: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        images = batch.pop("images")
        if self.augment:
            images = random_crop_flip(images, rng, padding=self.padding, flip=True)
            if self.rotation:
                images = random_rotation(images, rng, self.rotation)
        batch["x"] = patchify(normalise(images, self.mean, self.std), self.patch_size).contiguous()
        return batch


class ImageTask(Task):
    """Shared machinery; subclasses set ``dataset``, the image shape and ``_read``."""

    dataset: Dataset
    height = width = 28
    channels = 1
    num_classes = 10
    paper_normalization = ((0.0,), (1.0,))  # the 2021 code's Normalize(mean, std) (datasets/mnist.py:19)

    @dataclass
    class Options:
        patch_size: int = bounded(4, at_least(1))  # pixels per patch side; tokens = (H/p)*(W/p), features = p*p*C
        val_fraction: float = bounded(0.1, FRACTION)  # share of the official training set held out for validation
        split_seed: int = bounded(0, SEEDS)  # which validation set (fixed, independent of the run seed)
        download: bool = True  # fetch missing files from the official source into the cache
        normalize: str = "stats"  # stats: the training split's per-channel mean/std | paper: the 2021 code's constants

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        check_patch_size(self.height, self.width, options.patch_size, f"{self.name}: images")
        if not 0.0 < options.val_fraction < 1.0:
            raise ValueError(f"{self.name}: val_fraction must be in (0, 1), got {options.val_fraction}")
        if options.normalize not in ("stats", "paper"):
            raise ValueError(f"{self.name}: option normalize must be stats or paper, got {options.normalize!r}")
        rotation = getattr(options, "rotation", 0.0)
        if rotation < 0 or rotation > 180:
            raise ValueError(f"{self.name}: rotation must be in [0, 180] degrees, got {rotation}")
        if rotation and not getattr(options, "augment", False):
            raise ValueError(f"{self.name}: rotation={rotation} is part of the augmentation; set augment=true too")
        self._data = None

    # -- shape -------------------------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        p = self.options.patch_size
        return TaskSpec(
            input_type="continuous", input_dim=p * p * self.channels,
            max_tokens=(self.height // p) * (self.width // p), num_classes=self.num_classes,
        )

    # -- data --------------------------------------------------------------------------------
    def _read(self, files: dict[str, Path]):
        raise NotImplementedError

    def _load(self):
        if self._data is None:
            files = ensure_files(self.dataset, self.data_dir, task=self.name, download_ok=self.options.download)
            x_train, y_train, x_test, y_test = self._read(files)
            if x_train.ndim == 3:
                x_train, x_test = x_train[..., None], x_test[..., None]
            expected = (self.height, self.width, self.channels)
            for what, x in (("training", x_train), ("test", x_test)):
                if x.shape[1:] != expected:
                    raise ValueError(f"{self.name}: {what} images have shape {x.shape[1:]}, expected {expected}")
            tr, va = carve_validation(len(x_train), self.options.val_fraction, self.options.split_seed, self.name)
            train_x = x_train[tr]
            if self.options.normalize == "paper":
                mean, std = (np.asarray(v, dtype=np.float64) for v in self.paper_normalization)
            else:
                mean, std = channel_stats(train_x)
            self._data = {
                "train": (train_x, y_train[tr]), "val": (x_train[va], y_train[va]), "test": (x_test, y_test),
                "mean": mean, "std": std,
            }
        return self._data

    def _augments(self) -> bool:
        return False

    def _split(self, name: str, training: bool) -> ArraySplit:
        d = self._load()
        x, y = d[name]
        transform = ImageTransform(d["mean"], d["std"], self.options.patch_size,
                                   augment=training and self._augments(),
                                   rotation=float(getattr(self.options, "rotation", 0.0)))
        return ArraySplit({"images": x, "y": y}, shuffle_seed=self.seed if training else None, transform=transform)

    def train(self) -> ArraySplit:
        return self._split("train", training=True)

    def val(self) -> ArraySplit:
        return self._split("val", training=False)

    def test(self) -> dict[str, ArraySplit]:
        return {"test": self._split("test", training=False)}

    def prediction_layout(self) -> ArrayLayout:
        """How raw ``uint8 [N, H, W(, C)]`` images become this task's inputs (for ``predict``)."""
        d = self._load()
        return ArrayLayout(
            kind="image", sample_shape=(self.height, self.width, self.channels), num_classes=self.num_classes,
            patch_size=self.options.patch_size, scale=255.0, mean=d["mean"].tolist(), std=d["std"].tolist(),
            name=self.name, dtype=str(d["train"][0].dtype),
            value_range=[float(d["train"][0].min()), float(d["train"][0].max())],
        )


class _IdxTask(ImageTask):
    def _read(self, files):
        return _read_idx_cached(_stamp(files.values()))


@register_task
class MNIST(_IdxTask):
    name = "mnist"
    description = "MNIST digits, 28x28 grey, 4x4 patches -> 49 tokens of 16 (official IDX files)"
    dataset = sources.MNIST


@register_task
class FashionMNIST(_IdxTask):
    name = "fashion-mnist"
    description = "Fashion-MNIST, 28x28 grey, 4x4 patches -> 49 tokens of 16 (official IDX files)"
    dataset = sources.FASHION_MNIST


class _CifarTask(ImageTask):
    dataset = sources.CIFAR10
    height = width = 32
    paper_normalization = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # datasets/cifar10.py:23

    def _read_rgb(self, files):
        return _read_cifar_cached(_stamp(files.values()))

    def _augments(self) -> bool:
        return bool(self.options.augment)


@register_task
class CIFAR10(_CifarTask):
    name = "cifar10"
    description = "CIFAR-10, 32x32 RGB, 4x4 patches -> 64 tokens of 48; random crop + flip augmentation"
    channels = 3

    @dataclass
    class Options(ImageTask.Options):
        augment: bool = True  # random crop (4-pixel zero padding) + horizontal flip on the training stream
        # with augment: also rotate by up to this many degrees (the 2021 code: 20)
        rotation: float = bounded(0.0, between(0.0, 180.0))

    def _read(self, files):
        return self._read_rgb(files)


@register_task
class CIFAR10LRA(_CifarTask):
    name = "cifar10-lra"
    description = "CIFAR-10 in greyscale as in Long Range Arena: 1024 tokens of 1 pixel"
    channels = 1
    paper_normalization = ((0.5,), (0.5,))  # datasets/cifar10_gray.py:24

    @dataclass
    class Options(ImageTask.Options):
        patch_size: int = bounded(1, at_least(1))  # LRA: one pixel per token -> 1024 tokens
        augment: bool = False  # LRA uses none; true: random crop + flip as for cifar10 (the 2021 code: on)
        # with augment: also rotate by up to this many degrees (the 2021 code: 20)
        rotation: float = bounded(0.0, between(0.0, 180.0))

    def _read(self, files):
        x_train, y_train, x_test, y_test = self._read_rgb(files)
        return to_greyscale(x_train), y_train, to_greyscale(x_test), y_test
