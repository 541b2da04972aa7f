"""RunConfig: every option of a run, declared once with its role, default, help and bounds (fpt.base.options).

The flags, YAML keys, checks, ``--help``, docs/options.md and ``--resume``'s rules all come from these
declarations (docs/architecture.md, "Add an option")."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from fpt.base.options import SEEDS, at_least, between, coerce_field, declared, how, probability_or_keep, what, when

# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT; tests/test_training.py checks
# that they match), and auto. Declared here so that a typo is refused before anything is built.
Tristate = Union[Literal["auto"], bool]  # auto | true | false
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


@dataclass
class RunConfig:
    """Every option of a run. Each field is declared once, with its help text and its role (what the
    run is / how it runs / when it stops and is checked; :mod:`fpt.base.options`): the ``fpt fit`` flags,
    the YAML keys, ``--resume``'s rules, the sweep's comparison and the option tables (docs/options.md,
    the README's main options) come from here. Adding an option: docs/architecture.md."""

    # -- what to train ---------------------------------------------------------------------------
    protocol: str = what("fpt", "fpt (fpt's corrected protocol) or paper (the 2021 code's behaviour wherever it differs: "
                         "fpt/config/protocols.py, docs/paper-fidelity.md); explicit options still win", choices=("fpt", "paper"))
    task: str = what("bit-xor", "a registered task (fpt list)")
    task_options: dict[str, Any] = what(dict, "the task's own options, e.g. {n_bits: 5} (on the command line: -o KEY=VALUE)",
                                        flag=False)
    data_dir: str | None = what(None, "directory holding the task's dataset files (else $FPT_DATA_DIR, then the cache)")
    backbone: str = what("smollm2-135m", "smollm2-135m (offline default), minilm-l6 (offline encoder), lstm, a Hugging "
                         "Face id (gpt2, EleutherAI/pythia-160m, bert-base-uncased), a local directory, a .gguf file, or "
                         "run:RUN_DIR (a finished run's trained backbone); fpt list shows them")
    init: str = what("pretrained", "pretrained, random (same architecture, seeded random weights), or statistics "
                     "(each pretrained weight tensor redrawn from a normal with its mean and std, seeded)",
                     choices=("pretrained", "random", "statistics"))
    layers: int | None = what(None, "keep only the first K blocks (default: all); 0: no transformer block (the input "
                              "layer's tokens go through the backbone's embedding stage and final norm to the head: "
                              "Tan et al. 2024's 'w/o LLM' ablation)", bounds=at_least(0))
    lstm_width: int = what(768, "hidden size of the lstm backbone (paper: 768)", bounds=between(1, 65536))
    lstm_kind: str = what("torch", "the lstm backbone: torch (nn.LSTM, fused kernels) or layernorm (the 2021 code's "
                          "layer-norm LSTM; its norms train under fpt)", choices=("torch", "layernorm"))
    lstm_residual: bool = what(False, "layernorm lstm: add each layer's input to its output (the 2021 LNLSTM's "
                               "residual=True; the paper's LSTM ablation)")
    lstm_positions: bool = what(False, "lstm: add a trained position table to its inputs (the 2021 code's "
                                "commented-out lstm_pos_embed; the paper's LSTM ablation)")
    backbone_dropout: float | str = what(0.0, "dropout inside the backbone: a probability (0: off), or keep (the "
                                         "backbone's own; GPT-2: 0.1, as the 2021 code)", convert=probability_or_keep,
                                         expected="a probability in [0, 1) or keep")
    trust_remote_code: bool = what(False, "run Python code shipped with a hub model (never by default)")
    backbone_revision: str | None = what(None, "a Hugging Face backbone's pinned revision: a commit hash (or branch, "
                                         "tag), read from the hub cache's snapshots/<hash> offline (default: main)",
                                         max_length=200)
    position_rows: int | None = what(None, "grow GPT-2's learned position table to this many rows (default: the model's "
                                     "1024), so longer sequences feed whole (LRA ListOps: up to ~2000 tokens): the "
                                     "model's rows are kept, new rows start N(0, the table's std), seeded; all train as "
                                     "positions under fpt (fpt/backbones/positions.py)", bounds=at_least(2))
    # -- the FPT module (fpt.model.ModelConfig) ---------------------------------------------------
    freeze: str | list[str] = what("fpt", "what trains: a preset (fpt, output-only, +ln, +input, +pos, +ff, +attn, full) "
                                   "or, in YAML, a list of groups", expected="a preset name or a list of groups")
    freeze_rules: dict[str, list[str]] | None = what(None, "module class names per group (norm, attention, feedforward), "
                                                     "for architectures fpt does not know", flag=False)
    readout: str | None = what(None, "last, mean, first (a trained summary token prepended; encoders), tokens or "
                               "flatten (every token into one linear layer: GPT4TS's forecasting head) (default: the "
                               "task's; an encoder replaces its 'last' by its family's: mean for BERT-style, first for "
                               "ViT)", choices=("last", "mean", "first", "tokens", "flatten"))
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
    precision: str = how("auto", "auto (bf16-mixed on CUDA and on a CPU with AMX-BF16 or AVX512-BF16, else 32-true; "
                         "under bf16 the frozen weights are stored in bf16), or a Lightning precision (32-true, "
                         "bf16-mixed, 16-mixed...)", choices=PRECISIONS)
    num_workers: int = how(0, "DataLoader worker processes", bounds=at_least(0))
    attn_implementation: str = how("auto", "auto (eager on a CPU's bf16 path up to 256 tokens, else sdpa), sdpa "
                                   "(fused kernels) or eager (needed to read attention weights)",
                                   choices=("auto", "sdpa", "eager"))
    # -- speed (fpt/model/fastpath.py; `fpt bench` measures them) --------------------------------------------
    compile: Tristate = how("auto", "torch.compile the backbone in place: auto (on CUDA), true or false")
    fused_optimizer: Tristate = how("auto", "fused Adam/AdamW with on-device skipping of non-finite steps (no host "
                                    "sync per step): auto (on CUDA), true or false")
    num_threads: int | None = how(None, "CPU intra-op threads (default: $OMP_NUM_THREADS, else the physical cores / "
                                  "processes; a single process follows the cores other processes leave free, "
                                  "docs/performance.md); also --threads, as fpt sweep spells it",
                                  bounds=at_least(1), aliases=("--threads",))
    cache_features: bool = what(False, "with --freeze output-only: run the frozen network once per sample and train "
                                "the head on its cached outputs (fpt/model/features.py)")
    cache_train_samples: int = what(0, "with --cache-features on a generated task: training samples to cache (0: steps "
                                    "x batch size, the samples an uncached run draws; fewer make the training set finite)",
                                    bounds=at_least(0))
    cache_memory_mb: int = how(2048, "with --cache-features: larger caches go to RUN_DIR/features (memory-mapped)",
                               bounds=at_least(0))
    run_dir: str | None = how(None, "where the run writes everything (default: runs/<task>[-<data>]-<backbone>[-L<layers>]-"
                              "<init>-<freeze>[-<protocol>]-s<seed>; <data>: the task's name or path option)")
    label: str = what("", "free text shown in reports, e.g. \"-small: 2 layers, 2k steps\"", max_length=500)

    def validate(self) -> "RunConfig":
        """Every field as declared (type, bounds, choices, length: :func:`fpt.base.options.coerce_field`), then the
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
        """``runs/<task>[-<data>]-<backbone>[-L<layers>]-<init>-<freeze>[-<protocol>]-s<seed>``: ``<data>`` is the
        task's ``name`` or ``path`` option (a time-series problem, your .npz), ``<protocol>`` shown unless fpt's.
        Runs whose other options differ share it: ``fpt fit`` then refuses with the ``--run-dir`` to use."""
        name = Path(self.backbone).name if Path(self.backbone).exists() else self.backbone.replace("/", "_")
        freeze = self.freeze if isinstance(self.freeze, str) else "+".join(self.freeze)
        layers = f"-L{self.layers}" if self.layers else ""
        options = self.task_options or {}
        data = options.get("name") or (Path(str(options["path"])).stem.split("_TRAIN")[0] if options.get("path") else "")
        data = f"-{re.sub(r'[^A-Za-z0-9._+=-]', '_', str(data))}" if data else ""
        protocol = f"-{self.protocol}" if self.protocol != "fpt" else ""
        return str(Path("runs") / f"{self.task}{data}-{name}{layers}-{self.init}-{freeze}{protocol}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = declared(RunConfig)


def flag_of(f: dataclasses.Field) -> str | None:
    """The command-line flag of a declared option (``--eval-batch-size``), or None for a YAML-only one."""
    return "--" + f.name.replace("_", "-") if f.metadata.get("flag", True) else None


def argument_type(name: str):
    """An argparse ``type=`` that reads a flag as option ``name`` is declared (its type and bounds), so that a flag of
    another command (``fpt sweep --threads``) accepts exactly what ``fpt fit``'s does."""
    import argparse

    from fpt.base.options import parse_text

    f = FIELDS[name]

    def parse(text: str) -> Any:
        try:
            return coerce_field(parse_text(text), f, flag=flag_of(f))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def role(name: str) -> str:
    """``what``, ``how`` or ``when`` (see :mod:`fpt.base.options`)."""
    return FIELDS[name].metadata["role"]


def options_with_role(*roles: str) -> set[str]:
    return {name for name, f in FIELDS.items() if f.metadata["role"] in roles}


# Options that only say how a run executes: sweeps ignore them when comparing a trial with its directory.
MACHINERY = frozenset(options_with_role("how"))


# Options whose value may change when a run is resumed: how it runs, and how long / when it is checked.
RESUMABLE = frozenset(options_with_role("how", "when"))
