"""fpt's folders are its layers, and imports point down them (docs/architecture.md).

Every module lies in a layer folder (``fpt/<layer>/...``; the package's own ``fpt/__init__.py`` counts as
``base``). A module may import from its own folder and the folders below it, never from one above: at
the top of a file, inside a function, or through a registry's ``"module:function"`` loader string. No two
modules import each other, directly or round a circle. The model, the tasks and a finished run load
without Lightning.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "fpt"

# Lowest first: a module may import only from its own layer or an earlier one.
LAYERS = ["base", "config", "data", "tasks", "backbones", "model", "runs", "training", "results", "experiments",
          "bench", "cli"]
LOADER = re.compile(r"^(fpt(?:\.\w+)+):\w+$")  # a registry's "module:function" string (fpt/backbones/registry.py)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every .py file under ``root`` (a package named like its folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    """The layer of a module: the folder right under ``fpt/`` (the root package itself is ``base``)."""
    parts = module.split(".")
    if parts == ["fpt"]:
        return "base"
    if len(parts) < 3 and not (len(parts) == 2 and parts[1] in LAYERS):
        raise AssertionError(f"{module} lies in no layer folder: move it into one of fpt/{{{','.join(LAYERS)}}}/ "
                             "(docs/architecture.md)")
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: fpt/{parts[1]}/ is not a layer; add it to LAYERS in tests/test_layering.py "
                             "and to docs/architecture.md, in its place")
    return parts[1]


def imports(path: Path, name: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every fpt module this file imports: ``import``/``from`` at any depth (relative ones
    resolved) and ``"fpt.x.y:function"`` loader strings. ``from a import b`` names the module ``a.b`` when
    there is one, else ``a``."""
    found = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fpt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "fpt":
                continue
            for alias in node.names:
                found.append((node.lineno, f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LOADER.match(node.value):
            found.append((node.lineno, LOADER.match(node.value).group(1)))
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    mods = modules(root)
    known = set(mods)
    return mods, {name: imports(path, name, known) for name, path in mods.items()}


def upward_imports(mods: dict[str, Path], edges: dict[str, list[tuple[int, str]]]) -> list[str]:
    wrong = []
    for name, targets in edges.items():
        mine = LAYERS.index(layer_of(name))
        for line, target in targets:
            theirs = LAYERS.index(layer_of(target))
            if theirs > mine:
                wrong.append(f"{mods[name]}:{line}: {name} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]})")
    return wrong


def circles(edges: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Every set of modules that import each other round a circle (Tarjan's strongly connected components)."""
    succ = {name: sorted({t for _, t in targets if t in edges}) for name, targets in edges.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in succ[v]:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(succ):
        if v not in index:
            visit(v)
    return out


def test_every_module_lies_in_a_layer_folder():
    for name in modules():
        layer_of(name)


def test_imports_point_down():
    wrong = upward_imports(*graph())
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_no_import_circles():
    found = circles(graph()[1])
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_planted_violations(tmp_path):
    """A copy of fpt with an upward import inside a function, a circle through a loader string, and a module
    outside every layer folder: each check fails on it."""
    root = tmp_path / "fpt"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "configs"))
    text = root / "base" / "text.py"
    text.write_text(text.read_text() + "\n\ndef _planted():\n    from fpt.training.fitting import fit\n\n    return fit\n")
    (root / "data" / "planted_a.py").write_text('"""planted"""\nLOADER = "fpt.data.planted_b:load"\n')
    (root / "data" / "planted_b.py").write_text('"""planted"""\nfrom fpt.data import planted_a  # noqa: F401\n')
    (root / "loose.py").write_text('"""planted: a module in no layer"""\n')

    mods, edges = graph(root)
    wrong = upward_imports({k: v for k, v in mods.items() if k != "fpt.loose"},
                           {k: v for k, v in edges.items() if k != "fpt.loose"})
    assert any("fpt.base.text (base) imports fpt.training.fitting (training)" in w for w in wrong), wrong
    assert ["fpt.data.planted_a", "fpt.data.planted_b"] in circles(edges)
    with pytest.raises(AssertionError, match="fpt.loose lies in no layer folder"):
        layer_of("fpt.loose")
    # and the real tree has none of them
    assert "fpt.loose" not in modules() and not circles(graph()[1])


def test_circles_finds_a_module_that_imports_itself_and_longer_rings():
    edges = {"a": [(1, "b")], "b": [(1, "c")], "c": [(1, "a")], "d": [(1, "d")], "e": [(1, "a")]}
    assert circles(edges) == [["a", "b", "c"], ["d"]]


def test_data_never_imports_tasks_and_tasks_import_only_their_base():
    mods, edges = graph()
    for name, targets in edges.items():
        targets = [t for _, t in targets]
        if name.startswith("fpt.data"):
            assert not [t for t in targets if t.startswith("fpt.tasks")], name
        if name.startswith("fpt.tasks.") and name not in ("fpt.tasks.base", "fpt.tasks.registry"):
            assert not [t for t in targets if t.startswith("fpt.tasks") and t != "fpt.tasks.base"], name


@pytest.mark.parametrize("modules_", [
    "fpt.model, fpt.tasks, fpt.backbones, fpt.data",
    "fpt.runs.checkpoint, fpt.results.predict, fpt.results.report",  # load and use trained models without Lightning
    "fpt.experiments.plan, fpt.experiments.status, fpt.runs.health, fpt.runs.rundir, fpt.config.files",
    "fpt.training.distributed",  # the CLI imports it at start-up
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
