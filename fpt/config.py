"""A run's configuration: one dataclass, YAML presets shipped in ``fpt/presets``, flags on top.

Resolution order: dataclass defaults < ``--config FILE.yaml`` (or a preset name) < command-line flags.
The resolved config is written to ``RUN_DIR/config.yaml`` and is all that ``fpt test`` and
``--resume`` need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fpt.tasks.base import suggest


@dataclass
class RunConfig:
    # -- what to train ---------------------------------------------------------------------------
    protocol: str = "fpt"  # fpt (corrected) | paper: the 2021 code's behaviour where it differs (fpt/protocol.py, docs/paper-fidelity.md)
    task: str = "bit-xor"  # a registered task (fpt list)
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own options, e.g. {n_bits: 5}
    data_dir: str | None = None  # where the task's dataset files are (else $FPT_DATA_DIR, then the cache)
    backbone: str = "smollm2-135m"  # smollm2-135m (offline), lstm, a Hugging Face id or a local directory
    init: str = "pretrained"  # pretrained | random (same architecture, seeded random weights)
    layers: int | None = None  # keep only the first K blocks (None: all)
    lstm_width: int = 768  # hidden size of the lstm backbone (paper: 768)
    lstm_kind: str = "torch"  # torch (nn.LSTM, fused kernels) | layernorm (the 2021 code's layer-norm LSTM; its norms train under fpt)
    backbone_dropout: Any = 0.0  # dropout inside the backbone: a probability (0: off), or keep (the backbone's own, GPT-2: 0.1, as the 2021 code)
    trust_remote_code: bool = False  # run Python code shipped with a hub model (off: never by default)
    attn_implementation: str = "sdpa"  # sdpa (fast) | eager (needed to read attention weights)
    # -- the FPT module (fpt.model.ModelConfig) ---------------------------------------------------
    freeze: Any = "fpt"  # preset (fpt, output-only, +ln, +input, +pos, +ff, +attn, full) or list of groups
    freeze_rules: dict[str, list[str]] | None = None  # module class names per group, for unknown architectures
    readout: str | None = None  # last | mean | tokens; None: the task's default
    learned_positions: bool = True  # trained position table for backbones without one (RoPE)
    input_init: str = "embedding"  # embedding (match token-embedding scale) | paper (orthogonal gain 1.41, N(0,1) embeddings, default head)
    input_dropout: float = 0.0  # dropout after a continuous input layer (the 2021 code: 0.1; none after an embedding)
    # -- optimisation -----------------------------------------------------------------------------
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # global batch size (split across devices)
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step (batch_size each): effective batch = batch_size x this
    lr: float = 1e-3  # Adam learning rate (paper: 1e-3)
    weight_decay: float = 0.0  # AdamW-style decoupled weight decay (0: plain Adam, as the paper)
    grad_clip: float = 1.0  # clip the global gradient norm (paper: 1.0); 0 disables
    max_bad_steps: int = 10  # stop after this many consecutive steps with a non-finite gradient norm
    seed: int = 0  # seeds the training stream, generated held-out sets (bit tasks), random init and the new layers
    # -- evaluation ---------------------------------------------------------------------------------
    eval_every: int = 100  # steps between validation passes (and checkpoints)
    eval_batch_size: int = 256  # batch size for validation and test
    target_accuracy: float = 1.0  # record the first step at which validation accuracy reaches this
    stop_at_target: bool = False  # end training early once validation accuracy reaches target_accuracy
    chance_warning_evals: int = 3  # warn when validation accuracy is at chance (1/classes) for the first K validations; 0: never
    # -- machinery ----------------------------------------------------------------------------------
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    devices: int = 1  # devices (processes) per node (Lightning DDP when devices x num_nodes > 1)
    num_nodes: int = 1  # machines; launch one process per device with torchrun or srun (README)
    strategy: str = "auto"  # auto (DDP when several processes) | ddp | fsdp (shards the backbone over GPUs; CUDA only)
    precision: str = "auto"  # auto: bf16-mixed on CUDA, 32-true on CPU; or any Lightning precision
    num_workers: int = 0  # DataLoader worker processes
    # -- speed (fpt/fastpath.py; `fpt bench` measures them) --------------------------------------------
    compile: Any = "auto"  # torch.compile the backbone in place: auto (on CUDA) | true | false
    fused_optimizer: Any = "auto"  # fused Adam/AdamW + on-device skipping of non-finite steps (no per-step host sync): auto (on CUDA) | true | false
    num_threads: int | None = None  # CPU intra-op threads; None: physical cores / processes on this machine (or $OMP_NUM_THREADS)
    cache_features: bool = False  # freeze output-only: run the frozen network once per sample, train the head on the cached outputs (fpt/features.py)
    cache_train_samples: int = 0  # cache_features on a generated (endless) task: training samples to cache; 0: steps x batch_size (exactly the samples an uncached run draws); fewer are reused, so the task's training set becomes finite
    cache_memory_mb: int = 2048  # cached features larger than this go to RUN_DIR/features/*.safetensors (memory-mapped)
    run_dir: str | None = None  # where this run writes everything (default: runs/<task>-<backbone>-<init>-<freeze>-s<seed>)
    label: str = ""  # free text shown in reports, e.g. "-small: 2 layers, 2k steps"

    def validate(self) -> "RunConfig":
        checks = [
            (self.init in ("pretrained", "random"), f"init must be 'pretrained' or 'random', got {self.init!r}"),
            (self.layers is None or (isinstance(self.layers, int) and self.layers >= 1), f"layers must be >= 1, got {self.layers!r}"),
            (isinstance(self.steps, int) and self.steps >= 1, f"steps must be a positive integer, got {self.steps!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be a positive integer, got {self.batch_size!r}"),
            (isinstance(self.accumulate_grad_batches, int) and self.accumulate_grad_batches >= 1, f"accumulate_grad_batches must be a positive integer, got {self.accumulate_grad_batches!r}"),
            (isinstance(self.chance_warning_evals, int) and self.chance_warning_evals >= 0, f"chance_warning_evals must be >= 0, got {self.chance_warning_evals!r}"),
            (isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}"),
            (isinstance(self.eval_every, int) and self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (isinstance(self.devices, int) and self.devices >= 1, f"devices must be >= 1, got {self.devices!r}"),
            (self.batch_size % self.devices == 0, f"batch_size ({self.batch_size}) must be divisible by devices ({self.devices})"),
            (self.attn_implementation in ("sdpa", "eager"), f"attn_implementation must be sdpa or eager, got {self.attn_implementation!r}"),
            (isinstance(self.num_nodes, int) and self.num_nodes >= 1, f"num_nodes must be >= 1, got {self.num_nodes!r}"),
            (self.strategy in ("auto", "ddp", "fsdp"), f"strategy must be auto, ddp or fsdp, got {self.strategy!r}"),
            (self.batch_size % (self.devices * self.num_nodes) == 0,
             f"batch_size ({self.batch_size}) must be divisible by devices x num_nodes ({self.devices * self.num_nodes})"),
            (self.compile in ("auto", True, False), f"compile must be auto, true or false, got {self.compile!r}"),
            (self.fused_optimizer in ("auto", True, False), f"fused_optimizer must be auto, true or false, got {self.fused_optimizer!r}"),
            (self.num_threads is None or (isinstance(self.num_threads, int) and self.num_threads >= 1), f"num_threads must be >= 1, got {self.num_threads!r}"),
            (isinstance(self.cache_train_samples, int) and self.cache_train_samples >= 0, f"cache_train_samples must be >= 0, got {self.cache_train_samples!r}"),
            (not self.cache_features or self.freeze in ("output-only", ["output"], ("output",)),
             f"cache_features needs freeze output-only (only the head trains, so the frozen network's outputs never "
             f"change); with freeze {self.freeze!r} they change every step. Use --freeze output-only or drop --cache-features"),
            (0 < self.target_accuracy <= 1, f"target_accuracy must be in (0, 1], got {self.target_accuracy!r}"),
            (self.protocol in ("fpt", "paper"), f"protocol must be fpt or paper, got {self.protocol!r}"),
            (self.lstm_kind in ("torch", "layernorm"), f"lstm_kind must be torch or layernorm, got {self.lstm_kind!r}"),
            (0.0 <= self.input_dropout < 1.0, f"input_dropout must be in [0, 1), got {self.input_dropout!r}"),
            (self.backbone_dropout == "keep" or (isinstance(self.backbone_dropout, (int, float))
                                                 and not isinstance(self.backbone_dropout, bool)
                                                 and 0.0 <= self.backbone_dropout < 1.0),
             f"backbone_dropout must be a probability in [0, 1) or keep, got {self.backbone_dropout!r}"),
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


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def preset_dir():
    return resources.files("fpt") / "presets"


def list_presets() -> dict[str, str]:
    """Shipped presets: name -> first line of the file's description."""
    out = {}
    for entry in sorted(preset_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            text = entry.read_text()
            first = next((ln[1:].strip() for ln in text.splitlines() if ln.startswith("#") and ln[1:].strip()), "")
            out[entry.name[:-5]] = first
    return out


def read_yaml(path_or_preset: str) -> dict[str, Any]:
    """Read a YAML config file, or a shipped preset by name. Never evaluates anything (safe_load)."""
    path = Path(path_or_preset)
    if path.exists():
        text = path.read_text()
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
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a YAML mapping of option: value, got {type(data).__name__}")
    return data


def _check_type(name: str, value: Any) -> Any:
    """Reject values of the wrong type early, with the option's name (YAML '1e-3' is a string!)."""
    default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else FIELDS[name].default_factory()
    kind = FIELDS[name].type
    if value is None:
        if "None" in str(kind):
            return None
        raise ValueError(f"option {name!r} cannot be empty")
    if name == "backbone_dropout":  # a probability, or the word keep
        if isinstance(value, str) and value != "keep":
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"option 'backbone_dropout' must be a probability or keep, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"option 'backbone_dropout' must be a probability or keep, got {value!r}")
        return value if value == "keep" else float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"option {name!r} must be true or false, got {value!r}")
    elif isinstance(default, int) or "int" in str(kind):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {name!r} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"option {name!r} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"option {name!r} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"option {name!r} must be a mapping, got {value!r}")
    elif name in ("compile", "fused_optimizer"):
        from fpt.fastpath import parse_tristate

        value = parse_tristate(value, name)
    elif name == "freeze":
        if not isinstance(value, (str, list)):
            raise ValueError(f"option 'freeze' must be a preset name or a list of groups, got {value!r}")
    elif isinstance(default, str) or "str" in str(kind):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"option {name!r} must be a string, got {value!r}")
        value = str(value)
    return value


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
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


def build_config(values: dict[str, Any], preset_keys: set[str] | frozenset = frozenset()) -> RunConfig:
    """A validated ``RunConfig`` from a flat mapping, with a message naming any unknown or ill-typed option.

    ``protocol: paper`` fills in the settings the mapping does not hold (``fpt.protocol.resolve``);
    ``preset_keys``: keys (``name`` / ``task_options.name``) that came from a shipped preset, which
    the protocol may override."""
    from fpt.protocol import resolve

    values = resolve({k.replace("-", "_"): v for k, v in values.items()}, preset_keys)
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in ("description", "reproduces", "expected"):  # documentation keys of preset files
            continue
        if name not in FIELDS:
            hint = f" Did you mean {_ALIASES[name]!r}?" if name in _ALIASES else suggest(name, FIELDS)
            raise ValueError(f"unknown option {key!r}.{hint} See `fpt fit --help`.")
        kwargs[name] = _check_type(name, value)
    return RunConfig(**kwargs).validate()


def save_config(config: RunConfig, path: Path) -> None:
    from fpt.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    return build_config(read_yaml(str(path)))


def is_shipped_preset(path_or_preset: str) -> bool:
    """True for a preset name (``fpt/presets/NAME.yaml``), False for a file of the user's."""
    return not Path(path_or_preset).exists() and (preset_dir() / f"{path_or_preset}.yaml").is_file()


def preset_keys(data: dict[str, Any]) -> set[str]:
    """The keys of a preset mapping, as ``fpt.protocol.resolve`` names them (``task_options.NAME`` too)."""
    keys = {k.replace("-", "_") for k in data}
    keys |= {f"task_options.{k}" for k in (data.get("task_options") or {})}
    return keys
