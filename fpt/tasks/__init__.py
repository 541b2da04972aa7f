"""Tasks: one module per task family, all registered by name in ``fpt.tasks.base.TASKS``.

Use the single factory: ``make_task("bit-xor", {"n_bits": 5}, seed=0)``.
"""

from fpt.tasks.base import (  # noqa: F401
    TASKS, ArraySplit, GeneratedSplit, Split, Task, TaskSpec, collate, list_tasks, make_task, register_task,
)

# Importing a module registers its tasks.
from fpt.tasks import bits  # noqa: F401,E402
from fpt.tasks import images, listops, homology, arrays, timeseries  # noqa: F401,E402
