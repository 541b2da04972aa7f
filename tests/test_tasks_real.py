"""Every real-data task: its splits give batches of the declared TaskSpec shape, on fixture files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fpt.data import listops as lo
from fpt.data import tape
from fpt.data.fixtures import write_cifar10, write_listops_files, write_mnist_like, write_tape_remote_homology
from fpt.data.idx import load_idx_dataset
from fpt.data.listops_eval import evaluate_tokens
from fpt.data.sources import FASHION_MNIST
from fpt.data.store import find_files
from fpt.tasks import TASKS, make_task

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# Datasets never come from the network here, and each test gets its own empty cache.
pytestmark = pytest.mark.usefixtures("offline_data")


def check_batch(spec, batch, n):
    x, y = batch["x"], batch["y"]
    assert y.shape == (n,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < spec.num_classes
    assert x.shape[0] == n and 1 <= x.shape[1] <= spec.max_tokens
    if spec.input_type == "continuous":
        assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[2] == spec.input_dim
        assert torch.isfinite(x).all()
    else:
        assert x.dtype == torch.int64 and x.ndim == 2
        assert int(x.min()) >= 0 and int(x.max()) < spec.input_dim
    if spec.padded:
        mask = batch["mask"]
        assert mask.dtype == torch.bool and mask.shape == x.shape[:2]
        lengths = mask.sum(1)
        assert bool((lengths >= 1).all())
        # right padding: True-prefix, pad id where False
        expected = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        assert torch.equal(mask, expected)
        assert bool((x[~mask] == spec.pad_id).all()) and bool((x[mask] != spec.pad_id).all())
        assert int(lengths.max()) == x.shape[1]
    else:
        assert "mask" not in batch and x.shape[1] == spec.max_tokens


def check_task(task, batch_size=5):
    spec = task.spec
    train = task.train()
    # training stream positions, including a second epoch
    for start in (0, len(train) - 2) if hasattr(train, "n") else (0, 10_000):
        check_batch(spec, train.batch(np.arange(start, start + batch_size)), batch_size)
    val = task.val()
    check_batch(spec, val.batch(np.arange(min(batch_size, len(val)))), min(batch_size, len(val)))
    tests = task.test()
    assert list(tests)[0] == "test"
    for split in tests.values():
        k = min(batch_size, len(split))
        check_batch(spec, split.batch(np.arange(len(split) - k, len(split))), k)
    return spec


def test_all_real_tasks_registered():
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar10-lra", "listops", "remote-homology", "array"):
        assert name in TASKS


# -- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,gz", [("mnist", True), ("fashion-mnist", False)])
def test_idx_tasks(tmp_path, name, gz):
    arrays = write_mnist_like(tmp_path / name, n_train=40, n_test=12, gz=gz)
    task = make_task(name, {"val_fraction": 0.25}, data_dir=str(tmp_path))  # finds <data_dir>/<name>/
    spec = check_task(task)
    assert (spec.input_dim, spec.max_tokens, spec.num_classes) == (16, 49, 10)
    assert (len(task.train()), len(task.val()), len(task.test()["test"])) == (30, 10, 12)
    # normalised with the training split's statistics: unit scale over the training split
    x = task.train().batch(np.arange(30))["x"]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    # tokens are the patches of the official images, in order
    test = task.test()["test"].batch(np.arange(12))
    d = task._load()
    raw = (arrays["test_images"][3].astype(np.float32) / 255 - d["mean"][0]) / d["std"][0]
    np.testing.assert_allclose(test["x"][3, 1].numpy(), raw[0:4, 4:8].reshape(-1), rtol=1e-5, atol=1e-5)
    assert test["y"].tolist() == arrays["test_labels"].tolist()
    # the layout saved for `predict` preprocesses raw images exactly like the task
    layout = task.prediction_layout()
    assert torch.allclose(layout.preprocess(arrays["test_images"]), test["x"], atol=1e-6)


def test_splits_pickle_for_worker_processes(tmp_path):
    write_mnist_like(tmp_path / "m", n_train=20, n_test=5)
    write_cifar10(tmp_path / "c", per_batch=3)
    write_listops_files(tmp_path / "l", n={"train": 6, "val": 3, "test": 3})
    np.savez(tmp_path / "a.npz", x=np.random.default_rng(0).normal(size=(20, 4, 2)), y=np.arange(20) % 2)
    tasks = [make_task("mnist", data_dir=str(tmp_path / "m")), make_task("cifar10", data_dir=str(tmp_path / "c")),
             make_task("listops", data_dir=str(tmp_path / "l")),
             make_task("listops", {"source": "generated", "min_length": 10, "max_length": 60}),
             make_task("array", {"path": str(tmp_path / "a.npz")})]
    for task in tasks:
        split = task.train()
        clone = pickle.loads(pickle.dumps(split))
        a, b = split.batch(np.arange(3, 6)), clone.batch(np.arange(3, 6))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_patch_size_option(tmp_path):
    write_mnist_like(tmp_path, n_train=20, n_test=5)
    spec = check_task(make_task("mnist", {"patch_size": 7}, data_dir=str(tmp_path)))
    assert (spec.input_dim, spec.max_tokens) == (49, 16)
    with pytest.raises(ValueError, match="patch_size=5 does not divide"):
        make_task("mnist", {"patch_size": 5}, data_dir=str(tmp_path))


def test_validation_split_fixed_across_run_seeds(tmp_path):
    write_mnist_like(tmp_path, n_train=40, n_test=5)
    a = make_task("mnist", {}, seed=0, data_dir=str(tmp_path)).val().batch(np.arange(4))
    b = make_task("mnist", {}, seed=7, data_dir=str(tmp_path)).val().batch(np.arange(4))
    assert torch.equal(a["x"], b["x"])
    ta = make_task("mnist", {}, seed=0, data_dir=str(tmp_path)).train().batch(np.arange(8))
    tb = make_task("mnist", {}, seed=7, data_dir=str(tmp_path)).train().batch(np.arange(8))
    assert not torch.equal(ta["y"], tb["y"]) or not torch.equal(ta["x"], tb["x"])  # shuffling follows the run seed


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_files():
    files = find_files(FASHION_MNIST, None)
    assert files is not None and files["train-images-idx3-ubyte"].parent == DEBIAN_FASHION
    x_train, y_train, x_test, y_test = load_idx_dataset(files)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    task = make_task("fashion-mnist")
    assert len(task.train()) + len(task.val()) == 60000 and len(task.test()["test"]) == 10000
    check_task(task, batch_size=16)


def test_cifar10(tmp_path):
    write_cifar10(tmp_path, per_batch=6)
    task = make_task("cifar10", {"val_fraction": 0.2}, seed=3, data_dir=str(tmp_path))
    spec = check_task(task)
    assert (spec.input_dim, spec.max_tokens) == (48, 64)
    assert (len(task.train()), len(task.val()), len(task.test()["test"])) == (24, 6, 6)
    pos = np.arange(8)
    a, b = task.train().batch(pos), task.train().batch(pos)
    assert torch.equal(a["x"], b["x"])  # augmentation is reproducible
    plain = make_task("cifar10", {"val_fraction": 0.2, "augment": False}, seed=3, data_dir=str(tmp_path))
    c = plain.train().batch(pos)
    assert torch.equal(a["y"], c["y"]) and not torch.equal(a["x"], c["x"])
    # evaluation splits are never augmented
    assert torch.equal(task.val().batch(np.arange(3))["x"], plain.val().batch(np.arange(3))["x"])


def test_cifar10_lra(tmp_path):
    arrays = write_cifar10(tmp_path, per_batch=4)
    task = make_task("cifar10-lra", {"val_fraction": 0.25}, data_dir=str(tmp_path))
    spec = check_task(task)
    assert (spec.input_dim, spec.max_tokens, spec.input_type) == (1, 1024, "continuous")
    test = task.test()["test"].batch(np.arange(4))
    img = arrays["images"][-4:].astype(np.float32) / 255
    grey = np.floor((img @ np.array([0.2989, 0.5870, 0.1140], np.float32)) * 255.5) / 255
    d = task._load()
    np.testing.assert_allclose(test["x"][:, :, 0].numpy(), ((grey - d["mean"][0]) / d["std"][0]).reshape(4, 1024),
                               atol=1e-4)


# -- ListOps -----------------------------------------------------------------------------------
def test_listops_files(tmp_path):
    samples = write_listops_files(tmp_path / "lra_release" / "listops-1000", n={"train": 12, "val": 5, "test": 6})
    task = make_task("listops", {}, data_dir=str(tmp_path))
    spec = check_task(task)
    assert (spec.input_type, spec.input_dim, spec.num_classes, spec.readout, spec.padded) == \
        ("discrete", 16, 10, "last", True)
    test = task.test()["test"]
    b = test.batch(np.arange(6))
    for i, (tokens, value) in enumerate(samples["test"]):
        ids = b["x"][i][b["mask"][i]].numpy()
        assert lo.detokenize(ids).split() == tokens and int(b["y"][i]) == value
        assert ids[-1] == lo.CLOSE_ID  # the last real token is the closing bracket


def test_listops_too_long_policy(tmp_path):
    samples = write_listops_files(tmp_path, n={"train": 10, "val": 4, "test": 4}, min_length=20, max_length=120)
    lengths = {s: [len(t) for t, _ in v] for s, v in samples.items()}
    limit = int(np.median(lengths["train"]))
    n_long = {s: sum(length > limit for length in v) for s, v in lengths.items()}
    total = sum(n_long.values())
    with pytest.raises(ValueError) as info:
        make_task("listops", {"max_tokens": limit}, data_dir=str(tmp_path)).train()
    msg = str(info.value)
    assert f"{total} sequences are longer than max_tokens={limit}" in msg
    assert f"train: {n_long['train']} of 10" in msg and "too_long=skip" in msg and "never truncated" in msg
    task = make_task("listops", {"max_tokens": limit, "too_long": "skip"}, data_dir=str(tmp_path))
    assert len(task.train()) == 10 - n_long["train"]
    assert task.skipped["train"] == n_long["train"]
    b = task.train().batch(np.arange(len(task.train())))
    assert b["x"].shape[1] <= limit
    with pytest.raises(ValueError, match="too_long must be one of"):
        make_task("listops", {"too_long": "truncate"})


def test_listops_generated():
    opts = {"source": "generated", "min_length": 30, "max_length": 200, "val_samples": 6, "test_samples": 7}
    task = make_task("listops", opts, seed=1)
    spec = check_task(task)
    assert spec.max_tokens == 199
    a = task.train().batch(np.arange(100, 106))
    again = make_task("listops", opts, seed=1).train().batch(np.arange(100, 106))
    other = make_task("listops", opts, seed=2).train().batch(np.arange(100, 106))
    assert torch.equal(a["x"], again["x"]) and not torch.equal(a["x"][:, :5], other["x"][:, :5])
    for i in range(6):
        tokens = lo.detokenize(a["x"][i][a["mask"][i]].numpy()).split()
        assert evaluate_tokens(tokens) == int(a["y"][i]) and 30 < len(tokens) < 200
    # fixed validation / test sets: the same for every run seed
    v1 = task.val().batch(np.arange(6))
    v2 = make_task("listops", opts, seed=9).val().batch(np.arange(6))
    assert torch.equal(v1["x"], v2["x"]) and len(task.val()) == 6 and len(task.test()["test"]) == 7
    with pytest.raises(ValueError, match="max_length-1=1999 tokens but max_tokens=1024"):
        make_task("listops", {"source": "generated", "max_tokens": 1024})


# -- remote homology ---------------------------------------------------------------------------
def test_remote_homology(tmp_path):
    records = write_tape_remote_homology(tmp_path / "remote_homology", n=9, lengths=(5, 60))
    task = make_task("remote-homology", {}, data_dir=str(tmp_path))
    spec = check_task(task)
    assert (spec.input_dim, spec.num_classes, spec.padded) == (26, 1195, True)
    tests = task.test()
    assert list(tests) == ["test", "test_superfamily", "test_family"]
    b = tests["test_family"].batch(np.arange(9))
    for i, rec in enumerate(records["test_family_holdout"]):
        ids = b["x"][i][b["mask"][i]].numpy()
        assert "".join(tape.IUPAC[j - 1] for j in ids) == rec["primary"] and int(b["y"][i]) == rec["fold_label"]


def test_remote_homology_too_long(tmp_path):
    write_tape_remote_homology(tmp_path, n=9, lengths=(5, 60))
    with pytest.raises(ValueError, match=r"sequences are longer than max_tokens=30.*Per split: train: \d+ of 9"):
        make_task("remote-homology", {"max_tokens": 30}, data_dir=str(tmp_path)).train()
    task = make_task("remote-homology", {"max_tokens": 30, "too_long": "skip"}, data_dir=str(tmp_path))
    check_task(task, batch_size=2)
    assert sum(task.skipped.values()) > 0


# -- array -------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [
    np.random.default_rng(0).normal(size=(30, 7, 5)).astype(np.float32),
    np.random.default_rng(0).integers(0, 9, (30, 11)),
    np.random.default_rng(0).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8),
], ids=["tokens", "discrete", "images"])
def test_array_task(tmp_path, x):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 4)
    check_task(make_task("array", {"path": "d.npz"}, data_dir=str(tmp_path)), batch_size=3)
