"""Performance features: the sync-free step guard, the fast-path switches, cached-feature mode, `fpt bench`.

Tiny Llama backbones are built from a config in a temporary directory; nothing is downloaded.
The SmolLM2 timings are `benchmark`-marked (deselected by default; `make bench`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_LLAMA
from safetensors import safe_open
from safetensors.torch import load_file

from fpt.model import fastpath
from fpt.config.files import build_config
from fpt.training.module import EvalBatchSampler, FPTModule
from fpt.runs.checkpoint import build_model
from fpt.training.fitting import fit



def _need_smollm2():
    from fpt.backbones.smollm2 import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except (FileNotFoundError, OSError, ImportError) as err:
        pytest.skip(f"SmolLM2 GGUF not installed ({err})")


def _config(tiny, tmp_path, name, **kw):
    values = dict(task="bit-xor", task_options={"n_bits": 4, "val_samples": 64, "test_samples": 64}, backbone=tiny,
                  steps=6, batch_size=8, eval_every=3, eval_batch_size=32, device="cpu", run_dir=str(tmp_path / name))
    values.update(kw)
    return build_config(values)


# -- the step guard ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_step_guard_skips_counts_and_trips(fused):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = fastpath.make_optimizer([p], 0.1, fused=fused)
    guard = fastpath.StepGuard(1.0, max_bad_steps=2)

    def step(grad, i):
        p.grad = grad.clone()
        norm = guard.before_step(opt, [p], step=i)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    norm = step(torch.full((5,), 3.0), 0)
    assert guard.sync_free is fused
    assert torch.isclose(norm, torch.tensor(3.0 * 5 ** 0.5))  # the norm before clipping
    after_good = p.detach().clone()
    steps_before = float(opt.state[p]["step"])
    assert torch.isnan(step(torch.full((5,), float("nan")), 1))
    assert torch.equal(p.detach(), after_good)  # skipped: nothing moved
    assert float(opt.state[p]["step"]) == steps_before  # ... not even Adam's step count
    assert guard.total_steps() == 1 and guard.in_a_row_steps() == 1 and guard.check() == (False, -1)
    step(torch.ones(5), 2)  # a good step resets the run of bad ones
    assert guard.in_a_row_steps() == 0 and not torch.equal(p.detach(), after_good)
    step(torch.full((5,), float("inf")), 3)
    step(torch.full((5,), float("nan")), 4)
    assert guard.check() == (True, 4) and guard.total_steps() == 3
    if fused:  # once tripped, the device skips every later step until the host stops the run
        frozen = p.detach().clone()
        step(torch.ones(5), 5)
        assert torch.equal(p.detach(), frozen)


def _nan_grads(monkeypatch) -> list:
    """Every gradient of the head becomes NaN; returns the list that receives the model fit builds."""
    import fpt.training.module as training

    original, built = training.build_model, []

    def build(config, task=None):
        model = original(config, task)
        model.head.weight.register_hook(lambda g: g * float("nan"))
        built.append(model)
        return model

    monkeypatch.setattr(training, "build_model", build)
    return built


@pytest.mark.parametrize("fused", [True, False])
def test_fit_stops_after_bad_steps_with_head_untouched(tiny_llama, tmp_path, monkeypatch, fused):
    from fpt.runs.health import NonFiniteGradientError

    config = _config(tiny_llama, tmp_path, f"bad-{fused}", steps=20, eval_every=5, max_bad_steps=3,
                     fused_optimizer=fused)
    initial = build_model(config).head.weight.detach().clone()
    built = _nan_grads(monkeypatch)
    # The plain path stops at the 3rd bad step (step index 2); the sync-free one when the host next
    # looks (every log_every_n_steps = 5 steps here, before the validation and its checkpoint), having
    # skipped every step on the device meanwhile: either way the head is still the initial one.
    with pytest.raises(NonFiniteGradientError, match="3 steps in a row .*the last of them at step 2"):
        fit(config)
    assert torch.equal(built[0].head.weight.detach(), initial)
    assert not (tmp_path / f"bad-{fused}" / "checkpoints" / "last.ckpt").exists()


def test_fit_fused_matches_plain_path(tiny_llama, tmp_path):
    """The sync-free guard changes nothing for finite steps: fused and plain Adam train the same model."""
    a = fit(_config(tiny_llama, tmp_path, "plain", fused_optimizer=False))
    b = fit(_config(tiny_llama, tmp_path, "fused", fused_optimizer=True))
    ta, tb = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "fused" / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-5)
    assert a["skipped_steps"] == b["skipped_steps"] == 0
    rows = (tmp_path / "fused" / "metrics.csv").read_text()
    assert "train/grad_norm" in rows and "train/skipped_steps" in rows


@pytest.mark.parametrize("fused", [True, False])
def test_training_steps_do_not_read_the_device(tiny_llama, tmp_path, monkeypatch, fused):
    """The sync-free path reads device values on the host only at log intervals and validation.

    Every host read of a tensor (``item``, ``bool``, ``float``, ``int``, ``tolist``) on the main thread
    is counted per training step. On a GPU each is a synchronisation; counting them on the CPU finds
    the same calls. transformers' eager mask code reads once per forward (its packed-sequence check,
    skipped under ``torch.compile``, which fpt turns on on GPUs): not counted here.
    """
    import threading
    import traceback

    import lightning as L

    from fpt.training import fitting as training

    reads_at: list[int] = []  # reads so far, at the start of each training step
    state = {"reads": 0, "on": False}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if state["on"] and threading.current_thread() is threading.main_thread():
                if not any(f.filename.endswith("masking_utils.py") for f in traceback.extract_stack(limit=12)):
                    state["reads"] += 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
        counting(name)

    class Count(L.Callback):
        def on_train_batch_start(self, *args):
            state["on"] = True
            reads_at.append(state["reads"])

        def on_train_end(self, *args):
            reads_at.append(state["reads"])
            state["on"] = False

    make_trainer = training._trainer
    monkeypatch.setattr(training, "_trainer", lambda *a, extra_callbacks=(), **k: make_trainer(
        *a, extra_callbacks=[*extra_callbacks, Count()], **k))
    steps, eval_every = 60, 20  # Lightning writes logs every min(50, eval_every) steps, validation every eval_every
    fit(_config(tiny_llama, tmp_path, f"reads-{fused}", steps=steps, eval_every=eval_every, fused_optimizer=fused),
        enable_progress_bar=False)
    per_step = [b - a for a, b in zip(reads_at, reads_at[1:])]
    assert len(per_step) == steps
    steps_reading = [i + 1 for i, n in enumerate(per_step) if n]
    if fused:  # the bad-step counters, the logged metrics and validation: every 20 steps, nothing in between
        assert steps_reading == [20, 40, 60]
    else:  # the plain path reads the gradient norm every step (free on a CPU, the check that this counts)
        assert steps_reading == list(range(1, steps + 1))


def test_compile_in_place_keeps_parameter_names(tiny_llama):
    model = build_model(_config(tiny_llama, Path("/tmp"), "unused"))
    keys, trained = list(model.state_dict()), list(model.trainable_state_dict())
    fastpath.compile_in_place(model.backbone)
    assert list(model.state_dict()) == keys and list(model.trainable_state_dict()) == trained
    assert model.backbone._compiled_call_impl is not None


def test_fast_path_switches_resolve():
    assert fastpath.use_compile("auto", "gpu") and not fastpath.use_compile("auto", "cpu")
    assert fastpath.use_compile(True, "cpu") and not fastpath.use_compile(False, "gpu")
    assert fastpath.use_fused("auto", "gpu", "bf16-mixed") and not fastpath.use_fused("auto", "cpu", "32-true")
    assert not fastpath.use_fused(True, "gpu", "16-mixed")  # GradScaler owns found_inf under fp16
    assert fastpath.physical_cores() >= 1
    assert fastpath.cpu_threads(3) == 3 and fastpath.cpu_threads(None, 10**6) == 1
    c = build_config({"compile": "false", "fused_optimizer": True, "strategy": "ddp", "num_nodes": 2, "batch_size": 8})
    assert c.compile is False and c.fused_optimizer is True
    for bad, match in [({"compile": "maybe"}, "compile"), ({"strategy": "horovod"}, "strategy"),
                       ({"cache_features": True}, "output-only"),
                       ({"devices": 2, "num_nodes": 3, "batch_size": 8}, "divisible")]:
        with pytest.raises(ValueError, match=match):
            build_config(bad)
    assert build_config({"cache_features": True, "freeze": "output-only"}).cache_features


def test_eval_sampler_gives_every_rank_a_batch():
    for n, b, world in [(512, 256, 2), (9, 256, 4), (100, 8, 8), (5, 2, 5), (3, 256, 1)]:
        seen = []
        for rank in range(world):
            batches = list(EvalBatchSampler(n, b, rank, world))
            assert world == 1 or len(batches) >= 1
            seen += [int(i) for batch in batches for i in batch]
        assert sorted(seen) == list(range(n))
    with pytest.raises(ValueError, match="cannot be shared"):
        EvalBatchSampler(3, 8, 0, 4)


# -- cached-feature mode ----------------------------------------------------------------------------
def test_cached_features_train_the_same_head(tiny_llama, tmp_path):
    common = dict(freeze="output-only", steps=8, eval_every=4)
    t0 = time.perf_counter()
    plain = fit(_config(tiny_llama, tmp_path, "uncached", **common))
    t1 = time.perf_counter()
    cached = fit(_config(tiny_llama, tmp_path, "cached", cache_features=True, **common))
    t2 = time.perf_counter()
    a = load_file(str(tmp_path / "uncached" / "model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "model.safetensors"))
    assert set(a) == set(b) == {"head.weight", "head.bias"}
    initial = build_model(_config(tiny_llama, tmp_path, "init", **common)).head.weight.detach()
    assert (a["head.weight"] - initial).abs().max() > 1e-3  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert cached["test"]["accuracy"] == pytest.approx(plain["test"]["accuracy"], abs=1e-6)
    assert cached["val"]["best_accuracy"] == pytest.approx(plain["val"]["best_accuracy"], abs=1e-6)
    assert json.loads((tmp_path / "cached" / "results.json").read_text())["steps"] == 8
    print(f"\ntiny model, 8 steps: uncached {t1 - t0:.2f} s, cached {t2 - t1:.2f} s (noisy: shared CPU)")


def test_cached_features_on_disk_resume_and_reuse(tiny_llama, tmp_path):
    run = tmp_path / "disk"
    results = fit(_config(tiny_llama, tmp_path, "disk", freeze="output-only", cache_features=True, cache_memory_mb=0,
                          cache_train_samples=16))
    files = sorted(p.name for p in (run / "features").glob("*.safetensors"))
    assert files == ["test-test.safetensors", "train.safetensors", "val.safetensors"]
    with safe_open(str(run / "features" / "train.safetensors"), framework="pt") as f:  # a standard file
        assert f.get_tensor("features").shape == (16, 4, TINY_LLAMA["hidden_size"])
        assert f.get_tensor("y").shape == (16, 4)
    stamp = (run / "features" / "val.safetensors").stat().st_mtime_ns
    from fpt.cli.main import main

    assert main(["fit", "--resume", str(run), "--steps", "9", "--no-progress-bar"]) == 0
    assert (run / "features" / "val.safetensors").stat().st_mtime_ns == stamp  # reused, not recomputed
    assert json.loads((run / "results.json").read_text())["steps"] == 9
    assert results["steps"] == 6


def test_cached_splits_match_the_model(tiny_llama, tmp_path):
    """Cached rows hold exactly model.features of the batches the uncached stream would give."""
    from fpt.model.features import FeatureCache
    from fpt.data.splits import ArraySplit

    config = _config(tiny_llama, tmp_path, "rows", freeze="output-only", cache_features=True, cache_train_samples=24)
    module = FPTModule(config)
    model, task = module.model, module.task
    cache = FeatureCache(model, config)
    stream = cache.split("train", task.train())
    with torch.no_grad():
        for positions in (np.arange(8, 16), np.arange(20, 28)):  # the second batch wraps into pass 1
            got = stream.batch(positions)
            if positions[-1] < 24:
                want = task.train().batch(positions)
                torch.testing.assert_close(got["features"], model.features(want["x"]))
                assert torch.equal(got["y"], want["y"])
        # a finite, shuffled split: positions walk its per-epoch permutations, like the uncached stream
        rng = np.random.default_rng(0)
        arrays = {"x": rng.standard_normal((10, 8, 1)).astype(np.float32), "y": rng.integers(0, 2, (10, 4))}
        finite = ArraySplit(arrays, shuffle_seed=3)
        cached = FeatureCache(model, config).split("train", finite)
        for positions in (np.arange(0, 6), np.arange(7, 23)):
            want = finite.batch(positions)
            got = cached.batch(positions)
            torch.testing.assert_close(got["features"], model.features(want["x"]))
            assert torch.equal(got["y"], want["y"])


def test_cached_features_refuse_other_presets(tiny_llama, tmp_path):
    from fpt.model.features import check_cacheable

    with pytest.raises(ValueError, match="output-only"):
        check_cacheable(build_model(_config(tiny_llama, tmp_path, "x")))


# -- fpt bench ----------------------------------------------------------------------------------------
def test_bench_cli_prints_table_and_json(tiny_llama, tmp_path, capsys):
    from fpt.cli.main import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "16", "--input-dim", "4", "--batch-size", "4",
                 "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "naive" in text and "fast" in text and "fast / naive" in text
    data = json.loads(out.read_text())
    assert set(data["paths"]) == {"naive", "fast"}
    for r in data["paths"].values():
        assert r["step_ms"] > 0 and r["samples_per_s"] > 0 and r["tflops"] > 0
    naive = data["paths"]["naive"]
    assert naive["attention"] == "eager" and naive["optimizer"] == "adam (for-loop)"
    # 4 x frozen matmul params x tokens x batch (fpt preset: nothing in the blocks trains)
    h, f, L = TINY_LLAMA["hidden_size"], TINY_LLAMA["intermediate_size"], TINY_LLAMA["num_hidden_layers"]
    kv = h // TINY_LLAMA["num_attention_heads"] * TINY_LLAMA["num_key_value_heads"]
    p = L * (2 * h * h + 2 * h * kv + 3 * h * f)
    assert naive["backbone_matmul_params"] == p
    assert naive["matmul_tflop_per_step"] == pytest.approx(4 * p * 16 * 4 / 1e12)
    # where the time goes: phases always, profiled categories by default
    assert "where the time goes" in text
    for r in data["paths"].values():
        assert set(r["phase_ms"]) == {"forward", "backward", "optimizer"}
        assert sum(r["phase_ms"].values()) == pytest.approx(r["step_ms"], rel=0.5)
        ms = r["breakdown"]["ms_per_step"]
        assert ms["matmul"] > 0 and "optimizer+clip" in ms and "device idle" not in ms
        assert sum(ms.values()) >= 0.9 * r["step_ms"]  # every millisecond lands somewhere
        assert r["matmul_kernel_tflops"] >= r["tflops"]
    assert main(["bench", "--backbone", tiny_llama, "--task", "bit-xor", "--paths", "fast,naive,x", "--device", "cpu"]) == 2
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "8", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                 "--profile", "0", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "where the time goes" in text and "matmul-only" not in text  # no profile: phases only


@pytest.mark.parametrize("data", [["--tokens", "12", "--input-dim", "3"], ["--task", "bit-xor"]])
def test_bench_fit_path_times_the_whole_training_loop(tiny_llama, tmp_path, capsys, data):
    from fpt.cli.main import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", tiny_llama, *data, "--batch-size", "4", "--steps", "6", "--warmup", "2",
                 "--paths", "naive,fit", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["paths"]) == {"naive", "fit"}
    fit_path = result["paths"]["fit"]
    assert fit_path["step_ms"] > 0 and fit_path["samples_per_s"] == pytest.approx(4000 / fit_path["step_ms"])
    assert fit_path["matmul_tflop_per_step"] == result["paths"]["naive"]["matmul_tflop_per_step"]
    assert "fit / naive" in capsys.readouterr().out
    assert not list(tmp_path.glob("run*"))  # its run directory was temporary
    # profiled after the timed steps: Lightning runs forward and backward inside optimizer.step(closure),
    # and fpt's phase ranges keep them out of the optimizer's share
    ms = fit_path["breakdown"]["ms_per_step"]
    assert ms["attention"] > 0 and ms["matmul"] > 0 and ms["optimizer+clip"] > 0  # attention runs only in forward/backward


def test_bench_cached_path_trains_the_head_on_precomputed_features(tiny_llama, tmp_path, capsys):
    from fpt.cli.main import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "12", "--input-dim", "3", "--batch-size", "4",
                 "--steps", "3", "--warmup", "1", "--freeze", "output-only", "--paths", "fast,cached", "--device", "cpu",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    cached, fast = result["paths"]["cached"], result["paths"]["fast"]
    assert cached["feature_ms"] > 0 and cached["tflops"] == 0 and fast["tflops"] > 0
    assert cached["trainable_params"] == fast["trainable_params"]  # the head only, in both
    assert result["speedup_cached_over_fast"] == pytest.approx(fast["step_ms"] / cached["step_ms"])
    assert "cached / fast" in capsys.readouterr().out
    assert main(["bench", "--backbone", tiny_llama, "--tokens", "12", "--paths", "cached", "--device", "cpu"]) == 2
    assert "needs --freeze output-only" in capsys.readouterr().err


def test_gpu_check_config_is_smollm2s_architecture():
    """benchmarks/smollm2-135m-config (what the GPU check builds, weights random) = the GGUF's config."""
    _need_smollm2()
    from transformers import AutoConfig

    from fpt.backbones.gguf import llama_config_from_gguf
    from fpt.backbones.smollm2 import find_smollm2_gguf

    shipped = AutoConfig.from_pretrained(Path(__file__).parents[1] / "benchmarks" / "smollm2-135m-config").to_dict()
    real = llama_config_from_gguf(find_smollm2_gguf()).to_dict()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "rms_norm_eps", "hidden_act", "rope_parameters", "max_position_embeddings"):
        assert shipped[key] == real[key], key


def test_gpu_check_script_runs(tmp_path):
    """benchmarks/gpu_check.sh, the one command a GPU session runs, works end to end (here on the CPU, tiny)."""
    import os
    import subprocess

    root = Path(__file__).parents[1]
    import sys

    env = {**os.environ, "PYTHON": sys.executable, "CHECK_DEVICE": "cpu", "CHECK_LAYERS": "1", "CHECK_BATCH": "2",
           "CHECK_STEPS": "1", "CHECK_FIT_STEPS": "10", "CHECK_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["bench-cached.json", "bench-fit.json", "bench-main.json",
                                                     "bench-no-compile.json", "bench.txt", "fit-metrics.csv",
                                                     "fit-results.json"]
    assert set(json.loads((out / "bench-main.json").read_text())["paths"]) == {"naive", "fast"}
    assert json.loads((out / "fit-results.json").read_text())["steps"] == 10
    assert "where the time goes" in (out / "bench.txt").read_text()
    assert "USDT:" not in (out / "bench.txt").read_text()  # the profiler's chatter never reaches a user


def test_bench_categories_cover_cpu_ops_and_gpu_kernels():
    from types import SimpleNamespace

    from fpt.bench import OPTIMIZER_RANGE, _in_optimizer, categorize

    cpu = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul",
           "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::_softmax": "attention",
           "aten::copy_": "copies/casts", "aten::_to_copy": "copies/casts", "aten::mul": "elementwise/norms",
           "aten::rms_norm": "elementwise/norms", "fpt::forward": "host",
           "## Call CompiledFxGraph fjyr6u27ngxzo5mavqndotb6u7ghbewhjefd372glaf6ndpwxd2f ##": "elementwise/norms",
           "autograd::engine::evaluate_function: MmBackward0": "host"}
    for name, category in cpu.items():
        assert categorize(name, False, cpu=True) == category, name
    gpu = {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
           "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT": "matmul",
           "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>": "matmul",
           "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>": "attention",
           "fmha_cutlassB_bf16_aligned_64x64_k64_sm80": "attention",
           "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>": "copies/casts",
           "Memcpy HtoD (Pinned -> Device)": "copies/casts",
           "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "elementwise/norms",  # a compiled RMSNorm
           "triton_poi_fused_mul_silu_1": "elementwise/norms"}
    for name, category in gpu.items():
        assert categorize(name, False, cpu=False) == category, name
    assert categorize("aten::mm", True, cpu=True) == "optimizer+clip"
    # the optimizer is told by the profiler range the work ran in
    step = SimpleNamespace(name=OPTIMIZER_RANGE, cpu_parent=None)
    adam = SimpleNamespace(name="Optimizer.step#Adam.step", cpu_parent=step)
    mul = SimpleNamespace(name="aten::mul_", cpu_parent=adam)
    fwd = SimpleNamespace(name="aten::mul", cpu_parent=SimpleNamespace(name="fpt::forward", cpu_parent=None))
    assert _in_optimizer(mul) and not _in_optimizer(fwd) and not _in_optimizer(None)


@pytest.mark.benchmark
@pytest.mark.parametrize("layers", [1, 4, 12])
def test_bench_smollm2(layers, tmp_path, capsys):
    _need_smollm2()
    from fpt.cli.main import main

    assert main(["bench", "--backbone", "smollm2-135m", "--layers", str(layers), "--tokens", "64", "--input-dim", "16",
                 "--batch-size", "16", "--steps", "5", "--warmup", "2", "--json", str(tmp_path / "b.json")]) == 0
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)


@pytest.mark.benchmark
def test_cached_features_speedup_smollm2(tmp_path, capsys):
    """Cached vs uncached output-only training on 4 SmolLM2 layers (prints the times; never fails on time)."""
    _need_smollm2()
    base = dict(task="bit-xor", backbone="smollm2-135m", layers=4, freeze="output-only", steps=100, batch_size=32,
                eval_every=50, device="cpu")
    times = {}
    for name, extra in [("uncached", {}), ("cached", {"cache_features": True}),
                        ("cached-512", {"cache_features": True, "cache_train_samples": 512})]:
        t = time.perf_counter()
        r = fit(build_config({**base, **extra, "run_dir": str(tmp_path / name)}))
        times[name] = (time.perf_counter() - t, r["test"]["accuracy"])
    with capsys.disabled():
        for name, (sec, acc) in times.items():
            print(f"{name:>10}: {sec:7.1f} s  test accuracy {acc:.4f}  (x{times['uncached'][0] / sec:.2f})")


def _cannot_compile() -> str | None:
    """Why torch.compile cannot run here (Inductor needs a C++ compiler on the CPU), or None."""
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ / clang++), and there is none here"
    return None


@pytest.mark.skipif(_cannot_compile() is not None, reason=str(_cannot_compile()))
def test_compile_on_cpu_trains_the_same_model(tiny_llama, tmp_path):
    """torch.compile (in place) on CPU: same keys, same trained parameters as eager (Inductor compiles: ~a minute)."""
    # fp32: compiled kernels fuse and round differently from eager ones, in bf16 beyond this tolerance
    fit(_config(tiny_llama, tmp_path, "eager", compile=False, fused_optimizer=True, precision="32-true"))
    fit(_config(tiny_llama, tmp_path, "compiled", compile=True, fused_optimizer=True, precision="32-true"))
    a = load_file(str(tmp_path / "eager" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
