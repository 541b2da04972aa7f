"""Writers of small datasets in each official format (for tests, demos and trying a task offline).

They write the formats the way the official producers do, independently of this package's
parsers: IDX with ``struct`` big-endian headers (optionally gzip), CIFAR-10 batches with
``pickle.dump`` of dicts with bytes keys, LRA ListOps TSV with ``csv`` and LRA's left-nested
parenthesised sources, TAPE JSON with ``json.dump``.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

from fpt.data.listops import detokenize, generate_listops
from fpt.data.tape import IUPAC, SPLIT_FILES

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
              np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: str | Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``gz`` or the name ends in ``.gz``)."""
    path = Path(path)
    a = np.asarray(array)
    if a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">"))
    code = _IDX_CODES[a.dtype]
    data = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    if gz if gz is not None else path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist_like(directory: str | Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0,
                     size: int = 28) -> dict[str, np.ndarray]:
    """Random ``size x size`` grey images and labels in the four MNIST IDX files; returns the arrays."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    suffix = ".gz" if gz else ""
    write_idx(d / f"train-images-idx3-ubyte{suffix}", arrays["train_images"], gz)
    write_idx(d / f"train-labels-idx1-ubyte{suffix}", arrays["train_labels"], gz)
    write_idx(d / f"t10k-images-idx3-ubyte{suffix}", arrays["test_images"], gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{suffix}", arrays["test_labels"], gz)
    return arrays


def write_cifar10(directory: str | Path, per_batch: int = 10, seed: int = 0, protocol: int = 2) -> dict[str, np.ndarray]:
    """Random images in ``directory/cifar-10-batches-py/{data_batch_1..5,test_batch}``.

    Returns ``images`` ``uint8 [N, 32, 32, 3]`` (train batches in order, then test) and ``labels``.
    """
    d = Path(directory) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_images, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        # CIFAR layout: each row is 1024 red, then 1024 green, then 1024 blue values.
        rows = np.concatenate([images[..., c].reshape(per_batch, 1024) for c in range(3)], axis=1)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        all_images.append(images)
        all_labels.append(np.asarray(labels, dtype=np.int64))
    return {"images": np.concatenate(all_images), "labels": np.concatenate(all_labels)}


# -- ListOps -----------------------------------------------------------------------------------
def lra_source(tokens: list[str]) -> str:
    """Token strings (no parentheses) -> LRA's source string with its left-nested parentheses.

    LRA builds ``((((op, a0), a1), ...), "]")`` and prints each pair as ``( left right )``, so an
    operator with k+1 arguments becomes ``( ( ... ( op a0 ) a1 ) ... ak ) ] )``.
    """
    pos = 0

    def node() -> str:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if not tok.startswith("["):
            return tok
        args = []
        while tokens[pos] != "]":
            args.append(node())
        pos += 1
        text = f"( {tok} {args[0]} )"
        for a in args[1:]:
            text = f"( {text} {a} )"
        return f"( {text} ] )"

    out = node()
    if pos != len(tokens):
        raise ValueError("trailing tokens after the expression")
    return out


def write_listops_tsv(path: str | Path, rows: list[tuple[str, int]]) -> Path:
    """``rows`` of (LRA source string, value) as LRA writes them: header ``Source\\tTarget``."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["Source", "Target"])
        w.writerows(rows)
    return path


def write_listops_files(directory: str | Path, n: dict[str, int] | None = None, seed: int = 0,
                        min_length: int = 20, max_length: int = 120) -> dict[str, list[tuple[list[str], int]]]:
    """Generated expressions written as ``basic_{train,val,test}.tsv``; returns (tokens, value) per split."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    n = n or {"train": 24, "val": 8, "test": 8}
    out = {}
    for k, (split, count) in enumerate(n.items()):
        samples = []
        for i in range(count):
            ids, value = generate_listops(np.random.default_rng([seed, k, i]), min_length=min_length,
                                          max_length=max_length)
            samples.append((detokenize(ids).split(), int(value)))
        write_listops_tsv(d / f"basic_{split}.tsv", [(lra_source(t), v) for t, v in samples])
        out[split] = samples
    return out


# -- TAPE --------------------------------------------------------------------------------------
def write_tape_remote_homology(directory: str | Path, n: int = 12, seed: int = 0, num_classes: int = 1195,
                               lengths: tuple[int, int] = (5, 40)) -> dict[str, list[dict]]:
    """Random records in the five ``remote_homology_*.json`` files; returns the records per split."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, filename in SPLIT_FILES.items():
        records = []
        for i in range(n):
            length = int(rng.integers(lengths[0], lengths[1] + 1))
            primary = "".join(IUPAC[j] for j in rng.integers(0, len(IUPAC), length))
            records.append({
                "id": f"d{split}{i}", "primary": primary, "protein_length": length,
                "class_label": int(rng.integers(0, 7)), "fold_label": int(rng.integers(0, num_classes)),
                "superfamily_label": int(rng.integers(0, 1000)), "family_label": int(rng.integers(0, 2000)),
            })
        with open(d / filename, "w", encoding="utf-8") as f:
            json.dump(records, f)
        out[split] = records
    return out
