"""results.json: what a finished run writes about itself (metrics, timings, protocol, task)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fpt.config.protocols import settings_for
from fpt.config.run import FIELDS, RunConfig
from fpt.tasks.base import make_options
from fpt.training.trainer import resolve_device


def _results(config, module, trainer, test_metrics, train_seconds, seconds) -> dict[str, Any]:
    counts = module.model.parameter_counts()
    invocations = module.invocations(seconds, train_seconds)
    accelerator, precision = resolve_device(config)
    device = torch.cuda.get_device_name(0) if accelerator == "gpu" else f"cpu ({torch.get_num_threads()} threads)"
    results = {
        "task": config.task, "task_options": module.task.options.__dict__, "backbone": config.backbone,
        "init": config.init, "freeze": config.freeze, "layers": module.model.backbone.num_layers,
        "steps": int(trainer.global_step), "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        # wall seconds of every invocation (a resumed run's earlier ones counted up to their last checkpoint)
        "seconds": round(sum(i["seconds"] or 0 for i in invocations), 2),
        "train_seconds": round(sum(i.get("train_seconds", i["seconds"]) or 0 for i in invocations), 2),
        "invocations": invocations,
        "device": device, "precision": precision, "label": config.label,
        # what the run executed with (precision, frozen-weight storage, attention, compile), why, and the CPU's flags
        "fast_path": module.plan.record(),
        "world_size": int(trainer.world_size),  # processes that shared each global batch (DDP)
        "backbone_identity": module.model.backbone.identity(),  # incl. source_* for run:PATH backbones
        # how the backbone was built (class, attention implementation, positions, read-out) and what froze:
        # where the freezing rules came from (map / inferred / freeze_rules), the rules, parameters per group
        "backbone_build": {**module.model.backbone.build, "freeze_rules_from": module.model.freeze_source,
                           "freeze_rules": module.model.inferred_rules or config.freeze_rules,
                           "parameter_groups": module.model.group_counts},
        "skipped_steps": module.bad_steps_total,
        # all threads of the process, every invocation
        "cpu_seconds": round(sum(i["cpu_seconds"] or 0 for i in invocations), 2),
        "objective": module.objective.describe(),  # output type, headline metric and its direction
        # metrics.csv labels a validation with the optimizer steps completed before it, as the console does
        "metrics_step": "completed",
        "protocol": _protocol_record(config, module.task),  # fpt.config.protocols: what --protocol set, and what was used
        # every choice (best point, best.safetensors, early stop, a sweep's lr) is made on val; the test splits are
        # read only by the final test (tests/test_no_test_selection.py). The 2021 loop monitored its test instead.
        "test_monitored": False,
        "val": {
            "best_accuracy": (module.best_val[0] if module.best_val else None)
            if module.objective.kind == "classification" else None,
            "metric": module.objective.metric,  # the value model selection uses: val.best, in this direction
            "higher_is_better": module.objective.higher_is_better,
            "best": module.best_val[0] if module.best_val else None,
            "best_step": module.best_val[1] if module.best_val else None,
            "best_loss": module.best_val[2] if module.best_val else None,  # ties of val.best: the lower loss wins
            "target_accuracy": config.target_accuracy if module.objective.kind == "classification" else None,
            "first_step_at_target": module.first_step_at_target,
        },
    }
    module.task.adjust_test_metrics(test_metrics)
    results.update(test_metrics)
    # which data exactly (time series: problem, files, split sizes; reports match on it) and what the data
    # options changed (ListOps' brackets and cuts, homology's dropped sequences)
    data = {**module.task.describe_data(), **(module.task.preprocessing or {})}
    if data:
        results["data"] = data
    if config.backbone == "lstm":
        results["lstm_kind"] = config.lstm_kind
    if config.position_rows is not None:
        results["position_rows"] = config.position_rows  # a grown position table: a difference the report states
    return results


def _protocol_record(config: RunConfig, task) -> dict[str, Any]:
    defaults = dataclasses.asdict(make_options(type(task), {}))  # the task's own defaults: what fpt does
    return protocol_record(config, dict(task.options.__dict__), defaults)


def _fpt_default(key: str, task_defaults: dict[str, Any]) -> Any:
    """fpt's own default of a setting: a RunConfig field's, or the task's option (``task_defaults``)."""
    if key.startswith("task_options."):
        return task_defaults.get(key.split(".", 1)[1])
    f = FIELDS[key]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def protocol_record(config, task_options: dict[str, Any] | None = None,
           task_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``results.json`` says about the protocol: its name and, per setting it defines for this
    run, the protocol's value, fpt's default, the value used, and where the value comes from.

    ``task_options``: the options the task ran with; ``task_defaults``: the task's own defaults."""
    values = config.to_dict()
    task_defaults = task_defaults or {}
    used_options = dict(task_options if task_options is not None else values.get("task_options") or {})
    changed = {}
    for key, s in settings_for(values).items():
        default = _fpt_default(key, task_defaults)
        used = used_options.get(key.split(".", 1)[1]) if key.startswith("task_options.") else values.get(key)
        if s.value == default:
            continue
        entry = {"protocol": s.value, "fpt": default, "used": used, "source": s.why}
        if used != s.value:
            entry["overridden"] = True
        changed[key] = entry
    return {"name": config.protocol, "settings": changed}

