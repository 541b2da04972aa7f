"""``array``: classify the user's own data from an ``.npz`` file.

See :mod:`fpt.data.arrays` for the file layout (``x``/``y`` or ``x_train``/``y_train``
[``x_val``/``y_val``, ``x_test``/``y_test``]), the kinds of ``x`` (continuous token sequences,
discrete tokens, images), the checks made and the messages given. Val / test splits missing
from the file are carved from train with a seeded permutation (``val_fraction``,
``test_fraction``, ``split_seed``; independent of the run seed).

``task.prediction_layout()`` returns the :class:`~fpt.data.arrays.ArrayLayout` (shape, patching,
normalisation statistics; ``to_dict()`` is JSON-able) that
:func:`fpt.data.arrays.load_arrays_for_prediction` needs to check and preprocess new data.
"""

from __future__ import annotations

from dataclasses import dataclass

from fpt.data.arrays import (
    MAX_CLASSES,
    ArrayDataError,
    ArrayLayout,
    PreprocessX,
    build_layout,
    load_npz,
    resolve_path,
    split_arrays,
    validate_arrays,
)
from fpt.data.splits import ArraySplit, TaskSpec
from fpt.base.options import PROBABILITY, SEEDS, at_least, between, bounded
from fpt.tasks.base import NamedSplitsTask, register_task


@register_task
class ArrayTask(NamedSplitsTask):
    name = "array"
    description = "your own data: an .npz with x ([N,T,D] / [N,T] ints / [N,H,W(,C)] images) and y labels"

    @dataclass
    class Options:
        path: str | None = None  # the .npz file (relative paths are also tried under data_dir and FPT_DATA_DIR)
        kind: str = "auto"  # "auto", "tokens" [N,T,D], "discrete" [N,T] ints, "image" [N,H,W(,C)]
        patch_size: int = bounded(4, at_least(1))  # images: pixels per patch side (must divide H and W)
        num_classes: int | None = bounded(None, between(2, MAX_CLASSES))  # default: max label + 1
        val_fraction: float = bounded(0.1, PROBABILITY)  # carved from train when the file has no x_val/y_val
        test_fraction: float = bounded(0.1, PROBABILITY)  # carved from train when the file has no x_test/y_test
        split_seed: int = bounded(0, SEEDS)  # seed of the carving (fixed across runs)
        normalize: bool = True  # standardise continuous inputs with the training mean / std
        readout: str = "last"  # "last" token or "mean" of tokens

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        if not options.path:
            raise ValueError(f"{self.name}: option path is required, e.g. --task-option path=mydata.npz")
        if options.patch_size < 1:
            raise ValueError(f"{self.name}: patch_size must be >= 1, got {options.patch_size}")
        if options.num_classes is not None and options.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {options.num_classes}")
        self._layout: ArrayLayout | None = None
        self._splits = None

    def _load(self):
        if self._splits is None:
            o = self.options
            path = resolve_path(o.path, self.data_dir)
            arrays = load_npz(path, self.name)
            try:
                kind, shape, num_classes, pairs = validate_arrays(arrays, o.kind, o.num_classes, str(path))
                splits = split_arrays(arrays, pairs, o.val_fraction, o.test_fraction, o.split_seed)
                self._layout = build_layout(splits, kind, shape, num_classes, o.patch_size, o.normalize, o.readout)
            except ArrayDataError as e:
                raise ArrayDataError(f"{self.name}: {path}: {e}") from None
            self._layout.name = self.name
            self._splits = splits
        return self._splits

    @property
    def spec(self) -> TaskSpec:
        self._load()
        return self._layout.spec()

    def prediction_layout(self) -> ArrayLayout:
        self._load()
        return self._layout

    @property
    def split_sources(self) -> dict[str, str]:
        """Where each split came from: the file's arrays or carved from train."""
        return dict(self._load().source)

    def _split(self, name: str, training: bool = False) -> ArraySplit:
        s = self._load()
        return ArraySplit({"x": s.x[name], "y": s.y[name]}, shuffle_seed=self.seed if training else None,
                          transform=PreprocessX(self._layout.preprocess))
