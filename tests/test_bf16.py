"""The bf16 path (issue 23): what `auto` picks on which machine, frozen weights stored in bf16 with everything
that trains in fp32, and runs of that path that save, resume, test and predict exactly.

Tiny backbones from configs (conftest.py); nothing is downloaded, nothing is timed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from fpt.model import fastpath
from fpt.runs.checkpoint import build_model, keep_choices, load_run
from fpt.config.files import build_config
from fpt.data.splits import TaskSpec
from fpt.training import fitting
from fpt.training.fitting import fit

AMX = {"model": "Intel Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"],
       "torch_capability": "AVX512", "bf16_matrix_engine": "AMX-BF16"}
AVX512_BF16 = {"model": "AMD EPYC", "flags": ["avx2", "avx512f", "avx512_bf16"], "torch_capability": "AVX512",
               "bf16_matrix_engine": "AVX512-BF16"}
AVX2 = {"model": "an AVX2 CPU", "flags": ["avx2"], "torch_capability": "AVX2", "bf16_matrix_engine": None}


def _plan(cpu, accelerator="cpu", tokens=49, **kw):
    settings = {"precision": "auto", "attention": "auto", "compile": "auto", **kw}
    return fastpath.plan_speed(accelerator=accelerator, tokens=tokens, cpu=cpu, **settings)


def test_auto_picks_bf16_only_where_a_bf16_matrix_engine_measured_faster():
    for cpu in (AMX, AVX512_BF16):
        plan = _plan(cpu)
        assert (plan.precision, plan.frozen_dtype, plan.attention, plan.compile) == ("bf16-mixed", "bfloat16", "eager",
                                                                                     False)
        assert cpu["bf16_matrix_engine"] in plan.reasons["precision"] and plan.cpu == cpu
        assert fastpath.MEASURED_CPU_STEP_MS[cpu["bf16_matrix_engine"]]["bf16"] < \
            fastpath.MEASURED_CPU_STEP_MS[cpu["bf16_matrix_engine"]]["fp32"]
    plain = _plan(AVX2)  # no bf16 matrix engine: fp32, as before
    assert (plain.precision, plain.frozen_dtype, plain.attention, plain.compile) == ("32-true", "float32", "sdpa", False)
    # long sequences: flash attention; GPUs: bf16 with SDPA and compile, whatever the host CPU
    assert _plan(AVX512_BF16, tokens=fastpath.CPU_BF16_EAGER_MAX_TOKENS + 1).attention == "sdpa"
    gpu = _plan(AVX2, accelerator="gpu")
    assert (gpu.precision, gpu.frozen_dtype, gpu.attention, gpu.compile, gpu.cpu) == \
        ("bf16-mixed", "bfloat16", "sdpa", True, None)
    # compile: where it measured faster (AMX), for long runs of fixed length only; never where it did not
    for steps, padded, on in ((10**5, False, True), (100, False, False), (10**5, True, False)):
        assert _plan(AMX, steps=steps, padded=padded).compile is on
    assert _plan(AVX512_BF16, steps=10**5).compile and not _plan(AVX512_BF16, steps=1000).compile
    assert not _plan(AVX2, steps=10**5).compile  # fp32 there
    # every choice is recorded for results.json and printed once
    assert set(plain.record()) == {"precision", "frozen_dtype", "attention", "compile", "reasons", "cpu"}
    assert plain.describe().count("\n") == 3 and "AVX2" in plain.describe()


def test_explicit_settings_win():
    plan = _plan(AVX512_BF16, precision="32-true", attention="sdpa", compile=True)
    assert (plan.precision, plan.frozen_dtype, plan.attention, plan.compile) == ("32-true", "float32", "sdpa", True)
    assert set(plan.reasons.values()) == {"set explicitly"}
    bf16 = _plan(AVX2, precision="bf16-mixed")  # bf16 asked for on a CPU without an engine: slower, still correct
    assert (bf16.precision, bf16.frozen_dtype, bf16.attention) == ("bf16-mixed", "bfloat16", "eager")
    assert _plan(AMX, attention="sdpa").attention == "sdpa"
    # FSDP shards need one dtype per wrapped module: fp32 storage there
    assert fastpath.frozen_storage("bf16-mixed", strategy="fsdp") == "float32"
    assert fastpath.frozen_storage("16-mixed") == "float32"
    config = build_config({"precision": "32-true", "attn_implementation": "eager", "compile": False})
    spec = TaskSpec(input_type="continuous", input_dim=1, max_tokens=10, num_classes=2, num_labels=1, readout="last")
    assert fastpath.plan_for(config, spec).reasons == {k: "set explicitly" for k in ("precision", "attention", "compile")}
    with pytest.raises(ValueError, match="attn_implementation"):
        build_config({"attn_implementation": "flash"})


def test_cpu_info_describes_this_machine():
    info = fastpath.cpu_info()
    assert info["model"] and info["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    flags = set(info["flags"])
    assert info["bf16_matrix_engine"] in ((None, "AVX512-BF16", "AMX-BF16") if flags & {"avx512_bf16", "amx_bf16"}
                                          else (None,))


def _values(backbone, run_dir, **kw):
    return {"task": "bit-xor", "task_options": {"n_bits": 3, "val_samples": 16, "test_samples": 16},
            "backbone": str(backbone), "init": "random", "steps": 4, "batch_size": 8, "eval_every": 2,
            "eval_batch_size": 16, "device": "cpu", "run_dir": str(run_dir), **kw}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])  # nn.Linear, GPT-2's Conv1D, an encoder
def test_bf16_storage_trains_in_fp32_and_computes_as_autocast_does(arch, tiny_dirs, tmp_path):
    same = {"attn_implementation": "eager"}  # auto would differ between the two precisions
    fp32 = build_model(build_config(_values(tiny_dirs[arch], tmp_path, precision="32-true", **same)))
    bf16 = build_model(build_config(_values(tiny_dirs[arch], tmp_path, precision="bf16-mixed", **same)))
    assert bf16.frozen_dtype == torch.bfloat16 and fp32.frozen_dtype == torch.float32
    # the fingerprint is of the weights as built: the checkpoint identity does not depend on the storage
    assert bf16.backbone.identity() == fp32.backbone.identity()
    matmuls = [m for m in bf16.backbone.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    assert matmuls and all(p.dtype == torch.bfloat16 for m in matmuls for p in m.parameters(recurse=False))
    trained = [(n, p) for n, p in bf16.named_parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for _, p in trained)
    norms = [n for n, m in bf16.named_modules() if "Norm" in type(m).__name__ and any(
        p.requires_grad for p in m.parameters(recurse=False))]
    assert norms  # FPT trains the norms: they stay fp32 parameters next to bf16 matmul weights
    assert {n for n, _ in trained} == set(fp32.trainable_state_dict())
    assert torch.equal(torch.cat([p.flatten() for _, p in trained]),
                       torch.cat([p.flatten() for p in fp32.trainable_state_dict().values()]))

    x = torch.randint(0, 2, (4, 6, 1)).float()  # bit-xor's 3 + 3 bits, one per token
    fp32.eval(), bf16.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = fp32(x)
    out = bf16(x)  # no autocast around it: the model applies it itself (prediction, cached features)
    assert out.dtype == torch.float32  # the head and the loss compute in fp32
    assert torch.equal(out, reference)  # autocast rounds the weights to bf16 anyway: the same numbers

    loss = out.square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for _, p in trained if p.grad is not None)
    assert all(p.grad is None for p in bf16.parameters() if not p.requires_grad)


def test_zero_input_and_non_finite_steps_on_the_bf16_path(tiny_dirs, tmp_path):
    """An exactly-zero input vector stays non-zero at the backbone (positions are never zero), gradients
    stay finite; a non-finite step is skipped and changes nothing."""
    model = build_model(build_config(_values(tiny_dirs["llama"], tmp_path, precision="bf16-mixed",
                                             task="array", task_options={"path": _array(tmp_path), "kind": "tokens",
                                                                     "normalize": False})))
    x = torch.zeros(4, 6, 3)
    with model.frozen_autocast("cpu"):
        h = model.embed(x)
    assert bool((h.abs().sum(-1) > 0).all())
    params = [p for p in model.parameters() if p.requires_grad]
    model(x).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    optimizer = fastpath.make_optimizer(params, 1e-2)
    guard = fastpath.StepGuard(1.0, max_bad_steps=3)
    for p in params:
        p.grad = None
    before = [p.detach().clone() for p in params]
    model(torch.full_like(x, float("nan"))).square().mean().backward()
    norm = guard.before_step(optimizer, params)
    optimizer.step()
    assert torch.isnan(norm) and guard.total_steps() == 1
    assert all(torch.equal(a, p.detach()) and p.dtype == torch.float32 for a, p in zip(before, params))


def _array(tmp_path) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6, 3)).astype(np.float32)
    y = rng.integers(0, 2, 24)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x[:16], y_train=y[:16], x_val=x[16:20], y_val=y[16:20], x_test=x[20:], y_test=y[20:])
    return str(path)


def test_bf16_run_saves_resumes_tests_and_predicts_exactly(tiny_dirs, tmp_path, monkeypatch):
    """A run that auto put on the bf16 path keeps it when resumed, tested or loaded on a CPU where auto would
    pick fp32; the checkpoint holds what it held before (fp32 trained parameters, the same identity)."""
    backbone = tiny_dirs["llama"]
    monkeypatch.setattr(fastpath, "cpu_info", lambda: AVX512_BF16)
    whole = fit(build_config(_values(backbone, tmp_path / "whole", steps=6)))
    assert whole["fast_path"]["frozen_dtype"] == "bfloat16" and whole["precision"] == "bf16-mixed"
    assert whole["fast_path"]["cpu"]["flags"] == AVX512_BF16["flags"]
    saved = load_file(str(tmp_path / "whole" / "model.safetensors"))
    config32 = build_config(_values(backbone, tmp_path / "x", precision="32-true"))
    fp32_model = build_model(config32)
    assert set(saved) == set(fp32_model.trainable_state_dict())
    assert all(t.dtype == torch.float32 for t in saved.values())
    with safe_open(str(tmp_path / "whole" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["fingerprint"] == fp32_model.backbone.identity()["fingerprint"]
    ckpt = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == {f"model.{n}" for n in saved}
    assert ckpt["fpt"]["fast_path"]["precision"] == "bf16-mixed"

    # resumed (on a CPU without a bf16 engine) = uninterrupted, bit for bit
    fit(build_config(_values(backbone, tmp_path / "split", steps=2)))
    monkeypatch.setattr(fastpath, "cpu_info", lambda: AVX2)
    assert fastpath.choose_precision("auto", "cpu")[0] == "32-true"
    resumed_results = fit(build_config(_values(backbone, tmp_path / "split", steps=6)), resume=True)
    assert resumed_results["fast_path"]["frozen_dtype"] == "bfloat16"
    resumed = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)

    # loaded back: built as it trained (bf16 storage), it tests exactly as the run did
    config, model = load_run(tmp_path / "whole")
    assert model.frozen_dtype == torch.bfloat16 and config.precision == "bf16-mixed"
    assert fitting.test_run(tmp_path / "whole")["test"] == pytest.approx(whole["test"], rel=0, abs=0)
    # explicit settings still win over the recorded ones
    fresh = build_config(_values(backbone, tmp_path / "y", precision="32-true"))
    keep_choices(fresh, whole["fast_path"])
    assert fresh.precision == "32-true" and fresh.attn_implementation == "eager"
