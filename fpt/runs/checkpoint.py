"""A run's model on disk: the checkpoint format, the checks on load, and reading a finished run back.

Nothing here imports Lightning: ``fpt predict``, ``fpt report`` and your own code load trained
models with :func:`load_run`.

Two files hold trained weights, both with the trained parameters only (the frozen backbone is
rebuilt from its identity, never stored):

* ``model.safetensors``: the trained tensors, and as metadata the format (``fpt-1``), the backbone's
  identity (name, architecture, init, layers, width, weight fingerprint) and the task's shape
  (``TaskSpec``): :func:`save_trained` / :func:`load_trained`;
* ``checkpoints/last.ckpt``: Lightning's resume state (optimizer, loops) with an ``fpt`` section
  holding the same identity and task shape: :func:`read_checkpoint` / :func:`save_checkpoint_file`.

Every load goes through :func:`check_compatible`: the same backbone and the same task shape, or a
``ValueError`` that says what differs; never a partial load.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from fpt.model import fastpath
from fpt.config.run import RunConfig
from fpt.config.files import finish_advice, load_config
from fpt.data.splits import TaskSpec
from fpt.base.io import atomic_write_bytes, atomic_write_json
from fpt.model.network import FPT, ModelConfig
from fpt.backbones.backbone import BuildOptions
from fpt.tasks.registry import task_of
from fpt.backbones.registry import load_backbone

CHECKPOINT_FORMAT = "fpt-1"
IDENTITY_KEYS = ("backbone", "arch", "init", "layers", "hidden_size", "fingerprint")
PREVIOUS_NAME = "previous.ckpt"


class NonFiniteWeightsError(RuntimeError):
    """Trained parameters hold inf or NaN: such weights are never saved (the file there stays the last good one)."""


def check_finite_weights(tensors: dict[str, torch.Tensor], where: str, step: int | None = None) -> None:
    """Raise :class:`NonFiniteWeightsError` unless every floating-point tensor is finite (inf/NaN weights
    predict garbage, and a checkpoint that holds them must never be called good)."""
    bad = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(f"{name} ({int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} inf of {t.numel()})")
    if bad:
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteWeightsError(
            f"the trained parameters are not finite{at}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; "
            f"{where} was not written (the file there, if any, is the last good one). The training diverged: lower "
            "the learning rate (--lr), keep gradient clipping on (--grad-clip), use 32-bit precision.")


# -- the checks ---------------------------------------------------------------------------------
def check_identity(saved: dict[str, str], current: dict[str, str]) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in IDENTITY_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError("checkpoint belongs to another backbone: " + "; ".join(diffs))


def spec_dict(spec: TaskSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def check_task_spec(saved: dict[str, Any] | None, current: TaskSpec, where: str) -> None:
    """A checkpoint's task shape must match the task it is loaded for (skipped for checkpoints without one)."""
    if not saved:
        return
    now = spec_dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in now if k in saved and saved[k] != now[k]]
    if diffs:
        raise ValueError(f"{where} was trained for a task of another shape: " + "; ".join(diffs)
                         + ". Use the task options (-o KEY=VALUE) and dataset it was trained with.")


def check_compatible(meta: dict[str, Any], model: FPT, where: str) -> None:
    """``meta`` (a checkpoint's ``fpt`` section or ``model.safetensors``' metadata) was written for
    ``model``: fpt's format, the same backbone, the same task shape."""
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where} is not an fpt checkpoint (format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT})")
    check_identity(meta.get("identity", meta), model.backbone.identity())
    saved_spec = meta.get("task_spec")
    check_task_spec(json.loads(saved_spec) if isinstance(saved_spec, str) else saved_spec, model.spec, where)


def check_parameter_names(got: set[str], expected: set[str], where: str) -> None:
    if got != expected:
        raise ValueError(f"{where}: parameters do not match this model: missing {sorted(expected - got)[:5]}, "
                         f"unexpected {sorted(got - expected)[:5]}")


# -- building the model of a config ----------------------------------------------------------------
def build_model(config: RunConfig, task=None, spec: TaskSpec | None = None,
                plan: fastpath.SpeedPlan | None = None) -> FPT:
    """The FPT model of a config, with seeded new layers (same seed, same initial weights). Its shape is
    ``spec`` when given (a finished run's, stored in model.safetensors), else ``task``'s (built from the
    config when not given: that reads the task's data). Built as ``plan`` says (default:
    :func:`fpt.model.fastpath.plan_for` the config): its attention implementation, and the frozen matmul
    weights stored in bf16 on the bf16 path."""
    spec = spec or (task or task_of(config)).spec
    plan = plan or fastpath.plan_for(config, spec)
    backbone = load_backbone(config.backbone, BuildOptions.from_config(config, attn_implementation=plan.attention))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        model = FPT(backbone, spec, ModelConfig.from_config(config))
    if plan.frozen_dtype == "bfloat16":
        model.store_frozen_weights(torch.bfloat16)  # after the fingerprint (taken as built) and the seeded init
    return model


# -- model.safetensors ------------------------------------------------------------------------------
def save_trained(model: FPT, path: Path, extra: dict[str, str] | None = None,
                 trained: dict[str, torch.Tensor] | None = None, step: int | None = None) -> None:
    """``model.safetensors``: trained parameters + the backbone identity (metadata strings).

    ``trained``: the tensors to write instead of ``model``'s own (FSDP: gathered from the shards). Non-finite
    tensors are never written (:class:`NonFiniteWeightsError`, naming ``step``)."""
    trained = model.trainable_state_dict() if trained is None else trained
    tensors = {n: t.detach().cpu().contiguous() for n, t in trained.items()}
    check_finite_weights(tensors, str(path), step)
    metadata = {"format": CHECKPOINT_FORMAT, **model.backbone.identity(),
                "task_spec": json.dumps(spec_dict(model.spec)), **(extra or {})}
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata=metadata))  # tmp + fsync + rename


def load_trained(model: FPT, path: Path) -> None:
    """Load ``model.safetensors`` onto a freshly built model, checking identity and completeness."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated / corrupt files
        run_dir = Path(path).parent
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupted. Rewrite it from the "
            f"run's checkpoint with fpt fit --resume {run_dir} (it re-saves model.safetensors from "
            f"{run_dir / 'checkpoints' / 'last.ckpt'})") from None
    check_compatible(metadata, model, str(path))
    expected = model.trainable_state_dict()
    check_parameter_names(set(tensors), set(expected), str(path))
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the model needs {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)


def save_prediction_layout(task, run_dir: Path) -> None:
    """How raw arrays become this task's inputs (patching, scaling, normalisation), for ``fpt predict``."""
    layout = task.prediction_layout()
    if layout is not None:
        atomic_write_json(Path(run_dir) / "prediction_layout.json", layout.to_dict())


def keep_choices(config: RunConfig, ran_with: dict[str, Any] | None) -> None:
    """A run's ``auto`` precision and attention as it ran (``ran_with``: the ``fast_path`` record of its
    results.json or checkpoint), so that resuming, testing or predicting it elsewhere computes as it did
    (another CPU could resolve ``auto`` otherwise); values set explicitly stay."""
    if not ran_with:
        return
    if config.precision == "auto":
        config.precision = ran_with["precision"]
    if config.attn_implementation == "auto":
        config.attn_implementation = ran_with["attention"]


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[RunConfig, FPT]:
    """A trained run's config and model (backbone rebuilt, trained parameters loaded and checked)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    keep_choices(config, (results_or_none(run_dir) or {}).get("fast_path"))  # it predicts exactly as it tested
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} does not exist: the run did not finish; {finish_advice(run_dir)}")
    model = build_model(config, spec=stored_task_spec(weights))  # no task data is read for a stored shape
    load_trained(model, weights)
    return config, model.to(device).eval()


def stored_task_spec(weights: Path) -> TaskSpec | None:
    """The task shape that ``model.safetensors`` records (its ``task_spec`` metadata), or None for a file
    without one (or one that cannot be read: ``load_trained`` then says what is wrong)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("task_spec") or "null")
    except Exception:  # safetensors' own error types; load_trained reports them
        return None
    if not isinstance(stored, dict):
        return None
    names = {f.name for f in dataclasses.fields(TaskSpec)}
    return TaskSpec(**{k: v for k, v in stored.items() if k in names})


# -- results.json ---------------------------------------------------------------------------------
RESULTS_KEYS = ("task", "backbone")  # what every results.json fpt writes holds (and reports need)


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's ``results.json``; a missing or unreadable file is an error that names it."""
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: the run has not finished; {finish_advice(run_dir)}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is damaged") from None
    missing = [k for k in RESULTS_KEYS if k not in results] if isinstance(results, dict) else list(RESULTS_KEYS)
    if missing:
        raise ValueError(f"{path} is not an fpt results file (no {', '.join(missing)}): fpt fit did not write it. fpt "
                         "reads run directories written by fpt fit; move that file away or give the runs themselves")
    return results


def results_or_none(run_dir: str | Path) -> dict[str, Any] | None:
    """``read_results``, or None when the run has no readable ``results.json`` (not finished)."""
    try:
        return read_results(run_dir)
    except (OSError, ValueError):
        return None


# -- checkpoints/last.ckpt ----------------------------------------------------------------------------
def save_checkpoint_file(checkpoint: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``: never a half-written checkpoint.

    ``keep_previous``: the checkpoint being replaced stays as ``previous.ckpt`` beside it (hard link,
    so ``path`` exists at every moment), a fallback should ``path`` ever be damaged.
    """
    path = Path(path)
    check_finite_weights(checkpoint.get("state_dict") or {}, str(path), checkpoint.get("global_step"))
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    if keep_previous and path.is_file():
        previous = path.with_name(PREVIOUS_NAME)
        staging = path.with_name(f".{PREVIOUS_NAME}.{os.getpid()}.tmp")
        try:
            staging.unlink(missing_ok=True)
            os.link(path, staging)
            os.replace(staging, previous)
        except OSError:  # no hard links on this file system: keep going without the fallback copy
            staging.unlink(missing_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def earlier_checkpoints(path: Path) -> list[Path]:
    """Other checkpoints of the same run (``checkpoints/step*.ckpt``...), newest first."""
    folder = Path(path).parent
    if not folder.is_dir():
        return []
    others = [p for p in folder.glob("*.ckpt") if p.name != Path(path).name]
    return sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


def _what_to_do(path: Path) -> str:
    others = earlier_checkpoints(path)
    run_dir = path.parent.parent
    if others:
        listing = ", ".join(str(p) for p in others[:5])
        return (f" Earlier checkpoints of this run: {listing}. To resume from one, copy it over the broken "
                f"file (cp {others[0]} {path}) and run fpt fit --resume {run_dir}.")
    if not path.exists() and not (run_dir / "model.safetensors").exists() and not (run_dir / "results.json").exists():
        return (f" The run in {run_dir} ended before its first checkpoint, so there is nothing to resume: start it "
                f"again with fpt fit --config {run_dir / 'config.yaml'} --run-dir {run_dir} (the original command "
                "without --resume; the directory is reused).")
    return (f" There is no earlier checkpoint in {path.parent}; start the run again with "
            f"fpt fit --config {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite (the old run is moved aside).")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A resume checkpoint, loaded with ``weights_only=True`` (no pickled code), checked for completeness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist." + _what_to_do(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip / unpickling errors of every kind for truncated or foreign files
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if "Weights only load failed" in str(err):
            reason = "it holds pickled Python objects that fpt does not load (weights_only=True)"
        raise ValueError(f"checkpoint {path} cannot be read: it is truncated, corrupted or not a checkpoint "
                         f"({reason})." + _what_to_do(path)) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (got {type(checkpoint).__name__})."
                         + _what_to_do(path))
    meta = checkpoint.get("fpt")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not an fpt checkpoint (no 'fpt' section of format {CHECKPOINT_FORMAT}); "
                         "fpt resumes only from checkpoints it wrote." + _what_to_do(path))
    missing = [k for k in ("state_dict", "optimizer_states", "loops", "global_step") if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete (no {', '.join(missing)}): it cannot resume training."
                         + _what_to_do(path))
    return checkpoint


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint holds, or None if it cannot be read (for messages)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:
        return None
