"""The paths ``fpt bench`` times: ``naive`` (the 2021 loop), ``fast`` (fpt's defaults), ``cached``
(the head on precomputed features) as :class:`StepPath`, and ``fit`` (the whole ``fpt fit``) as :class:`FitPath`."""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from fpt.model import fastpath
from fpt.backbones import load_backbone
from fpt.bench.measure import Memory, count_host_syncs, flops_per_step, matmul_params, throughput
from fpt.bench.profile import breakdown_from_events
from fpt.config.files import build_config
from fpt.data.splits import TaskSpec
from fpt.model.features import check_cacheable
from fpt.model.network import FPT, ModelConfig
from fpt.model.objectives import make_objective
from fpt.model.step import TrainingStep, autocast_for
from fpt.tasks import make_task


def spec_and_batch(args, device):
    """The task shape, the one batch every step path trains on (synthetic with ``--tokens``) and the task's
    objective (its loss: :mod:`fpt.model.objectives`)."""
    if args.tokens is not None and args.task is None:
        spec = TaskSpec(input_type="continuous", input_dim=args.input_dim, max_tokens=args.tokens, num_classes=2,
                        num_labels=1, readout="last")
        g = torch.Generator().manual_seed(0)
        batch = {"x": torch.randn(args.batch_size, args.tokens, args.input_dim, generator=g),
                 "y": torch.randint(0, 2, (args.batch_size, 1), generator=g)}
        shape = f"{args.tokens} tokens x {args.input_dim}"
        objective = make_objective(spec)
    else:
        task = make_task(args.task or "bit-xor", dict(args.task_option), seed=0)
        spec = task.spec
        objective = make_objective(spec, task)
        batch = task.train().batch(np.arange(args.batch_size, dtype=np.int64))
        t = batch["x"].shape[1]
        shape = f"{args.task or 'bit-xor'}: {t} tokens" + (f" x {spec.input_dim}" if spec.input_type == "continuous" else "")
    batch = {k: v.to(device) for k, v in batch.items()}
    return spec, batch, shape, objective


# The paths `auto` chooses between, as fixed settings (``fpt bench --paths choices``): (precision, attention).
# Under bf16 the frozen weights are stored in bf16 (fpt.model.fastpath.frozen_storage), as `fpt fit` does.
CHOICES = {"fp32": ("32-true", "sdpa"), "bf16-sdpa": ("bf16-mixed", "sdpa"), "bf16-eager": ("bf16-mixed", "eager")}


PLANNED_STEPS = 1000  # the fast path is what `fpt fit` picks for a run this long (compile pays only in long runs)


def auto_plan(args, accelerator: str, tokens: int, padded: bool = False) -> fastpath.SpeedPlan:
    """What ``fpt fit`` would run with on this machine for these bench options (the ``fast`` path), for a run of
    :data:`PLANNED_STEPS` steps."""
    return fastpath.plan_speed(precision=args.precision, attention=args.attn_implementation,
                               compile=fastpath.parse_tristate(args.compile, "compile"), accelerator=accelerator,
                               tokens=tokens, steps=PLANNED_STEPS, padded=padded)


def path_settings(path: str, args, accelerator: str, tokens: int, padded: bool = False) -> dict[str, Any]:
    """naive: the 2021 loop; fast (and cached, which trains the head on precomputed features): fpt's defaults
    (``auto`` resolved for this machine); fp32, bf16-sdpa, bf16-eager: the choices ``auto`` has (:data:`CHOICES`)."""
    if path == "naive":
        return {"precision": "32-true", "frozen": "float32", "attn": "eager", "compile": False, "fused": False,
                "naive_optimizer": True, "sync_each_step": True}
    plan = auto_plan(args, accelerator, tokens, padded)
    if path in CHOICES:
        precision, attn = CHOICES[path]
        compiled = plan.compile
    else:
        precision, attn, compiled = plan.precision, plan.attention, plan.compile
    return {"precision": precision, "frozen": fastpath.frozen_storage(precision), "attn": attn, "compile": compiled,
            "fused": fastpath.use_fused(fastpath.parse_tristate(args.fused_optimizer, "fused_optimizer"), accelerator,
                                        precision),
            "naive_optimizer": False, "sync_each_step": False}


def optimizer_label(settings: dict[str, Any]) -> str:
    if settings["naive_optimizer"]:
        return "adam (for-loop)"
    return "adam fused" if settings["fused"] else "adam foreach"


class StepPath:
    """One path's model, optimizer and training step (:class:`fpt.model.step.TrainingStep`), built and warmed up
    (memory measured meanwhile)."""

    def __init__(self, name: str, args, device, spec, batch, objective):
        self.name, self.device = name, device
        accelerator = "gpu" if device.type == "cuda" else "cpu"
        s = self.settings = path_settings(name, args, accelerator, int(batch["x"].shape[1]), spec.padded)
        memory = Memory(device)
        memory.start()
        t0 = time.perf_counter()
        backbone = load_backbone(args.backbone, init=args.init, layers=args.layers, seed=0, attn_implementation=s["attn"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = FPT(backbone, spec, ModelConfig(freeze=args.freeze)).to(device)
        if s["frozen"] == "bfloat16":
            model.store_frozen_weights(torch.bfloat16)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = fastpath.make_optimizer(params, args.lr, fused=s["fused"], naive=s["naive_optimizer"])
        if s["compile"]:
            fastpath.compile_in_place(model.backbone)
        autocast = autocast_for(s["precision"], device.type)
        self.tokens = int(batch["x"].shape[1])
        self.feature_ms = None
        if name == "cached":  # output-only: the frozen network's read-out features, computed once
            batch = self._features_batch(model, batch, autocast)
        self.build_seconds = time.perf_counter() - t0
        # The 2021 loop read the loss (for logging) and the gradient norm (its finiteness) on the host every step.
        step = TrainingStep(model, optimizer, fastpath.StepGuard(1.0, 10**9), autocast,
                            read_loss_each_step=s["sync_each_step"], objective=objective)
        self.step = lambda mark=None: step(batch) if mark is None else step(batch, mark)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            self.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.warmup_seconds = time.perf_counter() - t0
        self.peak_memory_mb = memory.peak_mb()
        self.host_syncs = count_host_syncs(self.step, device)
        self.model = model
        # the cached path runs no backbone matmul per step (its one-off feature pass is feature_ms)
        self.flops = 0.0 if name == "cached" else flops_per_step(model, args.batch_size, self.tokens)
        self.trainable = sum(p.numel() for p in params)
        self.times: list[float] = []
        self.phase_times: dict[str, list[float]] = {}
        self.breakdown: dict[str, Any] | None = None

    def _features_batch(self, model, batch, autocast) -> dict[str, torch.Tensor]:
        """Output-only: the frozen network's read-out features of the batch, computed once (timed)."""
        try:
            check_cacheable(model)
        except ValueError as err:
            raise ValueError(f"--paths cached needs --freeze output-only: {err}") from None
        x, mask = batch["x"], batch.get("mask")
        with torch.no_grad(), autocast():
            model.features(x, mask)  # warm-up (and compilation)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t_features = time.perf_counter()
            features = model.features(x, mask).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.feature_ms = (time.perf_counter() - t_features) * 1000
        return {"features": features, "y": batch["y"]}

    def timed_step(self):
        """One step, timed whole and by phase (CUDA events on the GPU: no host sync until it ends)."""
        if self.device.type == "cuda":
            def event():
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                return e
        else:
            event = time.perf_counter
        marks = [("start", event())]
        self.step(lambda phase: marks.append((phase, event())))
        if self.device.type == "cuda":
            marks[-1][1].synchronize()  # after the interval: the events time the device's work
            elapsed = lambda a, b: a.elapsed_time(b) / 1000  # noqa: E731
        else:
            elapsed = lambda a, b: b - a  # noqa: E731
        self.times.append(elapsed(marks[0][1], marks[-1][1]))
        for (_, a), (phase, b) in zip(marks, marks[1:]):
            self.phase_times.setdefault(phase, []).append(elapsed(a, b))

    def result(self, batch_size: int) -> dict[str, Any]:
        s, times = self.settings, self.times
        step_s = statistics.median(times)
        return {
            "precision": s["precision"], "frozen_weights": s["frozen"], "attention": s["attn"], "compile": s["compile"],
            "optimizer": optimizer_label(s), "host_sync_each_step": s["sync_each_step"],
            "host_syncs_per_step": self.host_syncs,  # CUDA only: torch.cuda.set_sync_debug_mode counts
            **throughput(step_s, batch_size, self.tokens, self.flops, self.breakdown),
            "step_ms_min": min(times) * 1000, "step_ms_max": max(times) * 1000,
            "feature_ms": self.feature_ms,  # cached: the one-off forward that computed this batch's features
            "peak_memory_mb": self.peak_memory_mb, "build_seconds": self.build_seconds,
            "warmup_seconds": self.warmup_seconds, "timed_steps": len(times), "trainable_params": self.trainable,
            "backbone_matmul_params": matmul_params(self.model)[0],
            # median time of each phase (the medians need not add up to the median step exactly)
            "phase_ms": {k: statistics.median(v) * 1000 for k, v in self.phase_times.items()},
            "breakdown": self.breakdown,
        }


class FitPath:
    """``fpt fit`` itself on the same shape: Lightning, data loading, logging, the step guard, fast-path defaults.

    Timed by wall clock from the start of step ``--warmup`` to the end of step ``--warmup + --steps``
    (the device synchronised at both ends), so the step time is a mean, not a median; it runs after
    the other paths, not interleaved with them. With ``--tokens`` the data is a random ``.npz`` of
    that shape read by the ``array`` task; with ``--task``, that task's own data.
    """

    def __init__(self, args, device):
        from fpt.training.callbacks import StepTimer
        from fpt.training.fitting import fit
        from fpt.training.trainer import resolve_device

        self.name, self.device = "fit", device
        total, b = args.warmup + args.steps, args.batch_size
        cuda = device.type == "cuda"

        timed_end = total
        total += args.profile  # then --profile steps under torch.profiler
        with tempfile.TemporaryDirectory(prefix="fpt-bench-") as tmp:
            if args.tokens is not None and args.task is None:
                rng = np.random.default_rng(0)
                n = total * b + 2 * b
                x = rng.standard_normal((n, args.tokens, args.input_dim), dtype=np.float32)
                y = rng.integers(0, 2, n)
                m = total * b
                np.savez(f"{tmp}/data.npz", x_train=x[:m], y_train=y[:m], x_val=x[m:m + b], y_val=y[m:m + b],
                         x_test=x[m + b:], y_test=y[m + b:])
                task, options = "array", {"path": f"{tmp}/data.npz", "kind": "tokens", "normalize": False}
            else:
                task, options = args.task or "bit-xor", dict(args.task_option)
            config = build_config(dict(
                task=task, task_options=options, backbone=args.backbone, init=args.init, layers=args.layers,
                freeze=args.freeze, steps=total, batch_size=b, eval_every=total, eval_batch_size=b, lr=args.lr,
                device="cuda" if cuda else "cpu", run_dir=f"{tmp}/run", precision=args.precision, compile=args.compile,
                fused_optimizer=args.fused_optimizer, attn_implementation=args.attn_implementation,
                num_threads=args.num_threads, chance_warning_evals=0))
            accelerator, precision = resolve_device(config)
            fused = fastpath.use_fused(config.fused_optimizer, accelerator, precision)
            plan = fastpath.plan_for(config, make_task(task, options, seed=0).spec)
            self.settings = {"precision": plan.precision, "frozen": plan.frozen_dtype, "attn": plan.attention,
                             "compile": plan.compile, "fused": fused, "naive_optimizer": False,
                             "sync_each_step": not fused}
            memory = Memory(device)
            memory.start()
            timer = StepTimer(args.warmup, timed_end, args.profile, device)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # fit's own report lines would break the table
                results = fit(config, enable_progress_bar=False, callbacks=[timer])
            self.build_seconds = time.perf_counter() - t0  # the whole fit call: build, compile, steps, test
            self.peak_memory_mb = memory.peak_mb()
        self.tokens = args.tokens if task == "array" else None
        self.times = [(timer.t1 - timer.t0) / args.steps]
        self.breakdown = None
        if timer.profiled_ms is not None:
            self.breakdown = breakdown_from_events(timer.profiler.events(), cuda, args.profile, timer.profiled_ms,
                                                   self.times[0] * 1000)
        self.trainable = results["trainable_params"]
        self.results = results

    def result_for(self, reference: StepPath, batch_size: int) -> dict[str, Any]:
        """The same columns as the step paths' (FLOPs and tokens from ``reference``, which has the same shape)."""
        s = self.settings
        return {
            "precision": s["precision"], "frozen_weights": s["frozen"], "attention": s["attn"], "compile": s["compile"],
            "optimizer": optimizer_label(s), "host_sync_each_step": s["sync_each_step"], "host_syncs_per_step": None,
            **throughput(self.times[0], batch_size, reference.tokens, reference.flops, self.breakdown),
            "step_ms_min": None, "step_ms_max": None, "step_time": "mean over the timed steps (wall clock)",
            "peak_memory_mb": self.peak_memory_mb, "build_seconds": self.build_seconds, "warmup_seconds": None,
            "timed_steps": None, "trainable_params": self.trainable,
            "backbone_matmul_params": matmul_params(reference.model)[0], "phase_ms": {}, "breakdown": self.breakdown,
        }
