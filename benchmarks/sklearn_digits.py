"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as an ``.npz`` for fpt's ``array`` task, offline.

    python benchmarks/sklearn_digits.py runs/data/sklearn-digits.npz

Reads ``sklearn/datasets/data/digits.csv.gz`` from the installed scikit-learn wheel as a file (found with
``importlib.metadata``; scikit-learn is never imported, ``pip install --no-deps scikit-learn`` is enough):
64 pixel values 0..16 and the label per line (the UCI optdigits test set, as ``sklearn.datasets.load_digits``
returns it). Writes ``x`` float32 ``[1797, 8, 8, 1]`` (pixels / 16: an image for the ``array`` task, cut into
patches) and ``y`` int64; the ``array`` task carves train / val / test from them with its seeded split.
The ``offline`` study (fpt/presets/studies/offline.yaml) reads it as problem ``digits``.
"""

from __future__ import annotations

import gzip
import sys
from importlib import metadata
from pathlib import Path

import numpy as np


def digits_csv() -> Path:
    try:
        files = metadata.files("scikit-learn") or []
    except metadata.PackageNotFoundError:
        raise SystemExit("scikit-learn is not installed: pip install --no-deps scikit-learn (its wheel holds the "
                         "digits file)") from None
    for f in files:
        if str(f).endswith("datasets/data/digits.csv.gz"):
            return Path(f.locate())
    raise SystemExit("the installed scikit-learn has no datasets/data/digits.csv.gz")


def main(out: str) -> None:
    with gzip.open(digits_csv(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    x = (table[:, :64] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = table[:, 64].astype(np.int64)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=x, y=y)
    print(f"wrote {out}: x {x.shape} {x.dtype}, y {y.shape} ({len(np.unique(y))} classes, counts "
          f"{np.bincount(y).min()}-{np.bincount(y).max()})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
