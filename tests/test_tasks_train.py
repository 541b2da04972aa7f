"""Every real-data task trains end to end (fit -> checkpoint -> test) on a tiny backbone, from fixture
files in the official formats; the test split's size in results.json is the official test file's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fpt.config.files import build_config
from fpt.data.fixtures import write_cifar10, write_listops_files, write_mnist_like, write_tape_remote_homology
from fpt.training.fitting import fit


# Datasets never come from the network here, and each test gets its own empty cache.
pytestmark = pytest.mark.usefixtures("offline_data")


def _fixture_data(task: str, root):
    """Write the task's files; return (task options, number of test samples, test split names)."""
    if task in ("mnist", "fashion-mnist"):
        write_mnist_like(root / task, n_train=40, n_test=12)
        return {"val_fraction": 0.25}, 12, ["test"]
    if task in ("cifar10", "cifar10-lra"):
        write_cifar10(root, per_batch=6)
        # LRA's 1024 single-pixel tokens exceed the tiny model's 64 positions: 4x4 patches -> 64 tokens.
        return ({"val_fraction": 0.2} if task == "cifar10" else {"val_fraction": 0.2, "patch_size": 4}), 6, ["test"]
    if task == "listops":
        write_listops_files(root, n={"train": 16, "val": 6, "test": 7}, min_length=10, max_length=60)
        return {"max_tokens": 64}, 7, ["test"]
    if task == "remote-homology":
        write_tape_remote_homology(root / "remote_homology", n=9, lengths=(5, 60))
        return {"max_tokens": 64}, 9, ["test", "test_superfamily", "test_family"]
    if task == "array":
        rng = np.random.default_rng(0)
        np.savez(root / "data.npz", x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 40))
        return {"path": str(root / "data.npz"), "patch_size": 4, "test_fraction": 0.25}, 10, ["test"]
    raise KeyError(task)


@pytest.mark.parametrize("task", ["mnist", "fashion-mnist", "cifar10", "cifar10-lra", "listops",
                                  "remote-homology", "array"])
def test_task_trains_end_to_end(task, tmp_path, tiny_dirs):
    options, n_test, test_splits = _fixture_data(task, tmp_path)
    config = build_config({
        "task": task, "task_options": options, "data_dir": str(tmp_path), "backbone": tiny_dirs["llama"],
        "init": "random", "steps": 4, "batch_size": 4, "eval_every": 2, "eval_batch_size": 8,
        "device": "cpu", "run_dir": str(tmp_path / "run"),
    })
    results = fit(config, enable_progress_bar=False)
    assert results["steps"] == 4
    for split in test_splits:
        assert 0.0 <= results[split]["accuracy"] <= 1.0 and np.isfinite(results[split]["loss"])
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test"] == results["test"]
    # the held-out metrics are averages over the whole official test split: accuracy is k / n_test
    assert abs(results["test"]["accuracy"] * n_test - round(results["test"]["accuracy"] * n_test)) < 1e-4
