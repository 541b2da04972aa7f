"""Tasks: one module per task family, all registered by name in ``fpt.tasks.base.TASKS``.

Use the single factory: ``make_task("bit-xor", {"n_bits": 5}, seed=0)`` (``registry.py``). This file only exports.
"""

from fpt.tasks.base import TASKS, Task, make_options, register_task  # noqa: F401
from fpt.tasks.registry import list_tasks, make_task, task_of  # noqa: F401
