"""Config files: YAML presets shipped in ``fpt/presets``, your own YAML, flags on top, into one RunConfig.

Resolution order: dataclass defaults < ``--config FILE.yaml`` (or a preset name) < command-line flags.
The resolved config is written to ``RUN_DIR/config.yaml`` and is all that ``fpt test`` and
``--resume`` need.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fpt.base.io import atomic_write_text
from fpt.base.options import coerce_field
from fpt.base.text import description, suggest
from fpt.config.run import FIELDS, MACHINERY, RESUMABLE, RunConfig, flag_of


def preset_dir():
    return resources.files("fpt") / "presets"


def list_presets() -> dict[str, str]:
    """Shipped presets: name -> the description paragraph at the top of the file."""
    return {entry.name[:-5]: description(entry.read_text())
            for entry in sorted(preset_dir().iterdir(), key=lambda p: p.name) if entry.name.endswith(".yaml")}


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; more is not a config (or is /dev/zero)


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): an option file has no use for them, and
    nested aliases expand exponentially (a "billion laughs" document fills the memory)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found the alias *{event.anchor}: YAML aliases are not "
                                              "accepted in fpt config files; write the value out", event.start_mark)
        return super().compose_node(parent, index)


def read_text_file(path: Path, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """A small UTF-8 text file (a config, an experiment), read at most ``limit`` bytes; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise OSError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit // 1024} KB (or never ends); a config file is a few KB "
                         "of option: value lines")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not a text file (not UTF-8: byte {err.start} is {data[err.start]:#04x}); "
                         "give a YAML file of option: value lines") from None


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as plain data (``safe_load`` semantics: nothing is evaluated; no aliases)."""
    loader = _NoAliasLoader(text)  # a SafeLoader: what yaml.safe_load does, with aliases refused
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {err}") from None
    finally:
        loader.dispose()


def read_yaml(path_or_preset: str) -> dict[str, Any]:
    """Read a YAML config file, or a shipped preset by name. Never evaluates anything (safe_load), refuses
    aliases and files over ``MAX_CONFIG_BYTES``."""
    path = Path(path_or_preset)
    if path.exists():
        text = read_text_file(path, "config file")
        where = str(path)
    else:
        entry = preset_dir() / f"{path_or_preset}.yaml"
        if not entry.is_file():
            presets = list_presets()
            raise FileNotFoundError(
                f"no config file or preset named {path_or_preset!r}.{suggest(path_or_preset, presets)} "
                f"Presets: {', '.join(presets)}."
            )
        text = entry.read_text()
        where = f"preset {path_or_preset}"
    data = parse_yaml(text, where) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a YAML mapping of option: value, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` on top of ``base`` (flat option dicts; ``-`` in a key read as ``_``): a ``task_options``
    mapping, or a ``task_options.NAME`` key, updates the task options key by key instead of replacing them."""
    out = dict(base)
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key.startswith("task_options.") or (key == "task_options" and isinstance(value, dict)):
            base_options = out.get("task_options") or {}  # an empty `task_options:` in YAML is None
            if not isinstance(base_options, dict):  # not a TypeError traceback
                raise ValueError(f"option 'task_options' must be a mapping, got {base_options!r}")
            update = {key.split(".", 1)[1]: value} if key.startswith("task_options.") else value
            out["task_options"] = {**base_options, **update}
        else:
            out[key] = value
    return out


# Names other tools use for fpt's options (spelling suggestions cannot find these).
_ALIASES = {
    "learning_rate": "lr", "lr_rate": "lr", "epochs": "steps", "max_steps": "steps", "num_steps": "steps",
    "train_steps": "steps", "bs": "batch_size", "batch": "batch_size", "num_layers": "layers", "n_layers": "layers",
    "depth": "layers", "model": "backbone", "model_name": "backbone", "output_dir": "run_dir", "out_dir": "run_dir",
    "accumulate": "accumulate_grad_batches", "gradient_accumulation_steps": "accumulate_grad_batches",
    "max_grad_norm": "grad_clip", "gradient_clip_val": "grad_clip", "val_check_interval": "eval_every",
}


DOCUMENTATION_KEYS = ("description", "reproduces", "expected")  # keys of preset files that are not options


def build_config(values: dict[str, Any], preset_keys: set[str] | frozenset = frozenset()) -> RunConfig:
    """A validated ``RunConfig`` from a flat mapping, with a message naming any unknown or ill-typed option.

    ``protocol: paper`` fills in the settings the mapping does not hold (``fpt.config.protocols.resolve``);
    ``preset_keys``: keys (``name`` / ``task_options.name``) that came from a shipped preset, which
    the protocol may override."""
    from fpt.config.protocols import resolve

    values = {k.replace("-", "_"): v for k, v in values.items()}
    if values.get("task_options") is not None:  # read by the protocol before the other options are checked
        values["task_options"] = coerce_field(values["task_options"], FIELDS["task_options"])
    values = resolve(values, preset_keys)
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in DOCUMENTATION_KEYS:
            continue
        if name not in FIELDS:
            hint = f" Did you mean {_ALIASES[name]!r}?" if name in _ALIASES else suggest(name, FIELDS)
            raise ValueError(f"unknown option {key!r}.{hint} See `fpt fit --help`.")
        kwargs[name] = coerce_field(value, FIELDS[name], flag=flag_of(FIELDS[name]))
    return RunConfig(**kwargs).validate()


def _same(name: str, a: Any, b: Any) -> bool:
    """Two values of option ``name`` are the same once coerced (``"3e-3"`` and ``0.003``)."""
    try:
        return coerce_field(a, FIELDS[name]) == coerce_field(b, FIELDS[name])
    except (KeyError, ValueError):
        return a == b


def note_changes_in_label(written: dict[str, Any], values: dict[str, Any], limit: int = 300) -> dict[str, Any]:
    """``values`` with its label followed by the options that differ from ``written``'s (the preset or file that
    label was written for): ``-small: 2 SmolLM2 layers ... [changed: layers=1]``. A label describes the run it
    is shown with: flags on top of a preset must not leave it stale. Only when the label itself is the file's;
    options that only change how a run executes, its seed and its directory are not part of a label."""
    label = values.get("label")
    if not label or written.get("label") != label:
        return values
    changes = []
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in ("label", "run_dir", "seed", *DOCUMENTATION_KEYS) or name in MACHINERY:
            continue
        if name == "task_options":
            old = written.get("task_options") or {}
            changes += [f"{k}={v}" for k, v in (value or {}).items() if str(old.get(k)) != str(v)]
        elif name not in written or not _same(name, written.get(name), value):
            changes.append(f"{name}={value}")
    if not changes:
        return values
    note = " [changed: " + ", ".join(changes) + "]"
    if len(label) + len(note) > limit:
        note = note[: max(0, limit - len(label) - 4)] + "...]"
    return {**values, "label": label + note}


def changed_options(config: RunConfig, values: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The options whose value in ``values`` (merged onto ``config``) differs from ``config``'s:
    ``{name: (config's value, the new value)}``."""
    new = build_config(merge(config.to_dict(), values))
    return {name: (getattr(config, name), getattr(new, name)) for name in FIELDS
            if getattr(new, name) != getattr(config, name)}


def other_run_options(stored: RunConfig, config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The options that make ``config`` another run than ``stored`` (``--resume`` refuses them: not RESUMABLE),
    ``{name: (stored's value, config's)}``."""
    return {name: (getattr(stored, name), getattr(config, name)) for name in FIELDS
            if name not in RESUMABLE and getattr(stored, name) != getattr(config, name)}


def save_config(config: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# Options added after runs were made: a run's config.yaml without them gets the value that reproduces how it
# ran (a resumed run keeps its batches), not today's default.
ABSENT_FROM_OLDER_RUNS = {"bucket_by_length": 0}


def load_config(path: Path) -> RunConfig:
    values = read_yaml(str(path))
    return build_config({**{k: v for k, v in ABSENT_FROM_OLDER_RUNS.items() if k not in values}, **values})


def finish_advice(run_dir: str | Path) -> str:
    """What finishes the unfinished run in ``run_dir``: resuming it from its checkpoint, or, when it ended before its
    first checkpoint (nothing to resume), starting it again from its config.yaml."""
    run_dir = Path(run_dir)
    if any((run_dir / "checkpoints" / name).is_file() for name in ("last.ckpt", "previous.ckpt")):
        return f"resume it with fpt fit --resume {run_dir}"
    return (f"it ended before its first checkpoint, so there is nothing to resume: start it again with fpt fit --config "
            f"{run_dir / 'config.yaml'} --run-dir {run_dir}")


def is_shipped_preset(path_or_preset: str) -> bool:
    """True for a preset name (``fpt/presets/NAME.yaml``), False for a file of the user's."""
    return not Path(path_or_preset).exists() and (preset_dir() / f"{path_or_preset}.yaml").is_file()


def preset_keys(data: dict[str, Any]) -> set[str]:
    """The keys of a preset mapping, as ``fpt.config.protocols.resolve`` names them (``task_options.NAME`` too)."""
    keys = {k.replace("-", "_") for k in data}
    keys |= {f"task_options.{k}" for k in (data.get("task_options") or {})}
    return keys


# -- putting a run's config together: one path for fit, resume, sweeps (and studies) -------------------
def preset_values(preset: str | None) -> tuple[dict[str, Any], set[str]]:
    """What a preset name or YAML file sets (``{}`` for None), and the keys of it that ``--protocol`` may
    override: a shipped preset's (precedence: preset < protocol < your own YAML < flags; fpt/config/protocols.py)."""
    if not preset:
        return {}, set()
    written = read_yaml(preset)
    return written, (preset_keys(written) if is_shipped_preset(preset) else set())


def assemble(preset: str | tuple[dict[str, Any], set[str]] | None = None, given: dict[str, Any] | None = None,
             per_run: dict[str, Any] | None = None) -> tuple[dict[str, Any], set[str]]:
    """The flat options of one run, and the keys the protocol may still override (what ``build_config`` and
    ``fpt.config.protocols.resolve`` take).

    ``preset``: a preset name or YAML file (or what :func:`preset_values` read from one); ``given``: what
    the user set for this run on top (flags and ``-o``, a sweep's ``--set``), which the preset's label then
    names (:func:`note_changes_in_label`); ``per_run``: what the caller sets for each run and the label does
    not name (a sweep's variant, grid values, seed, threads and run directory; the options a resume
    changes). Documentation keys (``description``...) are dropped."""
    written, from_preset = preset if isinstance(preset, tuple) else preset_values(preset)
    given, per_run = given or {}, per_run or {}
    values = note_changes_in_label(written, merge(written, given))
    values = merge({k: v for k, v in values.items() if k not in DOCUMENTATION_KEYS}, per_run)
    return values, from_preset - preset_keys({**given, **per_run})


def assemble_config(preset: str | tuple[dict[str, Any], set[str]] | None = None, given: dict[str, Any] | None = None,
                    per_run: dict[str, Any] | None = None) -> RunConfig:
    """The validated ``RunConfig`` of one run: :func:`assemble`, the protocol, then every option checked."""
    values, may_override = assemble(preset, given, per_run)
    return build_config(values, may_override)
