"""The `array` task: every bad input gets its own precise message; prediction data is checked too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fpt.data.arrays import ArrayDataError, ArrayLayout, load_arrays_for_prediction
from fpt.tasks import make_task


# Datasets never come from the network here, and each test gets its own empty cache.
pytestmark = pytest.mark.usefixtures("offline_data")


def _save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _task(path, **options):
    t = make_task("array", {"path": path, **options})
    _ = t.spec  # loads and validates
    return t


def _good(n=40, shape=(6, 3), dtype=np.float32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + shape).astype(dtype)
    return x, np.arange(n) % classes


# -- the three kinds --------------------------------------------------------------------------
def test_continuous_tokens(tmp_path):
    x, y = _good()
    t = _task(_save(tmp_path, x=x, y=y))
    spec = t.spec
    assert (spec.input_type, spec.input_dim, spec.max_tokens, spec.num_classes) == ("continuous", 3, 6, 3)
    assert len(t.train()) == 32 and len(t.val()) == 4 and len(t.test()["test"]) == 4
    b = t.train().batch(np.arange(8))
    assert b["x"].shape == (8, 6, 3) and b["x"].dtype == torch.float32 and b["y"].dtype == torch.int64


def test_discrete_tokens_shifted_for_padding(tmp_path):
    x = np.random.default_rng(0).integers(0, 7, (30, 12))
    t = _task(_save(tmp_path, x=x, y=np.arange(30) % 2))
    assert t.spec.input_type == "discrete" and t.spec.input_dim == 8 and t.spec.max_tokens == 12
    b = t.val().batch(np.arange(3))
    assert b["x"].dtype == torch.int64 and int(b["x"].min()) >= 1  # id 0 stays padding


def test_images_are_patched(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 12, 3), dtype=np.uint8)
    t = _task(_save(tmp_path, x=x, y=np.arange(20) % 4), patch_size=4)
    assert (t.spec.input_dim, t.spec.max_tokens) == (48, 6)
    assert t.test()["test"].batch(np.arange(2))["x"].shape == (2, 6, 48)
    grey = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    t2 = _task(_save(tmp_path, "g.npz", x=grey, y=np.arange(20) % 2), patch_size=2)
    assert (t2.spec.input_dim, t2.spec.max_tokens) == (4, 16)


def test_explicit_splits_are_used(tmp_path):
    x, y = _good(50)
    path = _save(tmp_path, x_train=x[:30], y_train=y[:30], x_val=x[30:40], y_val=y[30:40],
                 x_test=x[40:], y_test=y[40:])
    t = _task(path)
    assert (len(t.train()), len(t.val()), len(t.test()["test"])) == (30, 10, 10)
    assert all(v.startswith("file") for v in t.split_sources.values())
    t2 = _task(_save(tmp_path, "p.npz", x_train=x[:30], y_train=y[:30], x_test=x[40:], y_test=y[40:]),
               val_fraction=0.2)
    assert (len(t2.train()), len(t2.val()), len(t2.test()["test"])) == (24, 6, 10)
    assert t2.split_sources["val"].startswith("carved from train")


def test_seeded_split_is_fixed(tmp_path):
    x, y = _good(40)
    p = _save(tmp_path, x=x, y=y)
    a = make_task("array", {"path": p}, seed=1)
    b = make_task("array", {"path": p}, seed=2)
    assert torch.equal(a.val().batch(np.arange(4))["x"], b.val().batch(np.arange(4))["x"])
    c = make_task("array", {"path": p, "split_seed": 5})
    assert not torch.equal(a.val().batch(np.arange(4))["x"], c.val().batch(np.arange(4))["x"])


# -- bad inputs: one message each ------------------------------------------------------------
def _err(tmp_path, match, options=None, **arrays):
    path = _save(tmp_path, **arrays)
    with pytest.raises(ArrayDataError, match=match):
        _task(path, **(options or {}))


def test_missing_file(tmp_path):
    with pytest.raises(ArrayDataError, match="file not found: .*nope.npz"):
        _task(str(tmp_path / "nope.npz"))


def test_not_an_npz(tmp_path):
    (tmp_path / "f.npz").write_text("hello")
    with pytest.raises(ArrayDataError, match=r"is not an \.npz archive \(it starts with b'hello'\)"):
        _task(str(tmp_path / "f.npz"))


def test_single_array_file(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ArrayDataError, match="holds a single array, not an .npz archive"):
        _task(str(tmp_path / "one.npy"))


def test_object_arrays_refused(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, x=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ArrayDataError, match=r"array 'x' .* holds Python objects \(dtype=object\).*allow_pickle=False"):
        _task(str(path))


def test_key_errors(tmp_path):
    x, y = _good()
    _err(tmp_path, r"has 'x' but not 'y'", x=x)
    _err(tmp_path, r"unexpected array\(s\) in .*'y_tset' \(did you mean 'y_test'\?\)", x_train=x, y_train=y,
         x_test=x, y_tset=y)
    _err(tmp_path, r"has both 'x' and 'x_train'", x=x, y=y, x_train=x, y_train=y)
    _err(tmp_path, r"has 'x_val' but not 'y_val'", x_train=x, y_train=y, x_val=x)
    _err(tmp_path, r"must contain 'x' and 'y', or 'x_train' and 'y_train'", x_val=x, y_val=y)


def test_shape_errors(tmp_path):
    _err(tmp_path, r"array 'x': shape \(10,\) has 1 dimension\(s\); expected \[N, T\] integer tokens", x=np.zeros(10),
         y=np.zeros(10, int))
    _err(tmp_path, r"array 'x': shape \(10, 4\) with dtype float64 is ambiguous.*\[N, T, 1\]",
         x=np.zeros((10, 4)), y=np.arange(10) % 2)
    x, y = _good()
    _err(tmp_path, r"array 'y': shape \(40, 2\); expected one integer label per sample, shape \(40,\)",
         x=x, y=np.zeros((40, 2), int))
    _err(tmp_path, r"'x' has 40 samples but 'y' has 39", x=x, y=y[:39])
    _err(tmp_path, r"array 'x_val' has per-sample shape \(6, 4\) but 'x_train' has \(6, 3\); all splits must agree",
         x_train=x, y_train=y, x_val=np.zeros((5, 6, 4), np.float32), y_val=np.zeros(5, int))
    _err(tmp_path, r"kind=discrete expects integer token ids", options={"kind": "discrete"},
         x=np.zeros((4, 5, 1)).astype(np.int64)[..., 0].astype(np.float32), y=np.arange(4) % 2)


def test_dtype_errors(tmp_path):
    _err(tmp_path, r"array 'x': dtype complex128 is not supported; expected integer or floating point",
         x=np.zeros((5, 3, 2), complex), y=np.arange(5) % 2)
    _err(tmp_path, r"array 'y': dtype <U1 is not supported", x=np.zeros((5, 3, 2)), y=np.array(list("abcab")))


def test_nan_and_inf_counted_with_first_index(tmp_path):
    x, y = _good()
    x[5, 2, 1] = np.nan
    x[9, 0, 0] = np.nan
    x[7, 1, 2] = np.inf
    _err(tmp_path, r"array 'x' contains 2 NaN value\(s\), first in sample 5 at index \(5, 2, 1\) and "
                   r"1 inf value\(s\), first in sample 7 at index \(7, 1, 2\)", x=x, y=y)


def test_label_errors(tmp_path):
    x, y = _good()
    yf = y.astype(float)
    yf[3] = 0.5
    yf[8] = 1.25
    _err(tmp_path, r"array 'y': 2 non-integer label\(s\), first at index 3 \(value 0.5\)", x=x, y=yf)
    yn = y.copy()
    yn[4] = -1
    _err(tmp_path, r"array 'y': 1 label\(s\) outside 0..C-1, first at index 4 \(value -1\)", x=x, y=yn)
    _err(tmp_path, r"array 'y': \d+ label\(s\) outside 0..1 \(num_classes=2\), first at index 2 \(value 2\)",
         options={"num_classes": 2}, x=x, y=y)
    _err(tmp_path, r"all labels are 0: need at least 2 classes", x=x, y=np.zeros(40, int))
    ok = _task(_save(tmp_path, "ok.npz", x=x, y=y.astype(float)))  # integral floats are fine
    assert ok.spec.num_classes == 3


def test_empty_splits(tmp_path):
    x, y = _good()
    _err(tmp_path, r"split 'val' is empty: 'x_val' has 0 samples", x_train=x, y_train=y,
         x_val=np.zeros((0, 6, 3), np.float32), y_val=np.zeros(0, int))
    _err(tmp_path, r"split 'val' would be empty: val_fraction=0.01 of 10 training samples rounds to 0",
         options={"val_fraction": 0.01}, x=x[:10], y=y[:10])
    _err(tmp_path, r"split 'train' would be empty: 4 samples minus", options={"val_fraction": 0.5, "test_fraction": 0.5},
         x=x[:4], y=y[:4])
    _err(tmp_path, r"split 'train' is empty: 'x' has 0 samples \(shape \(0, 6, 3\)\)", x=np.zeros((0, 6, 3)),
         y=np.zeros(0, int))
    _err(tmp_path, r"array 'x': shape \(3, 0, 3\) has an empty dimension", x=np.zeros((3, 0, 3)), y=np.arange(3) % 2)


def test_patch_size_must_divide(tmp_path):
    x = np.zeros((10, 30, 30), np.uint8)
    _err(tmp_path, r"images are 30x30 \(HxW\) but patch_size=4 does not divide both.*\[1, 2, 3, 5, 6, 10, 15, 30\]",
         x=x, y=np.arange(10) % 2)


def test_negative_tokens(tmp_path):
    x = np.ones((10, 5), np.int64)
    x[3, 2] = -4
    _err(tmp_path, r"array 'x': 1 negative token id\(s\), first in sample 3 at index \(3, 2\) \(value -4\)",
         x=x, y=np.arange(10) % 2)


def test_path_option_required():
    with pytest.raises(ValueError, match="option path is required"):
        make_task("array", {})


# -- prediction -------------------------------------------------------------------------------
def test_prediction_uses_training_preprocessing(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    t = _task(_save(tmp_path, x=x, y=np.arange(30) % 3), patch_size=4)
    layout = t.prediction_layout()
    restored = ArrayLayout.from_dict(layout.to_dict())  # what a checkpoint would store
    new = x[:5]
    split = load_arrays_for_prediction(_save(tmp_path, "new.npz", x=new), restored.to_dict())
    got = split.batch(np.arange(5))
    assert set(got) == {"x"} and got["x"].shape == (5, 4, 16)
    # same preprocessing as the task's own batches: find those samples in the task's splits
    expected = layout.preprocess(new)
    assert torch.allclose(got["x"], expected)
    with_labels = load_arrays_for_prediction(_save(tmp_path, "l.npz", x=new, y=np.array([0, 1, 2, 0, 1])), layout)
    assert with_labels.batch(np.arange(5))["y"].tolist() == [0, 1, 2, 0, 1]


def test_prediction_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    layout = _task(_save(tmp_path, x=x, y=np.arange(30) % 3), patch_size=4).prediction_layout()
    with pytest.raises(ArrayDataError, match=r"per-sample shape \(9, 8, 1\) but the model was trained on \(8, 8, 1\)"):
        load_arrays_for_prediction(_save(tmp_path, "a.npz", x=np.zeros((2, 9, 8), np.uint8)), layout)
    bad = np.zeros((2, 8, 8), np.float32)
    bad[1, 3, 3] = np.nan
    with pytest.raises(ArrayDataError, match=r"1 NaN value\(s\), first in sample 1 at index \(1, 3, 3\)"):
        load_arrays_for_prediction(_save(tmp_path, "b.npz", x=bad), layout)
    with pytest.raises(ArrayDataError, match=r"label\(s\) outside 0..2 \(num_classes=3\)"):
        load_arrays_for_prediction(_save(tmp_path, "c.npz", x=x[:2], y=np.array([0, 3])), layout)
    with pytest.raises(ArrayDataError, match=r"has no array 'x'"):
        load_arrays_for_prediction(_save(tmp_path, "d.npz", inputs=x[:2]), layout)
    tok = np.random.default_rng(0).integers(0, 5, (20, 6))
    dlayout = _task(_save(tmp_path, "t.npz", x=tok, y=np.arange(20) % 2)).prediction_layout()
    with pytest.raises(ArrayDataError, match=r"token id\(s\) outside the training vocabulary 0..4"):
        load_arrays_for_prediction(_save(tmp_path, "e.npz", x=np.full((2, 6), 9)), dlayout)


def test_prediction_against_taskspec(tmp_path):
    spec = make_task("bit-xor").spec  # continuous [N, 10, 1]
    ok = load_arrays_for_prediction(_save(tmp_path, "a.npz", x=np.ones((3, 10, 1), np.float32)), spec)
    assert ok.batch(np.arange(3))["x"].shape == (3, 10, 1)
    with pytest.raises(ArrayDataError, match=r"the model expects continuous tokens \[N, T, 1\]"):
        load_arrays_for_prediction(_save(tmp_path, "b.npz", x=np.ones((3, 10, 2), np.float32)), spec)
    with pytest.raises(ArrayDataError, match=r"11 tokens per sample but the model takes at most 10"):
        load_arrays_for_prediction(_save(tmp_path, "c.npz", x=np.ones((3, 11, 1), np.float32)), spec)


# -- outliers that would size the model: refused with the limit and what to do -----------------------------
def test_a_huge_label_is_refused_before_the_model_is_sized(tmp_path):
    from fpt.data.arrays import MAX_CLASSES

    x, y = _good()
    y = y.copy()
    y[3] = 10**9
    _err(tmp_path, f"largest label is 1000000000 \\(index 3\\).*1,000,000,001 classes; fpt accepts at most "
                   f"{MAX_CLASSES:,}.*np.unique", x=x, y=y)


def test_a_huge_token_id_is_refused_before_the_model_is_sized(tmp_path):
    x = np.random.default_rng(0).integers(0, 10, (40, 6))
    x[5, 2] = 2**40
    _err(tmp_path, "token id\\(s\\) >= 262,144, first in sample 5 at index \\(5, 2\\) \\(value 1099511627776\\)",
         x=x, y=np.arange(40) % 2)


def test_num_classes_option_is_bounded(tmp_path):
    x, y = _good()
    path = _save(tmp_path, x=x, y=y)
    with pytest.raises(ValueError, match="option 'num_classes' must be an integer in 2..100000"):
        _task(path, num_classes=10**9)
