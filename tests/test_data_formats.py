"""Parsers of the official formats read back what the tests write, byte for byte."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fpt.data import cifar, idx, listops, tape
from fpt.data.fixtures import (
    lra_source,
    write_cifar10,
    write_idx,
    write_listops_tsv,
    write_mnist_like,
    write_tape_remote_homology,
)
from fpt.data.patching import patchify, random_crop_flip, unpatchify


# Datasets never come from the network here, and each test gets its own empty cache.
pytestmark = pytest.mark.usefixtures("offline_data")


# -- IDX -----------------------------------------------------------------------------------------
def test_idx_hand_made_bytes():
    # magic 0x00000803 (uint8, 3 dims), dims 2 x 2 x 3, then 12 data bytes
    data = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(12))
    a = idx.read_idx_bytes(data)
    assert a.dtype == np.uint8 and a.shape == (2, 2, 3)
    assert a[1, 0, 2] == 8 and a.reshape(-1).tolist() == list(range(12))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"i{suffix}", images, gz)
    write_idx(tmp_path / f"l{suffix}", labels, gz)
    if gz:
        assert (tmp_path / "i.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(idx.read_idx(tmp_path / f"i{suffix}"), images)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / f"l{suffix}"), labels)


def test_idx_wider_types_big_endian(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 3, 4) + a.astype(">i4").tobytes()
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "x"), a)
    f = np.linspace(-1, 1, 5).astype(np.float32)
    write_idx(tmp_path / "f", f.astype(">f4"))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "f"), f)


def test_idx_truncated_is_reported(tmp_path):
    write_idx(tmp_path / "i", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "i").read_bytes()[:-5])
    with pytest.raises(idx.IDXFormatError, match="truncated or corrupt"):
        idx.read_idx(tmp_path / "t")
    (tmp_path / "g").write_bytes(gzip.compress((tmp_path / "i").read_bytes())[:-6])
    with pytest.raises(idx.IDXFormatError, match="cannot decompress"):
        idx.read_idx(tmp_path / "g")
    (tmp_path / "n").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(idx.IDXFormatError, match="not an IDX file"):
        idx.read_idx(tmp_path / "n")


def test_mnist_like_dataset(tmp_path):
    arrays = write_mnist_like(tmp_path, n_train=12, n_test=5, gz=True)
    files = {n: tmp_path / f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    xtr, ytr, xte, yte = idx.load_idx_dataset(files)
    np.testing.assert_array_equal(xtr, arrays["train_images"])
    np.testing.assert_array_equal(ytr, arrays["train_labels"])
    np.testing.assert_array_equal(xte, arrays["test_images"])
    np.testing.assert_array_equal(yte, arrays["test_labels"])
    assert ytr.dtype == np.int64


# -- CIFAR-10 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_roundtrip(tmp_path, protocol):
    arrays = write_cifar10(tmp_path, per_batch=4, protocol=protocol)
    xtr, ytr, xte, yte = cifar.load_cifar10(tmp_path / "cifar-10-batches-py")
    assert xtr.shape == (20, 32, 32, 3) and xte.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate([xtr, xte]), arrays["images"])
    np.testing.assert_array_equal(np.concatenate([ytr, yte]), arrays["labels"])


def test_cifar_channel_layout_by_hand(tmp_path):
    # One image whose red plane is 1, green 2, blue 3 except pixel (0, 1) = (10, 20, 30).
    row = np.concatenate([np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)
    row[1], row[1024 + 1], row[2048 + 1] = 10, 20, 30
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({b"data": row[None], b"labels": [7]}, f)
    x, y = cifar.read_cifar_batch(tmp_path / "b")
    assert x.shape == (1, 32, 32, 3) and y.tolist() == [7]
    assert x[0, 0, 1].tolist() == [10, 20, 30] and x[0, 5, 5].tolist() == [1, 2, 3]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [1]}, f)
    with pytest.raises(cifar.UnsafePickleError, match=r"data_batch_1: refusing to load (posix|os|nt)\.system"):
        cifar.read_cifar_batch(path)
    for payload in (pickle.dumps(print), pickle.dumps(io.BytesIO), pickle.dumps(eval)):
        with pytest.raises(cifar.UnsafePickleError, match="only numpy array reconstruction is allowed"):
            cifar.restricted_loads(payload)


def test_restricted_unpickler_allows_numpy_arrays():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 3, 4, 5):
        out = cifar.restricted_loads(pickle.dumps({b"data": a, b"labels": [1, 2, 3]}, protocol=protocol))
        np.testing.assert_array_equal(out[b"data"], a)


def test_greyscale_weights():
    img = np.zeros((1, 1, 3, 3), np.uint8)
    img[0, 0, 0] = [255, 0, 0]
    img[0, 0, 1] = [0, 255, 0]
    img[0, 0, 2] = [255, 255, 255]
    g = cifar.to_greyscale(img)
    assert g.shape == (1, 1, 3, 1)
    assert g[0, 0, :, 0].tolist() == [76, 149, 255]  # 0.2989 * 255.5, 0.5870 * 255.5, all


# -- patching ------------------------------------------------------------------------------------
def test_patchify_against_hand_computation():
    # 1 image, 4x4, 2 channels; value = 100*y + 10*x + c
    img = np.array([[[100 * y + 10 * x + c for c in range(2)] for x in range(4)] for y in range(4)])[None]
    tokens = patchify(img, 2)
    assert tokens.shape == (1, 4, 8)
    # patch 0: rows 0-1, cols 0-1; patch 1: rows 0-1, cols 2-3; patch 2: rows 2-3, cols 0-1 ...
    expected_patch1 = [2 * 10 + 0, 21, 30, 31, 120, 121, 130, 131]  # (0,2) c0,c1, (0,3), (1,2), (1,3)
    expected_patch2 = [200, 201, 210, 211, 300, 301, 310, 311]
    assert tokens[0, 1].tolist() == expected_patch1
    assert tokens[0, 2].tolist() == expected_patch2
    assert tokens[0, 0].tolist() == [0, 1, 10, 11, 100, 101, 110, 111]
    t = torch.as_tensor(img)
    assert torch.equal(patchify(t, 2), torch.as_tensor(tokens))
    np.testing.assert_array_equal(unpatchify(tokens, 2, 4, 4), img)


def test_patchify_mnist_and_cifar_shapes():
    assert patchify(np.zeros((3, 28, 28, 1)), 4).shape == (3, 49, 16)
    assert patchify(np.zeros((3, 32, 32, 3)), 4).shape == (3, 64, 48)
    assert patchify(np.zeros((3, 32, 32, 1)), 1).shape == (3, 1024, 1)
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        patchify(np.zeros((1, 28, 28, 1)), 5)


def test_random_crop_flip_is_a_shifted_window():
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.integers(1, 256, (16, 8, 8, 3), dtype=np.uint8))
    out = random_crop_flip(images, np.random.default_rng(5), padding=2)
    again = random_crop_flip(images, np.random.default_rng(5), padding=2)
    assert torch.equal(out, again) and out.shape == images.shape
    r = np.random.default_rng(5)
    oy, ox = r.integers(0, 5, 16), r.integers(0, 5, 16)
    flips = r.random(16) < 0.5
    padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(16):
        window = padded[i, oy[i]: oy[i] + 8, ox[i]: ox[i] + 8]
        expected = window[:, ::-1] if flips[i] else window
        np.testing.assert_array_equal(out[i].numpy(), expected)


# -- ListOps TSV -----------------------------------------------------------------------------------
def test_listops_tsv_parse_keeps_bracket(tmp_path):
    src = "( ( ( ( [MAX 2 ) 9 ) ( ( ( [SM 1 ) 4 ) ] ) ) ] )"
    write_listops_tsv(tmp_path / "basic_val.tsv", [(src, 9), ("( ( [MIN 3 ) ] )", 3)])
    text = (tmp_path / "basic_val.tsv").read_text()
    assert text.startswith("Source\tTarget\n") or text.startswith("Source\tTarget\r\n")
    seqs, y = listops.read_listops_tsv(tmp_path / "basic_val.tsv")
    assert y.tolist() == [9, 3]
    assert listops.detokenize(seqs[0]) == "[MAX 2 9 [SM 1 4 ] ]"
    assert listops.detokenize(seqs[1]) == "[MIN 3 ]"
    assert (seqs[0] == listops.CLOSE_ID).sum() == 2


def test_listops_tokenizer_no_truncation():
    tokens = ["[SM"] + ["7"] * 3000 + ["]"]
    ids = listops.tokenize(lra_source(tokens))
    assert len(ids) == 3002 and ids[-1] == listops.CLOSE_ID


def test_listops_tokenizer_errors(tmp_path):
    with pytest.raises(listops.ListOpsFormatError, match="unknown token '12'"):
        listops.tokenize("( [MAX 12 ] )")
    with pytest.raises(listops.ListOpsFormatError, match=r"unknown token '\[FIRST'"):
        listops.tokenize("[FIRST 1 2 ]")
    (tmp_path / "bad.tsv").write_text("Input\tOutput\n[MAX 1 ]\t1\n")
    with pytest.raises(listops.ListOpsFormatError, match="header"):
        listops.read_listops_tsv(tmp_path / "bad.tsv")
    (tmp_path / "bad2.tsv").write_text("Source\tTarget\n[MAX 1 ]\t11\n")
    with pytest.raises(listops.ListOpsFormatError, match=r"bad2.tsv:2: target 11 outside 0..9"):
        listops.read_listops_tsv(tmp_path / "bad2.tsv")


# -- TAPE JSON -----------------------------------------------------------------------------------
def test_tape_json_roundtrip(tmp_path):
    records = write_tape_remote_homology(tmp_path, n=6)
    for split, filename in tape.SPLIT_FILES.items():
        seqs, y = tape.read_tape_json(tmp_path / filename)
        assert y.tolist() == [r["fold_label"] for r in records[split]]
        for i, r in enumerate(records[split]):
            assert "".join(tape.IUPAC[j - 1] for j in seqs[i]) == r["primary"]


def test_tape_vocab_and_errors(tmp_path):
    assert len(tape.IUPAC) == 25 and "J" not in tape.IUPAC and tape.VOCAB_SIZE == 26
    assert tape.encode_protein("ACY").tolist() == [1, 3, 24]
    (tmp_path / "a.json").write_text(json.dumps([{"primary": "MKJA", "fold_label": 3}]))
    with pytest.raises(tape.TapeFormatError, match="character 'J' at position 2"):
        tape.read_tape_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps([{"primary": "MKA", "fold_label": 1195}]))
    with pytest.raises(tape.TapeFormatError, match="record 0: fold_label 1195 outside 0..1194"):
        tape.read_tape_json(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('[{"primary": "MK')
    with pytest.raises(tape.TapeFormatError, match="not valid JSON"):
        tape.read_tape_json(tmp_path / "c.json")
