"""Data for the real-data tasks: file formats, locating / downloading files, patching, validation.

Modules:

* :mod:`fpt.data.store`: where files are looked for, downloads with checksums, ``MissingDataError``;
* :mod:`fpt.data.sources`: the official datasets (files, URLs, checksums);
* :mod:`fpt.data.idx`: MNIST / Fashion-MNIST IDX files;
* :mod:`fpt.data.cifar`: CIFAR-10 python batches through a restricted unpickler;
* :mod:`fpt.data.patching`: ``patchify``, normalisation, crop / flip augmentation;
* :mod:`fpt.data.listops`, :mod:`fpt.data.listops_eval`: ListOps TSV, tokenizer, generator, evaluator;
* :mod:`fpt.data.tape`: TAPE remote homology JSON;
* :mod:`fpt.data.sequences`: packed variable-length sequences, padding, the too-long policy;
* :mod:`fpt.data.arrays`: the user's ``.npz`` arrays, validation, ``load_arrays_for_prediction``;
* :mod:`fpt.data.fixtures`: writers of small datasets in each official format.
"""

from fpt.data.arrays import ArrayDataError, ArrayLayout, load_arrays_for_prediction  # noqa: F401
from fpt.data.patching import patchify, unpatchify  # noqa: F401
from fpt.data.store import DownloadError, MissingDataError  # noqa: F401

__all__ = [
    "ArrayDataError", "ArrayLayout", "DownloadError", "MissingDataError", "load_arrays_for_prediction", "patchify",
    "unpatchify",
]
