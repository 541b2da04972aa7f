"""A run's configuration: one dataclass, YAML presets shipped in ``fpt/presets``, flags on top.

Resolution order: dataclass defaults < ``--config FILE.yaml`` (or a preset name) < command-line flags.
The resolved config is written to ``RUN_DIR/config.yaml`` and is all that ``fpt test`` and
``--resume`` need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from fpt.io import atomic_write_text
from fpt.options import (
    SEEDS, at_least, between, coerce_field, declared, how, probability_or_keep, what, when,
)
from fpt.text import description, suggest


Tristate = Union[Literal["auto"], bool]  # auto | true | false
# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT; tests/test_training.py checks
# that they match), and auto. Declared here so that a typo is refused before anything is built.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


@dataclass
class RunConfig:
    """Every option of a run. Each field is declared once, with its help text and its role (what the
    run is / how it runs / when it stops and is checked; :mod:`fpt.options`): the ``fpt fit`` flags,
    the YAML keys, ``--resume``'s rules, the sweep's comparison and the option tables (docs/options.md,
    the README's main options) come from here. Adding an option: docs/architecture.md."""

    # -- what to train ---------------------------------------------------------------------------
    protocol: str = what("fpt", "fpt (fpt's corrected protocol) or paper (the 2021 code's behaviour wherever it differs: "
                         "fpt/protocol.py, docs/paper-fidelity.md); explicit options still win", choices=("fpt", "paper"))
    task: str = what("bit-xor", "a registered task (fpt list)")
    task_options: dict[str, Any] = what(dict, "the task's own options, e.g. {n_bits: 5} (on the command line: -o KEY=VALUE)",
                                        flag=False)
    data_dir: str | None = what(None, "directory holding the task's dataset files (else $FPT_DATA_DIR, then the cache)")
    backbone: str = what("smollm2-135m", "smollm2-135m (offline default), minilm-l6 (offline encoder), lstm, a Hugging "
                         "Face id (gpt2, EleutherAI/pythia-160m, bert-base-uncased), a local directory, a .gguf file, or "
                         "run:RUN_DIR (a finished run's trained backbone); fpt list shows them")
    init: str = what("pretrained", "pretrained, or random (same architecture, seeded random weights)",
                     choices=("pretrained", "random"))
    layers: int | None = what(None, "keep only the first K blocks (default: all)", bounds=at_least(1))
    lstm_width: int = what(768, "hidden size of the lstm backbone (paper: 768)", bounds=between(1, 65536))
    lstm_kind: str = what("torch", "the lstm backbone: torch (nn.LSTM, fused kernels) or layernorm (the 2021 code's "
                          "layer-norm LSTM; its norms train under fpt)", choices=("torch", "layernorm"))
    backbone_dropout: float | str = what(0.0, "dropout inside the backbone: a probability (0: off), or keep (the "
                                         "backbone's own; GPT-2: 0.1, as the 2021 code)", convert=probability_or_keep,
                                         expected="a probability in [0, 1) or keep")
    trust_remote_code: bool = what(False, "run Python code shipped with a hub model (never by default)")
    # -- the FPT module (fpt.model.ModelConfig) ---------------------------------------------------
    freeze: str | list[str] = what("fpt", "what trains: a preset (fpt, output-only, +ln, +input, +pos, +ff, +attn, full) "
                                   "or, in YAML, a list of groups", expected="a preset name or a list of groups")
    freeze_rules: dict[str, list[str]] | None = what(None, "module class names per group (norm, attention, feedforward), "
                                                     "for architectures fpt does not know", flag=False)
    readout: str | None = what(None, "last, mean, first (a trained summary token prepended; encoders) or tokens "
                               "(default: the task's; an encoder replaces its 'last' by its family's: mean for "
                               "BERT-style, first for ViT)", choices=("last", "mean", "first", "tokens"))
    learned_positions: bool = what(True, "a trained position table for backbones without one (RoPE)")
    input_init: str = what("embedding", "input layer init: embedding (orthogonal, at the token embeddings' scale) or "
                           "paper (the 2021 code's: orthogonal with gain 1.41 unscaled, N(0, 1) embeddings, default head)",
                           choices=("embedding", "paper"))
    input_dropout: float = what(0.0, "dropout after a continuous input layer (the 2021 code: 0.1; none after an embedding)",
                                bounds=between(0.0, 1.0, high_open=True))
    # -- optimisation -----------------------------------------------------------------------------
    steps: int = when(1000, "optimizer steps", bounds=at_least(1))
    batch_size: int = what(32, "global batch size (split across devices)", bounds=at_least(1))
    accumulate_grad_batches: int = what(1, "micro-batches of --batch-size per optimizer step (effective batch = "
                                        "batch size x this)", bounds=at_least(1))
    # above 1e3, Adam's bias-corrected step size overflows float32 (a traceback, not a divergence)
    lr: float = what(1e-3, "Adam learning rate (paper: 1e-3)", bounds=between(0.0, 1e3, low_open=True))
    weight_decay: float = what(0.0, "decoupled weight decay, AdamW-style (0: plain Adam, as the paper)",
                               bounds=at_least(0.0))
    grad_clip: float = what(1.0, "clip the global gradient norm (paper: 1.0); 0 disables", bounds=at_least(0.0))
    max_bad_steps: int = what(10, "stop after this many consecutive steps with a non-finite gradient norm",
                              bounds=at_least(1))
    seed: int = what(0, "seed of the training stream, generated held-out sets, random init and the new layers",
                     bounds=SEEDS)
    # -- evaluation ---------------------------------------------------------------------------------
    bucket_by_length: int = what(100, "padded tasks (variable-length sequences): sort each window of this many "
                                 "training batches by length, so that a batch holds sequences of similar length (less "
                                 "padding; TAPE's bucketing, a pure function of seed and step); 0: batches of any "
                                 "lengths. Evaluation batches are always grouped by length",
                                 bounds=at_least(0))
    eval_every: int = when(100, "steps between validations (and checkpoints); the last step is always validated too",
                           bounds=at_least(1))
    eval_batch_size: int = how(256, "batch size for validation and test", bounds=at_least(1))
    target_accuracy: float = what(1.0, "record the first step at which validation accuracy reaches this",
                                  bounds=between(0.0, 1.0, low_open=True))
    stop_at_target: bool = when(False, "end training once validation accuracy reaches --target-accuracy")
    chance_warning_evals: int = what(3, "warn when validation accuracy is at chance for the first K validations (0: never)",
                                     bounds=at_least(0))
    # -- machinery ----------------------------------------------------------------------------------
    device: str = how("auto", "auto (cuda if available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    devices: int = how(1, "devices (processes) per node; DDP when devices x num_nodes > 1", bounds=at_least(1))
    num_nodes: int = how(1, "machines; launch one process per device with torchrun or srun (docs/distributed.md)",
                         bounds=at_least(1))
    strategy: str = how("auto", "auto (DDP when several processes), ddp, or fsdp (shards the backbone; CUDA only)",
                        choices=("auto", "ddp", "fsdp"))
    precision: str = how("auto", "auto (bf16-mixed on CUDA, 32-true on CPU), or a Lightning precision "
                         "(32-true, bf16-mixed, 16-mixed...)", choices=PRECISIONS)
    num_workers: int = how(0, "DataLoader worker processes", bounds=at_least(0))
    attn_implementation: str = how("sdpa", "sdpa (fused kernels) or eager (needed to read attention weights)",
                                   choices=("sdpa", "eager"))
    # -- speed (fpt/fastpath.py; `fpt bench` measures them) --------------------------------------------
    compile: Tristate = how("auto", "torch.compile the backbone in place: auto (on CUDA), true or false")
    fused_optimizer: Tristate = how("auto", "fused Adam/AdamW with on-device skipping of non-finite steps (no host "
                                    "sync per step): auto (on CUDA), true or false")
    num_threads: int | None = how(None, "CPU intra-op threads (default: $OMP_NUM_THREADS, else the physical cores / "
                                  "processes; a single process follows the cores other processes leave free, "
                                  "docs/performance.md)",
                                  bounds=at_least(1))
    cache_features: bool = what(False, "with --freeze output-only: run the frozen network once per sample and train "
                                "the head on its cached outputs (fpt/features.py)")
    cache_train_samples: int = what(0, "with --cache-features on a generated task: training samples to cache (0: steps "
                                    "x batch size, the samples an uncached run draws; fewer make the training set finite)",
                                    bounds=at_least(0))
    cache_memory_mb: int = how(2048, "with --cache-features: larger caches go to RUN_DIR/features (memory-mapped)",
                               bounds=at_least(0))
    run_dir: str | None = how(None, "where the run writes everything (default: runs/<task>-<backbone>-<init>-<freeze>-s<seed>)")
    label: str = what("", "free text shown in reports, e.g. \"-small: 2 layers, 2k steps\"", max_length=500)

    def validate(self) -> "RunConfig":
        """Every field as declared (type, bounds, choices, length: :func:`fpt.options.coerce_field`), then the
        rules that tie options together. Raises ``ValueError`` naming the option."""
        for f in dataclasses.fields(self):
            coerce_field(getattr(self, f.name), f, flag=flag_of(f))
        world = self.devices * self.num_nodes
        checks = [
            (self.batch_size % world == 0, f"batch_size ({self.batch_size}) must be divisible by devices x num_nodes ({world})"),
            (not self.cache_features or self.freeze in ("output-only", ["output"], ("output",)),
             f"cache_features needs freeze output-only (only the head trains, so the frozen network's outputs never "
             f"change); with freeze {self.freeze!r} they change every step. Use --freeze output-only or drop --cache-features"),
            (not self.cache_features or (self.input_dropout == 0 and self.backbone_dropout in (0, 0.0)),
             "cache_features computes the frozen network's outputs once, so it cannot apply dropout: set "
             "input_dropout 0 and backbone_dropout 0, or drop --cache-features"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def default_run_dir(self) -> str:
        name = Path(self.backbone).name if Path(self.backbone).exists() else self.backbone.replace("/", "_")
        freeze = self.freeze if isinstance(self.freeze, str) else "+".join(self.freeze)
        layers = f"-L{self.layers}" if self.layers else ""
        return str(Path("runs") / f"{self.task}-{name}{layers}-{self.init}-{freeze}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = declared(RunConfig)


def flag_of(f: dataclasses.Field) -> str | None:
    """The command-line flag of a declared option (``--eval-batch-size``), or None for a YAML-only one."""
    return "--" + f.name.replace("_", "-") if f.metadata.get("flag", True) else None


def role(name: str) -> str:
    """``what``, ``how`` or ``when`` (see :mod:`fpt.options`)."""
    return FIELDS[name].metadata["role"]


def options_with_role(*roles: str) -> set[str]:
    return {name for name, f in FIELDS.items() if f.metadata["role"] in roles}


# Options that only say how a run executes: sweeps ignore them when comparing a trial with its directory.
MACHINERY = frozenset(options_with_role("how"))
# Options whose value may change when a run is resumed: how it runs, and how long / when it is checked.
RESUMABLE = frozenset(options_with_role("how", "when"))


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
    """``overrides`` on top of ``base`` (flat option dicts); ``task_options`` are merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if key == "task_options" and isinstance(value, dict):
            base_options = out.get(key) or {}  # an empty `task_options:` in YAML is None
            if not isinstance(base_options, dict):  # not a TypeError traceback
                raise ValueError(f"option 'task_options' must be a mapping, got {base_options!r}")
            out[key] = {**base_options, **value}
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

    ``protocol: paper`` fills in the settings the mapping does not hold (``fpt.protocol.resolve``);
    ``preset_keys``: keys (``name`` / ``task_options.name``) that came from a shipped preset, which
    the protocol may override."""
    from fpt.protocol import resolve

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


def save_config(config: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# Options added after runs were made: a run's config.yaml without them gets the value that reproduces how it
# ran (a resumed run keeps its batches), not today's default.
ABSENT_FROM_OLDER_RUNS = {"bucket_by_length": 0}


def load_config(path: Path) -> RunConfig:
    values = read_yaml(str(path))
    return build_config({**{k: v for k, v in ABSENT_FROM_OLDER_RUNS.items() if k not in values}, **values})


def is_shipped_preset(path_or_preset: str) -> bool:
    """True for a preset name (``fpt/presets/NAME.yaml``), False for a file of the user's."""
    return not Path(path_or_preset).exists() and (preset_dir() / f"{path_or_preset}.yaml").is_file()


def preset_keys(data: dict[str, Any]) -> set[str]:
    """The keys of a preset mapping, as ``fpt.protocol.resolve`` names them (``task_options.NAME`` too)."""
    keys = {k.replace("-", "_") for k in data}
    keys |= {f"task_options.{k}" for k in (data.get("task_options") or {})}
    return keys
