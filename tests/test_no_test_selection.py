"""Nothing is chosen on the test split, under any protocol.

Every choice a run or a sweep makes (the best point and ``best.safetensors``, early stopping at the target,
a sweep's learning rate) is computed from the ``val`` metrics, so it is enough that (1) no batch of a test
split is read before training and validation are over, and (2) the validation split shares no sample with a
test split. The splits of real fits are instrumented: every ``batch`` call is logged with its phase and a
digest of each sample it hands out. ``--protocol paper`` is the case that matters: the 2021 code's ListOps
and remote homology report the official validation split as the test, so fpt must validate on data held out
of the training split instead.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from fpt.config import build_config
from fpt.data.fixtures import write_listops_files, write_tape_remote_homology
from fpt.tasks.registry import registered_tasks


def _digests(batch: dict[str, torch.Tensor]) -> list[str]:
    x, mask = batch["x"], batch.get("mask")
    out = []
    for i in range(x.shape[0]):
        row = x[i][mask[i]] if mask is not None else x[i]
        out.append(hashlib.sha1(row.contiguous().numpy().tobytes()).hexdigest())
    return out


@pytest.fixture
def reads(monkeypatch):
    """Log (phase, sample digests) of every batch read through a task's train / val / test splits."""
    events: list[tuple[str, list[str]]] = []

    def record(split, phase):
        inner = split.batch

        def batch(indices):
            out = inner(indices)
            events.append((phase, _digests(out)))
            return out

        split.batch = batch
        return split

    originals = {}
    for cls in set(registered_tasks().values()):
        originals[cls] = (cls.train, cls.val, cls.test)
        monkeypatch.setattr(cls, "train", lambda self, _o=cls.train: record(_o(self), "train"))
        monkeypatch.setattr(cls, "val", lambda self, _o=cls.val: record(_o(self), "val"))
        monkeypatch.setattr(cls, "test", lambda self, _o=cls.test: {name: record(s, "test:" + name)
                                                                    for name, s in _o(self).items()})
    return events


def _check(events, content: bool = True) -> None:
    phases = [p for p, _ in events]
    assert "train" in phases and "val" in phases and any(p.startswith("test:") for p in phases)
    first_test = next(i for i, p in enumerate(phases) if p.startswith("test:"))
    # (1) every test read comes after the last training batch and the last validation: the final test only
    assert all(not p.startswith("test:") for p in phases[:first_test])
    assert all(p.startswith("test:") for p in phases[first_test:]), phases[first_test:]
    if content:  # (2) the validation split is not a test split under another name
        val = {d for p, ds in events if p == "val" for d in ds}
        for name in {p for p in phases if p.startswith("test:")}:
            test = {d for p, ds in events if p == name for d in ds}
            assert not val & test, f"validation shares {len(val & test)} samples with {name}"


def _fit(values, tmp_path):
    from fpt.training.fitting import fit

    values = {"steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 8, "device": "cpu", "layers": 1,
              "target_accuracy": 0.01, "stop_at_target": True, "run_dir": str(tmp_path / "run"), **values}
    return fit(build_config(values), enable_progress_bar=False)


@pytest.mark.parametrize("protocol", ["fpt", "paper"])
def test_listops_files_never_select_on_the_reported_split(protocol, tmp_path, tiny_dirs, reads):
    # paper: basic_val is reported as test (the 2021 code); fpt: basic_test. Long expressions: paper cuts to 512.
    # (the tiny backbones have 64 positions: the 2021 cut and padding at 512 become 64, the split choice stays)
    write_listops_files(tmp_path, n={"train": 20, "val": 6, "test": 6}, min_length=30, max_length=60)
    options = {"source": "files", "max_tokens": 64, **({"truncate_at": 64, "pad_to": 64} if protocol == "paper" else {})}
    r = _fit({"protocol": protocol, "task": "listops", "task_options": options,
              "data_dir": str(tmp_path), "backbone": tiny_dirs["llama"], "init": "random"}, tmp_path)
    _check(reads)
    if protocol == "paper":
        assert r["task_options"]["test_split"] == "val" and "basic_train" in r["data"]["validation"]
        assert r["val"]["best_step"] is not None  # stopped early at the target: on validation


def test_generated_listops_paper_validates_on_a_third_set(tmp_path, tiny_dirs, reads):
    options = {"source": "generated", "min_length": 20, "max_length": 60, "max_tokens": 60, "val_samples": 12,
               "test_samples": 12, "truncate_at": 64, "pad_to": 64, "test_split": "val"}
    r = _fit({"protocol": "paper", "task": "listops", "task_options": options, "backbone": tiny_dirs["llama"],
              "init": "random"}, tmp_path)
    _check(reads)
    assert "separate generated set" in r["data"]["validation"]


@pytest.mark.parametrize("protocol", ["fpt", "paper"])
def test_remote_homology_never_selects_on_the_reported_split(protocol, tmp_path, tiny_dirs, reads):
    write_tape_remote_homology(tmp_path / "remote_homology", n=16, lengths=(5, 30))
    r = _fit({"protocol": protocol, "task": "remote-homology", "task_options": {"max_tokens": 40},
              "data_dir": str(tmp_path), "backbone": tiny_dirs["llama"], "init": "random"}, tmp_path)
    _check(reads)
    if protocol == "paper":  # TAPE's valid is the test (the 2021 code): validation comes from TAPE's train
        assert r["task_options"]["eval_split"] == "valid" and "TAPE's train" in r["data"]["validation"]


@pytest.mark.parametrize("protocol", ["fpt", "paper"])
def test_bit_tasks_read_the_test_only_at_the_end(protocol, tmp_path, tiny_dirs, reads):
    # 5 + 5 bits have 1024 values: generated validation and test sets share some by chance (separate streams),
    # so only the order is checked here
    _fit({"protocol": protocol, "task": "bit-xor", "backbone": tiny_dirs["llama"], "init": "random"}, tmp_path)
    _check(reads, content=False)
