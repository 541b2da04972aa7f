"""The IDX file format of MNIST and Fashion-MNIST (optionally gzip-compressed).

Layout: two zero bytes, a type code byte (0x08 unsigned byte, 0x09 signed byte, 0x0B short,
0x0C int, 0x0D float, 0x0E double), a byte with the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(ValueError):
    pass


def read_idx_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(data) < 4:
        raise IDXFormatError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{name}: not an IDX file (magic starts with {data[:2].hex()}, expected 0000)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(
            f"{name}: header says shape {shape} ({expected} data bytes) but the file has "
            f"{len(data) - header} data bytes (truncated or corrupt download?)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) into a native-endian array."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream / CRC
        raise IDXFormatError(f"{path}: cannot decompress ({e}); delete it and fetch it again") from None
    return read_idx_bytes(data, str(path))


def load_idx_dataset(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-style train/test images ``uint8 [N, 28, 28]`` and labels ``int64 [N]``."""
    out = []
    for split in ("train", "t10k"):
        images = read_idx(files[f"{split}-images-idx3-ubyte"])
        labels = read_idx(files[f"{split}-labels-idx1-ubyte"])
        if images.ndim != 3 or labels.ndim != 1:
            raise IDXFormatError(f"{split}: expected images [N,H,W] and labels [N], got {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise IDXFormatError(f"{split}: {len(images)} images but {len(labels)} labels")
        out += [images.astype(np.uint8), labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
