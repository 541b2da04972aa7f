"""Length-bucketed batches: similar lengths together, a pure function of (seed, step), exact resume on a padded task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from fpt.data.fixtures import write_tape_remote_homology
from fpt.data.sequences import PackedSequences, PackedSequenceSplit
from fpt.data.splits import LengthBucketedStream, by_length


def packed(n: int = 500, seed: int = 0) -> PackedSequenceSplit:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 20, int(rng.integers(5, 400))) for _ in range(n)]
    return PackedSequenceSplit(PackedSequences(seqs), np.arange(n) % 7, shuffle_seed=3)


def test_buckets_hold_the_plain_streams_samples_grouped_by_length():
    split = packed()
    G, P = 16, 8
    stream = LengthBucketedStream(split, G, P, seed=5)
    positions = np.arange(3 * G * P + 5 * G)  # three whole windows and part of a fourth
    base = stream.positions(positions)
    for w in range(3):  # each window: exactly the plain stream's positions there, in another order
        window = slice(w * G * P, (w + 1) * G * P)
        assert sorted(base[window]) == list(positions[window])
    plain_padded = bucketed_padded = 0
    for step in range(3 * P):
        b = np.arange(step * G, (step + 1) * G)
        lengths = split.token_lengths(stream.positions(b))
        assert np.array_equal(lengths, stream.token_lengths(b))
        bucketed_padded += G * lengths.max()
        plain_padded += G * split.token_lengths(b).max()
        batch = stream.batch(b)
        assert batch["x"].shape[1] == lengths.max() and torch.equal(batch["mask"].sum(1), torch.as_tensor(lengths))
    assert bucketed_padded < 0.65 * plain_padded  # lengths 5..400: most of the padding is gone
    # A pure function of the position: another instance, positions asked in any order (a resumed run, a DDP rank
    # asking for its half of a global batch) give the same samples.
    again = LengthBucketedStream(packed(), G, P, seed=5)
    late = np.arange(2 * G * P + 3 * G, 2 * G * P + 3 * G + G // 2)
    assert np.array_equal(again.positions(late), base[late])
    for name in ("x", "y", "mask"):
        assert torch.equal(again.batch(late)[name], stream.batch(late)[name])
    assert not np.array_equal(LengthBucketedStream(split, G, P, seed=6).positions(positions), base)  # the seed matters


def test_evaluation_order_is_longest_first_and_covers_every_sample():
    split = PackedSequenceSplit(packed().seqs, np.zeros(500, dtype=np.int64))
    order = by_length(split)
    assert sorted(order) == list(range(500))
    lengths = split.seqs.lengths[order]
    assert np.all(np.diff(lengths) <= 0)
    from fpt.data.splits import ArraySplit

    assert by_length(ArraySplit({"x": np.zeros((4, 3)), "y": np.zeros(4)})) is None  # fixed length: nothing to sort


def test_generated_listops_stream_buckets_without_drawing_twice():
    from fpt.tasks import make_task

    task = make_task("listops", {"source": "generated", "min_length": 10, "max_length": 60, "max_tokens": 60,
                                 "val_samples": 8, "test_samples": 8}, seed=1)
    train = task.train()
    calls = []
    make = train.make_sample
    train.make_sample = lambda rng: calls.append(1) or make(rng)
    stream = LengthBucketedStream(train, 8, 4, seed=1)
    batches = [stream.batch(np.arange(s * 8, (s + 1) * 8)) for s in range(4)]
    assert len(calls) == 32  # each sample of the window drawn once: for its length, then batched
    plain = make_task("listops", {"source": "generated", "min_length": 10, "max_length": 60, "max_tokens": 60,
                                  "val_samples": 8, "test_samples": 8}, seed=1).train()
    lengths = sorted(torch.cat([b["mask"].sum(1) for b in batches]).tolist())
    assert lengths == sorted(plain.batch(np.arange(32))["mask"].sum(1).tolist())  # the same samples, regrouped
    assert sum(b["x"].numel() for b in batches) < sum(plain.batch(np.arange(s * 8, (s + 1) * 8))["x"].numel()
                                                     for s in range(4))  # less padding


LISTOPS = {"source": "generated", "min_length": 10, "max_length": 60, "max_tokens": 60, "val_samples": 24,
           "test_samples": 24}


def test_resume_on_a_padded_task_reproduces_the_uninterrupted_run(tmp_path, tiny_dirs, run_values):
    """The exact-resume test (tests/test_training.py) on ListOps: variable lengths, bucketed batches whose windows
    (4 batches) straddle the resume point."""
    from fpt.config.files import build_config
    from fpt.training.fitting import fit

    def values(run_dir, steps):
        return run_values(tiny_dirs["llama"], run_dir, task="listops", task_options=LISTOPS, steps=steps,
                          bucket_by_length=4, eval_every=3, batch_size=4, eval_batch_size=8)

    full = fit(build_config(values(tmp_path / "full", 8)), enable_progress_bar=False)
    fit(build_config(values(tmp_path / "split", 5)), enable_progress_bar=False)
    resumed = fit(build_config(values(tmp_path / "split", 8)), resume=True, enable_progress_bar=False)
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test"] == full["test"] and resumed["val"] == full["val"] and resumed["steps"] == 8


def test_bucketing_trains_on_other_batches_and_evaluation_order_changes_no_metric(tmp_path, tiny_dirs, run_values):
    from fpt.config.files import build_config
    from fpt.training.fitting import fit

    def values(run_dir, bucket):
        return run_values(tiny_dirs["llama"], run_dir, task="listops", task_options=LISTOPS, steps=4,
                          bucket_by_length=bucket, eval_every=4, batch_size=4, eval_batch_size=5)

    fit(build_config(values(tmp_path / "plain", 0)), enable_progress_bar=False)
    fit(build_config(values(tmp_path / "bucketed", 2)), enable_progress_bar=False)
    a, b = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "bucketed" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # other batches, another model

    # Re-testing a run with evaluation batches in the plain order gives the same metrics as the sorted order.
    import fpt.training.fitting as training
    import fpt.training.module as training_module

    sorted_metrics = training.test_run(tmp_path / "plain")
    original = training_module.by_length
    training_module.by_length = lambda split: None
    try:
        plain_order = training.test_run(tmp_path / "plain")
    finally:
        training_module.by_length = original
    assert sorted_metrics["test"]["accuracy"] == plain_order["test"]["accuracy"]
    assert sorted_metrics["test"]["loss"] == pytest.approx(plain_order["test"]["loss"], rel=1e-5)


def test_protocol_and_older_runs(tmp_path):
    from fpt.config.files import build_config, load_config

    assert build_config({"task": "listops"}).bucket_by_length == 100
    assert build_config({"task": "remote-homology", "protocol": "paper"}).bucket_by_length == 100  # TAPE's loader
    assert build_config({"task": "listops", "protocol": "paper"}).bucket_by_length == 0
    with pytest.raises(ValueError, match=r"bucket_by_length.*must be an integer >= 0"):
        build_config({"bucket_by_length": -1})
    # a config.yaml written before the option existed resumes with the batches it had: none bucketed
    old = build_config({"task": "listops"}).to_dict()
    old.pop("bucket_by_length")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "config.yaml").bucket_by_length == 0


def test_homology_fixture_lengths(tmp_path):
    from fpt.tasks import make_task

    write_tape_remote_homology(tmp_path, n=40, lengths=(5, 60))
    task = make_task("remote-homology", {"download": False, "max_tokens": 64}, seed=0, data_dir=str(tmp_path))
    train = task.train()
    lengths = train.token_lengths(np.arange(40))
    assert np.array_equal(np.sort(lengths), np.sort(task._load()["train"][0].lengths))
    stream = LengthBucketedStream(train, 8, 5, seed=0)
    spreads = [np.ptp(stream.token_lengths(np.arange(s * 8, (s + 1) * 8))) for s in range(5)]
    plain = [np.ptp(train.token_lengths(np.arange(s * 8, (s + 1) * 8))) for s in range(5)]
    assert sum(spreads) < sum(plain) / 2
