"""The task factory: every built-in task module imported (which registers it), then looked up by name."""

from __future__ import annotations

from typing import Any

from fpt.base.text import suggest
# Importing a module registers its tasks (fpt.tasks.base.register_task).
from fpt.tasks import arrays, bits, forecast, homology, images, listops, timeseries  # noqa: F401
from fpt.tasks import base
from fpt.tasks.base import Task, make_options


def registered_tasks() -> dict[str, type[Task]]:
    """Every registered task by name: the built-ins (imported above) and any registered since."""
    return base.TASKS  # read at each call: a test may swap the registry for a copy


def make_task(name: str, options: dict[str, Any] | None = None, seed: int = 0, data_dir: str | None = None) -> Task:
    """The single factory: ``make_task("bit-xor", {"n_bits": 5}, seed=0)``."""
    tasks = base.TASKS
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}.{suggest(name, tasks)} Known tasks: {', '.join(sorted(tasks))}.")
    cls = tasks[name]
    return cls(make_options(cls, options), seed=seed, data_dir=data_dir)


def list_tasks() -> dict[str, str]:
    return {name: cls.description for name, cls in sorted(base.TASKS.items())}


def task_of(config) -> Task:
    """The task of a RunConfig: its name, options, seed and data directory."""
    return make_task(config.task, config.task_options, seed=config.seed, data_dir=config.data_dir)
