"""fpt's layers point one way: data -> tasks -> model -> training -> cli (docs/architecture.md).

A module may import from its own layer and the layers before it, never from a later one, at the top
of the file or inside a function. The model, task and checkpoint layers import without Lightning.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "fpt"

# In order: a module may import only from its own layer or an earlier one. A package name covers its submodules.
LAYERS = {
    "base": ("fpt", "fpt.base.io", "fpt.base.text", "fpt.base.options", "fpt.config", "fpt.base.cpu"),  # words every layer shares
    "data": ("fpt.data",),
    "tasks": ("fpt.tasks",),
    "model": ("fpt.backbones", "fpt.model", "fpt.runs.checkpoint", "fpt.model.features", "fpt.model.fastpath", "fpt.model.step",
              "fpt.results.predict", "fpt.results.reference", "fpt.results.report"),
    "training": ("fpt.training", "fpt.training.callbacks", "fpt.runs.health", "fpt.runs.rundir", "fpt.training.distributed", "fpt.bench"),
    "cli": ("fpt.cli", "fpt.experiments", "fpt.experiments.slurm", "fpt.cli.experiments"),
}
ORDER = list(LAYERS)


def layer_of(module: str) -> str:
    """The layer of a module: the longest declared name it equals or lies under."""
    best = None
    for layer, names in LAYERS.items():
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (layer, name)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to tests/test_layering.py and docs/architecture.md")
    return best[0]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def fpt_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``import fpt...`` / ``from fpt... import`` in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fpt"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fpt" and node.level == 0:
            # `from fpt import x` imports the module fpt.x when there is one
            found += [(node.lineno, f"{node.module}.{a.name}" if node.module == "fpt" else node.module) for a in node.names]
    return found


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_point_down():
    wrong = []
    for name, path in modules().items():
        mine = ORDER.index(layer_of(name))
        for line, target in fpt_imports(path):
            theirs = ORDER.index(layer_of(target))
            if theirs > mine:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} ({ORDER[mine]}) imports {target} ({ORDER[theirs]})")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_data_never_imports_tasks_and_homology_not_listops():
    for name, path in modules().items():
        targets = [t for _, t in fpt_imports(path)]
        if name.startswith("fpt.data"):
            assert not [t for t in targets if t.startswith("fpt.tasks")], name
        if name.startswith("fpt.tasks.") and name != "fpt.tasks.base":
            assert not [t for t in targets if t.startswith("fpt.tasks.") and t != "fpt.tasks.base"], name


@pytest.mark.parametrize("modules_", [
    "fpt.model, fpt.tasks, fpt.backbones, fpt.data",
    "fpt.runs.checkpoint, fpt.results.predict, fpt.results.report",  # load and use trained models without Lightning
    "fpt.experiments, fpt.runs.health, fpt.runs.rundir, fpt.config",
])
def test_import_without_lightning(modules_):
    code = (
        f"import sys, {modules_}\n"
        "from fpt.tasks import make_task\n"
        "make_task('bit-xor').train().batch(range(2))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"Lightning imported by {modules_}: {out.stdout.strip()[:200]}"


def test_old_import_paths_still_work():
    """Names that moved stay importable from where they were (other code imports them from there)."""
    from fpt.training.callbacks import ChanceWarning, PhaseTracker  # noqa: F401
    from fpt.training.stopping import GracefulStop  # noqa: F401
    from fpt.runs.health import NonFiniteGradientError  # noqa: F401
    from fpt.training.callbacks import AtomicCheckpointIO  # noqa: F401
    from fpt.runs.checkpoint import read_checkpoint, save_checkpoint_file  # noqa: F401
    from fpt.data.splits import ArraySplit, GeneratedSplit, Split, TaskSpec, collate  # noqa: F401
    from fpt.tasks import make_task, register_task  # noqa: F401
    from fpt.base.text import suggest  # noqa: F401
    from fpt.data.sequences import PackedSequenceSplit  # noqa: F401
    from fpt.runs.health import NonFiniteGradientError as training_error  # noqa: F401
    from fpt.runs.checkpoint import (  # noqa: F401
        build_model,
        check_identity,
        load_run,
        load_trained,
        read_results,
        save_trained,
    )
    import fpt.runs.checkpoint
    import fpt.data.splits

    assert TaskSpec is fpt.data.splits.TaskSpec and load_run is fpt.runs.checkpoint.load_run
    assert training_error is NonFiniteGradientError
