"""What a task is: a name in the registry, typed options, a shape (``TaskSpec``) and data splits.

The batch format, ``TaskSpec`` and the ``Split`` classes live in :mod:`fpt.data.splits` (the data
layer builds splits without knowing about tasks). The factory is in :mod:`fpt.tasks.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fpt.base.options import coerce_field, declared
from fpt.base.text import suggest
from fpt.data.splits import Split, TaskSpec


class Task:
    """A registered task. Subclasses set ``name``, ``description``, an ``Options`` dataclass, and
    implement ``spec``, ``train``, ``val`` and ``test`` (docs/architecture.md: adding a task)."""

    name: str = ""
    description: str = ""

    @dataclass
    class Options:
        pass

    def __init__(self, options: "Task.Options", seed: int = 0, data_dir: str | None = None):
        self.options = options
        self.seed = int(seed)
        self.data_dir = data_dir

    # -- shape ------------------------------------------------------------------------------
    @property
    def spec(self) -> TaskSpec:
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------
    def train(self) -> Split:
        """The training stream (indexable by stream position, see :mod:`fpt.data.splits`)."""
        raise NotImplementedError

    def val(self) -> Split:
        """Held-out split used for model selection and early stopping."""
        raise NotImplementedError

    def test(self) -> dict[str, Split]:
        """Test splits by name; the first one is the headline ``test`` metric."""
        raise NotImplementedError

    # -- optional hooks: a task overrides those that apply to it; the defaults add nothing --------------
    #: what the data options changed (results.json ``data``): ListOps' stripped brackets and cuts, homology's drops
    preprocessing: dict | None = None

    def describe_data(self) -> dict[str, Any]:
        """Which data exactly, for results.json ``data`` (time series: problem, files, split sizes)."""
        return {}

    def adjust_test_metrics(self, metrics: dict[str, dict[str, float]]) -> None:
        """Add task-specific test metrics to ``metrics`` in place (homology: the accuracy on the paper's scale)."""

    def target_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the training targets, per target: what a regression task's objective standardises with."""
        raise ValueError("a regression task must provide target_statistics() (the training targets' mean and "
                         "std, per target)")

    def prediction_layout(self) -> Any:
        """How raw arrays become this task's inputs, for ``fpt predict`` (an object with ``to_dict()``, saved
        as prediction_layout.json); None: the task takes no raw arrays."""
        return None


class NamedSplitsTask(Task):
    """A task whose data is three named splits built by one ``_split(name, training)``: train (shuffled by
    the run's seed), val, and a single test split."""

    def _split(self, name: str, training: bool = False) -> Split:
        raise NotImplementedError

    def train(self) -> Split:
        return self._split("train", training=True)

    def val(self) -> Split:
        return self._split("val")

    def test(self) -> dict[str, Split]:
        return {"test": self._split("test")}


# -- registry ------------------------------------------------------------------------------
TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} registered twice ({TASKS[cls.name].__name__}, {cls.__name__})")
    TASKS[cls.name] = cls
    return cls


def make_options(cls: type[Task], values: dict[str, Any] | None) -> Task.Options:
    """Build ``cls.Options`` from a dict, rejecting unknown names and ill-typed values with a message."""
    fields = declared(cls.Options)
    kwargs = {}
    for key, value in dict(values or {}).items():
        key_norm = key.replace("-", "_")
        if key_norm not in fields:
            raise ValueError(
                f"task {cls.name!r} has no option {key!r}.{suggest(key_norm, fields)} "
                f"Its options: {', '.join(sorted(fields)) or '(none)'}."
            )
        # the declared type, and the bounds where the task declares them (fpt.base.options.bounded); numbers are finite
        kwargs[key_norm] = coerce_field(value, fields[key_norm], owner=f"task {cls.name!r}")
    return cls.Options(**kwargs)
