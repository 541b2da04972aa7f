"""Security: weights and checkpoints are never unpickled, configs never evaluated, hub code never run
unless asked, downloads checked before use.

The source scan walks every module of the ``fpt`` package with ``ast`` (not text search, so comments
and strings do not count and ``model.eval()`` is not ``eval(``).
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

import fpt

PACKAGE = Path(fpt.__file__).parent
# The one place a pickle is read: CIFAR-10's official batches, through an unpickler that only rebuilds
# numpy arrays, dicts, lists, bytes, str and numbers (fpt/data/cifar.py, owned by the data code).
PICKLE_ALLOWED = {"data/cifar.py"}


def package_sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), filename=str(path))


def dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return None


def test_source_has_no_unsafe_loading_or_evaluation():
    problems = []
    for rel, tree in package_sources():
        for node in ast.walk(tree):
            where = f"fpt/{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                name = dotted(node.func)
                if name in ("eval", "exec", "compile", "__import__"):
                    problems.append(f"{where}: {name}(...)")
                if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load",
                            "pickle.Unpickler") and rel not in PICKLE_ALLOWED:
                    problems.append(f"{where}: {name}(...)")
                if name.endswith("torch.load") and keyword(node, "weights_only") is not True:
                    problems.append(f"{where}: torch.load without weights_only=True")
                if name.startswith("yaml.") and name.split(".")[-1] in (
                        "load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"):
                    problems.append(f"{where}: {name} (use yaml.safe_load)")
                if name.endswith(("np.load", "numpy.load")) and keyword(node, "allow_pickle") not in (None, False):
                    problems.append(f"{where}: np.load with allow_pickle")
                if keyword(node, "trust_remote_code") is True:
                    problems.append(f"{where}: trust_remote_code=True hard-coded")
                if name.startswith("AutoModel") and name.endswith(".from_pretrained") \
                        and keyword(node, "use_safetensors") is not True:
                    problems.append(f"{where}: {name} without use_safetensors=True (would unpickle .bin weights)")
            if isinstance(node, ast.ClassDef) and rel not in PICKLE_ALLOWED:
                if any(dotted(b).endswith("Unpickler") for b in node.bases):
                    problems.append(f"{where}: an Unpickler outside {PICKLE_ALLOWED}")
    assert not problems, "\n".join(problems)


def test_the_allowed_unpickler_refuses_code(tmp_path):
    from fpt.data.cifar import RestrictedUnpickler, UnsafePickleError

    marker = tmp_path / "ran"
    payload = pickle.dumps(_Opens(str(marker)))
    with pytest.raises(UnsafePickleError):
        RestrictedUnpickler(__import__("io").BytesIO(payload), encoding="bytes").load()
    assert not marker.exists()


class _Opens:
    """Unpickling this object opens (creates) a file: a stand-in for arbitrary code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    from fpt.runs.checkpoint import read_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"fpt": {"format": "fpt-1"}, "payload": _Opens(str(marker))}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects that fpt does not load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_resume_checkpoint_holds_only_safe_types(pretrained_dirs, tmp_path):
    """A real run's last.ckpt loads with weights_only=True, and Lightning reads it through fpt's loader."""
    from fpt.config.files import build_config
    from fpt.training.callbacks import AtomicCheckpointIO
    from fpt.training.trainer import _trainer
    from fpt.training.fitting import fit

    config = build_config({"task": "bit-xor", "task_options": {"n_bits": 3, "val_samples": 16, "test_samples": 16},
                           "backbone": pretrained_dirs["gpt2"], "steps": 2, "eval_every": 2, "batch_size": 8,
                           "eval_batch_size": 16, "device": "cpu", "run_dir": str(tmp_path / "run")})
    fit(config, enable_progress_bar=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["fpt"]["format"] == "fpt-1" and "optimizer_states" in checkpoint
    trainer = _trainer(config, tmp_path / "run", enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_pickled_bin_weights_are_never_loaded(pretrained_dirs, tmp_path):
    from safetensors.torch import load_file

    from fpt.backbones import load_backbone

    model_dir = tmp_path / "bin-only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text((Path(pretrained_dirs["gpt2"]) / "config.json").read_text())
    marker = tmp_path / "ran"
    state = load_file(Path(pretrained_dirs["gpt2"]) / "model.safetensors")
    with open(model_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"state": dict(state), "payload": _Opens(str(marker))}, f)
    with pytest.raises(OSError, match="only pickled weights.*never loads"):
        load_backbone(str(model_dir))
    assert not marker.exists()


def test_remote_code_never_runs_without_the_flag(tmp_path):
    from fpt.backbones import load_backbone

    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for init in ("pretrained", "random"):
        with pytest.raises(ValueError, match="ships its own Python code.*--trust-remote-code"):
            load_backbone(str(tmp_path), init=init)
    assert not marker.exists()


def test_config_values_are_never_evaluated(tmp_path):
    from fpt.cli import main as cli
    from fpt.config.files import read_yaml

    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        read_yaml(str(bad))
    key, value = cli._parse_task_option(f"n_bits=!!python/object/apply:os.system ['touch {marker}']")
    assert isinstance(value, str)  # kept as text, never constructed
    assert not marker.exists()


def test_downloads_are_verified_before_use():
    from fpt.data.sources import DATASETS

    unchecked = []
    for key, dataset in DATASETS.items():
        for remote in dataset.remotes:
            if not (remote.md5 or remote.sha256):
                unchecked.append(key)
    # TAPE publishes no checksum for remote homology; its archive is checked for completeness
    # (Content-Length, gzip CRC) and every JSON file must parse before use.
    assert set(unchecked) <= {"remote-homology"}, unchecked
    assert DATASETS["remote-homology"].verify is not None
