"""Data-parallel training: 2 CPU processes (gloo) launched by torchrun match one process with the same
global batch; DDP touches only the trained parameters; files are written once; metrics are global."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fpt.config.files import build_config
from fpt.training.module import FPTModule, ddp_ignored_names
from fpt.training.fitting import fit

TASK = {"n_bits": 4, "val_samples": 64, "test_samples": 96}


def _values(tiny, run_dir, **kw):
    # fp32: two ranks' half batches round differently from one whole batch in bf16 (auto's path on some CPUs)
    values = dict(task="bit-xor", task_options=TASK, backbone=tiny, steps=6, batch_size=8, eval_every=3,
                  eval_batch_size=16, device="cpu", run_dir=str(run_dir), lr=3e-3, precision="32-true")
    values.update(kw)
    return values


def test_ddp_reduces_only_trained_parameters(tiny_llama, tmp_path):
    """Frozen parameters are neither all-reduced (no grad) nor broadcast at start-up (ignored)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    module = FPTModule(build_config(_values(tiny_llama, tmp_path / "x")))
    module._ddp_params_and_buffers_to_ignore = ddp_ignored_names(module)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(module, find_unused_parameters=False)
        reduced, _ = ddp._build_params_for_reducer()
        trained = [p for p in module.parameters() if p.requires_grad]
        assert {id(p) for p in reduced} == {id(p) for p in trained}
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        assert frozen and frozen <= ddp.parameters_to_ignore
        assert sum(p.numel() for p in reduced) == module.model.parameter_counts()["trainable"]
        assert not ddp.modules_buffers  # nothing to broadcast before each forward
    finally:
        dist.destroy_process_group()


def test_torchrun_two_processes_match_one(tiny_llama, tmp_path):
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fpt.cli", "fit", "--backbone", tiny_llama, "--task", "bit-xor", "--steps", "6", "--batch-size", "8",
           "--eval-every", "3", "--eval-batch-size", "16", "--lr", "3e-3", "--device", "cpu", "--devices", "2",
           "--strategy", "ddp", "--precision", "32-true", "--run-dir", str(ddp_dir), "--no-progress-bar"]
    for k, v in TASK.items():
        cmd += ["-o", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    single = fit(build_config(_values(tiny_llama, one_dir)))
    a, b = load_file(str(ddp_dir / "model.safetensors")), load_file(str(one_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    initial = FPTModule(build_config(_values(tiny_llama, tmp_path / "init"))).model.trainable_state_dict()
    assert (a["head.weight"] - initial["head.weight"]).abs().max() > 1e-3  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    # metrics are global: the ranks' test shares (96 samples, 16 per batch, 3 batches each) reduce to
    # the one-process numbers; a rank-local metric would describe half the test set
    ddp = json.loads((ddp_dir / "results.json").read_text())
    for split in ("test",):
        for key in ("accuracy", "exact_accuracy", "loss"):
            assert ddp[split][key] == pytest.approx(single[split][key], rel=1e-4, abs=1e-5), key
    assert ddp["val"]["best_accuracy"] == pytest.approx(single["val"]["best_accuracy"], abs=1e-6)
    assert ddp["steps"] == single["steps"] == 6
    assert ddp["world_size"] == 2 and single["world_size"] == 1

    # written once, by rank 0: one metrics.csv without repeated rows, the usual checkpoint files
    with open(ddp_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_rows = [r for r in rows if r.get("val/accuracy")]
    assert [int(float(r["step"])) for r in val_rows] == [3, 6]  # one row per validation, after optimizer steps 3 and 6
    assert not list(ddp_dir.glob("features*")) and not list(ddp_dir.glob("version_*"))
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == \
        sorted(p.name for p in (one_dir / "checkpoints").iterdir())
