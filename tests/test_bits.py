"""Bit XOR and Bit Memory: labels recomputed independently, determinism, patching, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fpt.tasks import make_task


def xor_task(seed=0, **options):
    return make_task("bit-xor", {"val_samples": 32, "test_samples": 32, **options}, seed=seed)


def memory_task(seed=0, **options):
    defaults = {"n_bits": 40, "n_strings": 5, "patch_size": 8, "mask_prob": 0.5, "val_samples": 32, "test_samples": 32}
    return make_task("bit-memory", {**defaults, **options}, seed=seed)


# -- bit-xor ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_bits,patch", [(5, 1), (8, 4), (6, 6)])
def test_xor_labels_and_patching(n_bits, patch):
    task = xor_task(n_bits=n_bits, patch_size=patch)
    batch = task.train().batch(np.arange(64))
    x, y = batch["x"], batch["y"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (64, 2 * n_bits // patch, patch)
    assert y.shape == (64, n_bits)
    assert set(x.unique().tolist()) == {-1.0, 1.0}  # +-1, never an exactly-zero token
    bits = (x.reshape(64, 2 * n_bits) > 0).long()  # undo the patching: row-major over tokens
    a, b = bits[:, :n_bits], bits[:, n_bits:]
    assert torch.equal(y, a ^ b)
    assert 0.3 < float(y.float().mean()) < 0.7  # not degenerate

    spec = task.spec
    assert spec.input_type == "continuous" and spec.input_dim == patch
    assert spec.max_tokens == 2 * n_bits // patch and spec.num_labels == n_bits and spec.num_classes == 2
    assert spec.readout == "tokens" and spec.readout_tokens == n_bits // patch


def test_xor_patch_must_divide():
    with pytest.raises(ValueError, match="patch_size .* divide n_bits"):
        xor_task(n_bits=5, patch_size=2)
    with pytest.raises(ValueError, match="option 'n_bits' must be an integer >= 1"):
        xor_task(n_bits=0)


# -- bit-memory ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_prob", [0.0, 0.3, 0.5, 0.8])
def test_memory_labels_mask_rate_and_patching(mask_prob):
    n_bits, n_strings, patch, batch_size = 40, 5, 8, 200
    task = memory_task(mask_prob=mask_prob)
    batch = task.train().batch(np.arange(batch_size))
    x, y = batch["x"], batch["y"]
    tokens_per_string = n_bits // patch
    assert x.shape == (batch_size, (n_strings + 1) * tokens_per_string, patch)
    assert y.shape == (batch_size, n_bits)
    flat = x.reshape(batch_size, n_strings + 1, n_bits)
    strings, query = flat[:, :n_strings], flat[:, n_strings]
    assert set(strings.unique().tolist()) == {-1.0, 1.0}
    assert set(query.unique().tolist()) <= {-1.0, 0.0, 1.0}

    masked = query == 0
    for i in range(batch_size):
        seen = ~masked[i]
        # Which memorised strings agree with the query on every unmasked bit?
        agree = [k for k in range(n_strings) if torch.equal(strings[i, k][seen], query[i][seen])]
        if seen.sum() >= 20:  # with 20+ visible random bits a second match is ~1e-6 likely
            assert len(agree) == 1, (i, agree)
        # y is the original of a string the query matches (the only one, but for a heavily masked query).
        assert any(torch.equal(y[i], (strings[i, k] > 0).long()) for k in agree), (i, agree)
    rate = float(masked.float().mean())
    assert rate == pytest.approx(mask_prob, abs=0.03)

    spec = task.spec
    assert spec.input_dim == patch and spec.max_tokens == (n_strings + 1) * tokens_per_string
    assert spec.num_labels == n_bits and spec.readout_tokens == tokens_per_string


def test_memory_targets_cover_every_string():
    task = memory_task(mask_prob=0.0)
    batch = task.train().batch(np.arange(100))
    flat = batch["x"].reshape(100, 6, 40)
    targets = [int(torch.nonzero((flat[i, :5] == flat[i, 5]).all(1))[0]) for i in range(100)]
    assert set(targets) == set(range(5))


def test_memory_option_checks():
    with pytest.raises(ValueError, match="mask_prob"):
        memory_task(mask_prob=1.0)
    with pytest.raises(ValueError, match="n_strings"):
        memory_task(n_strings=0)
    with pytest.raises(ValueError, match="patch_size"):
        memory_task(patch_size=7)


# -- determinism and splits ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [xor_task, memory_task])
def test_same_seed_same_samples(make):
    a, b = make(seed=3), make(seed=3)
    train_idx, eval_idx = np.array([0, 5, 17, 1000]), np.array([0, 5, 17, 31])
    pairs = [(a.train(), b.train(), train_idx), (a.val(), b.val(), eval_idx),
             (a.test()["test"], b.test()["test"], eval_idx)]
    for split_a, split_b, idx in pairs:
        batch_a, batch_b = split_a.batch(idx), split_b.batch(idx)
        assert torch.equal(batch_a["x"], batch_b["x"]) and torch.equal(batch_a["y"], batch_b["y"])
    # A sample depends on its index only, not on what else is in the batch.
    one = a.train().batch(np.array([17]))
    assert torch.equal(one["x"][0], a.train().batch(train_idx)["x"][2])
    assert torch.equal(one["y"][0], a.train().batch(train_idx)["y"][2])


@pytest.mark.parametrize("make", [xor_task, memory_task])
def test_different_seeds_differ(make):
    idx = np.arange(16)
    assert not torch.equal(make(seed=0).train().batch(idx)["x"], make(seed=1).train().batch(idx)["x"])
    assert not torch.equal(make(seed=0).val().batch(idx)["x"], make(seed=1).val().batch(idx)["x"])
    assert not torch.equal(make(seed=0).test()["test"].batch(idx)["x"], make(seed=1).test()["test"].batch(idx)["x"])


def _same_at_index(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).reshape(len(a), -1).all(1).float().mean())


@pytest.mark.parametrize("make", [xor_task, memory_task])
def test_train_val_test_streams_differ(make):
    task = make(seed=0)
    idx = np.arange(32)
    train, val, test = (task.train().batch(idx)["x"], task.val().batch(idx)["x"], task.test()["test"].batch(idx)["x"])
    # Independent streams: at most a chance coincidence (2^-10 per sample for 5-bit XOR), not a copy.
    for a, b in ((train, val), (train, test), (val, test)):
        assert _same_at_index(a, b) < 0.1
    assert len(task.val()) == 32 and len(task.test()["test"]) == 32
    assert list(task.test()) == ["test"]
    with pytest.raises(TypeError):
        len(task.train())  # the training stream is endless


def test_options_are_typed_and_named():
    with pytest.raises(ValueError, match=r"no option 'nbits'.*Did you mean 'n_bits'"):
        make_task("bit-xor", {"nbits": 5})
    with pytest.raises(ValueError, match=r"option 'n_bits' must be int"):
        make_task("bit-xor", {"n_bits": "five"})
    assert make_task("bit-xor", {"n-bits": "6"}).options.n_bits == 6  # dashes and numeric strings accepted
    with pytest.raises(ValueError, match=r"unknown task 'bit-xr'.*Did you mean 'bit-xor'"):
        make_task("bit-xr")
