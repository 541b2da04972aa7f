"""Which parameters train: ordered rules that put every parameter in one group, and presets of groups.

Groups (``GROUPS``):

* ``input``, ``positions``, ``output``: FPT's own input layer (and the summary token of the
  ``first`` read-out), learned position table and head; a backbone's own learned position table
  (GPT-2's ``wpe``, BERT's ``position_embeddings``, ViT's) is also ``positions``;
* ``norm``, ``attention``, ``feedforward``, ``recurrent``: parts of the backbone, recognised by
  *module type* per architecture (never by substrings of parameter names: Pythia calls its
  attention ``attention``, Llama ``self_attn``);
* ``token_embedding``: the backbone's token tables (the word table, and an encoder's token-type
  table), which FPT never trains.

A parameter's group is the first rule, in order, that matches the module owning it or any module
above it. Every parameter must be matched: a parameter no rule claims is a hard error, because
guessing would silently train or freeze the wrong weights. The rules of a family come from the
user's ``freeze_rules``, else its entry in ``ARCHITECTURES`` (the map), else the module tree
(``infer.py``, applied as the ``freeze_rules`` it prints); where inference finds the tree
ambiguous, the family is a hard error naming the part, until a map entry or ``freeze_rules`` say.

What ``--freeze fpt`` trains, per family (``ARCHITECTURES``):

* decoders (gpt2, llama, mistral, qwen2, gpt_neox): every norm; GPT-2's ``wpe``; for RoPE models
  FPT's own position table; FPT's input layer and head.
* BERT-style encoders (bert, roberta, electra, distilbert): every LayerNorm, *including the
  embedding LayerNorm*, and the learned position table (as GPT-2's ``wpe``), FPT's input layer and
  head. The word table is replaced by the input layer and never trains; the token-type table adds
  its row 0 to every token, frozen (``token_embedding``); the pooler is not built. ELECTRA's
  ``embeddings_project`` (embedding_size -> hidden_size, when they differ) is a pretrained dense
  map, grouped with ``feedforward`` (frozen under ``fpt``, trained by ``+ff`` and ``full``).
* DeBERTa-v2/v3: as BERT; its encoder's relative-position table (``rel_embeddings``) is part of
  attention (nothing to train, as rotary), and fpt adds its own position table when the model has
  no absolute one (v3).
* ViT, DeiT: every LayerNorm and ViT's position table (trainable as positions); the patch
  embedding (a convolution over pixels) is replaced by FPT's input layer and not kept, nor are the
  pooler and DeiT's distillation token; the CLS token is the initial value of the ``first``
  read-out's summary token (``fpt/backbones/encoders.py``).

Presets (``PRESETS``) are the paper's ladder (Table 15) and its extensions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from torch import nn

GROUPS = ("input", "positions", "output", "norm", "attention", "feedforward", "recurrent", "token_embedding")

_FPT = ("output", "norm", "input", "positions")
PRESETS: dict[str, tuple[str, ...]] = {
    "output-only": ("output",),
    "+ln": ("output", "norm"),
    "+input": ("output", "norm", "input"),
    "+pos": _FPT,
    "fpt": _FPT,  # the paper: input + output + layer norms + positions
    "+ff": _FPT + ("feedforward",),
    "+attn": _FPT + ("attention",),
    "full": ("output", "norm", "input", "positions", "attention", "feedforward", "recurrent"),
}
PRESET_HELP = {
    "output-only": "train only the output head (Table 15, first rung)",
    "+ln": "head + layer norms",
    "+input": "head + layer norms + input layer",
    "+pos": "head + layer norms + input layer + positions (= fpt)",
    "fpt": "the paper's FPT: input, output, layer norms, positions",
    "+ff": "fpt + feed-forward blocks",
    "+attn": "fpt + self-attention blocks",
    "full": "everything but the token tables (word, token-type) (full finetuning / training from scratch)",
}


def _types(module_path: str, *names: str) -> tuple[type, ...]:
    """The classes ``names`` of a module; names this transformers version lacks are skipped (class
    names move between versions: ViT's MLP is ``ViTMLP`` in 5.x, ``ViTIntermediate`` + ``ViTOutput`` in 4.x)."""
    module = importlib.import_module(module_path)
    found = tuple(getattr(module, n) for n in names if hasattr(module, n))
    if not found:
        raise ValueError(f"{module_path} has none of the classes {', '.join(names)}: this transformers version "
                         "is not one fpt's freezing rules know (pip install -U transformers)")
    return found


def _no_parts(model: nn.Module) -> dict[str, tuple[nn.Module, ...]]:
    return {}


@dataclass(frozen=True)
class ArchitectureRules:
    """Everything fpt needs to know about one architecture family (keyed by ``config.model_type``).

    Freezing (``norm``, ``attention``, ``feedforward``, ``positions``, ``parts``): how to recognise
    each part. Parts are matched by *module type*; ``parts`` names, by attribute, the few modules
    whose type says nothing (an ``nn.Embedding`` that is a token-type table, an ``nn.Linear`` between
    the embeddings and the blocks) and is matched first, by identity.

    Building and reading (``causal``, ``readout``, ``build_kwargs``, ``adapter``, ``max_positions``):
    whether the family sees the whole sequence (encoders), the read-out it gets in place of a
    task's default ``last``, extra arguments of its model class (no pooler), a wrapper for models
    that take no ``inputs_embeds`` (ViT takes pixels), and how many positions it accepts when
    ``config.max_position_embeddings`` does not say.
    """

    norm: Callable[[], tuple[type, ...]]
    attention: Callable[[], tuple[type, ...]]
    feedforward: Callable[[], tuple[type, ...]]
    positions: Callable[[], tuple[type, ...]] = lambda: ()  # learned position tables of the backbone itself
    parts: Callable[[nn.Module], dict[str, tuple[nn.Module, ...]]] = _no_parts  # {group: modules} by attribute
    causal: bool = True  # False: bidirectional (no causal mask); the 'first' read-out needs this
    readout: str | None = None  # read-out in place of a task's default 'last' (None: keep the task's)
    build_kwargs: tuple[tuple[str, object], ...] = ()  # extra keyword arguments of the model class
    adapter: str | None = None  # "module:function" wrapping a model that takes no inputs_embeds
    max_positions: Callable[[nn.Module], int | None] | None = None  # positions accepted (None: from the config)

    def rules(self) -> list[tuple[str, tuple[type, ...]]]:
        return [("norm", self.norm()), ("attention", self.attention()), ("feedforward", self.feedforward()),
                ("positions", self.positions())]


def _hf(model_type: str, prefix: str, norm: str | None = None, attention: str = "Attention", mlp: str = "MLP"):
    path = f"transformers.models.{model_type}.modeling_{model_type}"
    return ArchitectureRules(
        norm=(lambda: (nn.LayerNorm,)) if norm is None else (lambda: _types(path, prefix + norm)),
        attention=lambda: _types(path, prefix + attention),
        feedforward=lambda: _types(path, prefix + mlp),
    )


def _bert_like(model_type: str, prefix: str, pooler: bool = True) -> ArchitectureRules:
    """BERT, RoBERTa, ELECTRA: post-LN blocks of ``<P>Attention`` (self-attention + its output dense and
    LayerNorm) and ``<P>Intermediate`` + ``<P>Output`` (the feed-forward pair); embeddings = word table +
    learned positions + token types + LayerNorm (+ ELECTRA's projection when embedding_size != hidden_size)."""
    path = f"transformers.models.{model_type}.modeling_{model_type}"

    def parts(model: nn.Module) -> dict[str, tuple[nn.Module, ...]]:
        out: dict[str, tuple[nn.Module, ...]] = {"token_embedding": (model.embeddings.token_type_embeddings,)}
        project = getattr(model, "embeddings_project", None)  # ELECTRA-small: embedding_size -> hidden_size
        if project is not None:
            out["feedforward"] = (project,)  # a pretrained dense map like the blocks' MLPs: frozen under fpt
        return out

    return ArchitectureRules(
        norm=lambda: (nn.LayerNorm,),
        attention=lambda: _types(path, prefix + "Attention"),
        feedforward=lambda: _types(path, prefix + "Intermediate", prefix + "Output"),
        positions=lambda: (nn.Embedding,),  # the word and token-type tables are claimed before, by identity
        parts=parts,
        causal=False,
        readout="mean",
        build_kwargs=(("add_pooling_layer", False),) if pooler else (),
    )


def _vit_like(model_type: str, prefix: str) -> ArchitectureRules:
    """ViT, DeiT: pre-LN blocks of ``<P>Attention`` and ``<P>MLP``; the patch embedding is replaced by
    FPT's input layer (``fpt/backbones/encoders.py`` feeds the blocks with ``inputs_embeds``)."""
    path = f"transformers.models.{model_type}.modeling_{model_type}"
    return ArchitectureRules(
        norm=lambda: (nn.LayerNorm,),
        attention=lambda: _types(path, prefix + "Attention"),
        feedforward=lambda: _types(path, prefix + "MLP", prefix + "Intermediate", prefix + "Output"),
        positions=lambda: (nn.Embedding,),  # the encoder wrapper's position table (ViT's, CLS row first)
        causal=False,
        readout="first",
        build_kwargs=(("add_pooling_layer", False),),
        adapter="fpt.backbones.encoders:ViTOnEmbeddings",
        max_positions=lambda model: model.position_embeddings.num_embeddings,
    )


def _deberta_v2_parts(model: nn.Module) -> dict[str, tuple[nn.Module, ...]]:
    """DeBERTa-v2/v3: the encoder's ``rel_embeddings`` is a relative-position table that every block's
    disentangled attention projects through its own query/key maps: part of attention (nothing to train
    under fpt, as rotary and ALiBi); it has as many rows as the learned absolute table BERT would have,
    so inference could not tell them apart. Token types (only with type_vocab_size > 0) stay frozen;
    ``embed_proj`` (embedding_size != hidden_size) is a pretrained dense map, grouped with feed-forward."""
    embeddings, out = model.embeddings, {}
    if getattr(embeddings, "token_type_embeddings", None) is not None:
        out["token_embedding"] = (embeddings.token_type_embeddings,)
    if getattr(model.encoder, "rel_embeddings", None) is not None:
        out["attention"] = (model.encoder.rel_embeddings,)
    if getattr(embeddings, "embed_proj", None) is not None:
        out["feedforward"] = (embeddings.embed_proj,)
    return out


ARCHITECTURES: dict[str, ArchitectureRules] = {
    "gpt2": ArchitectureRules(
        norm=lambda: (nn.LayerNorm,),
        attention=lambda: _types("transformers.models.gpt2.modeling_gpt2", "GPT2Attention"),
        feedforward=lambda: _types("transformers.models.gpt2.modeling_gpt2", "GPT2MLP"),
        # GPT-2 adds its own learned table (wpe); the token table is claimed earlier by identity.
        positions=lambda: (nn.Embedding,),
    ),
    "llama": _hf("llama", "Llama", norm="RMSNorm"),
    "mistral": _hf("mistral", "Mistral", norm="RMSNorm"),
    "qwen2": _hf("qwen2", "Qwen2", norm="RMSNorm"),
    "gpt_neox": _hf("gpt_neox", "GPTNeoX"),
    "lstm": ArchitectureRules(norm=lambda: (nn.LayerNorm,), attention=lambda: (), feedforward=lambda: ()),
    # -- encoders (bidirectional) ------------------------------------------------------------
    "bert": _bert_like("bert", "Bert"),
    # RoBERTa numbers positions from padding_idx + 1: the first rows of its table are never used.
    "roberta": replace(_bert_like("roberta", "Roberta"), max_positions=lambda model: (
        model.config.max_position_embeddings - model.config.pad_token_id - 1)),
    "electra": _bert_like("electra", "Electra", pooler=False),
    "distilbert": ArchitectureRules(  # no token types, no pooler; blocks of self-attention and an FFN
        norm=lambda: (nn.LayerNorm,),
        attention=lambda: _types("transformers.models.distilbert.modeling_distilbert",
                                 "DistilBertSelfAttention", "MultiHeadSelfAttention"),
        feedforward=lambda: _types("transformers.models.distilbert.modeling_distilbert", "FFN"),
        positions=lambda: (nn.Embedding,),
        causal=False,
        readout="mean",
    ),
    "deberta-v2": ArchitectureRules(
        norm=lambda: (nn.LayerNorm,),
        attention=lambda: _types("transformers.models.deberta_v2.modeling_deberta_v2", "DebertaV2Attention"),
        feedforward=lambda: _types("transformers.models.deberta_v2.modeling_deberta_v2", "DebertaV2Intermediate",
                                   "DebertaV2Output"),
        positions=lambda: (nn.Embedding,),  # the absolute table, only with position_biased_input (v2; not v3)
        parts=_deberta_v2_parts,
        causal=False,
        readout="mean",
    ),
    "vit": _vit_like("vit", "ViT"),
    "deit": _vit_like("deit", "DeiT"),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
ENCODER_ARCHITECTURES = tuple(arch for arch, rules in ARCHITECTURES.items() if not rules.causal)


def has_learned_positions(arch: str, model: nn.Module | None = None) -> bool:
    """Whether a mapped family adds a learned position table of its own; with ``model``, whether this
    model has one (DeBERTa-v3 has none: its positions are relative)."""
    if arch not in ARCHITECTURES or not ARCHITECTURES[arch].positions():
        return False
    if model is None:
        return True
    rules = ARCHITECTURES[arch]
    types = rules.positions()
    table = model.get_input_embeddings()
    parts = {id(m) for modules in rules.parts(model).values() for m in modules}
    return any(isinstance(m, types) and m is not table and id(m) not in parts for m in model.modules())


def _user_rules(user_rules: dict[str, Iterable[str]], model: nn.Module) -> list[tuple[str, Callable[[nn.Module], bool]]]:
    """``{"norm": ["MyNorm"], "attention": ["MyAttn"], ...}``: per group, module class names, or module paths
    (``embeddings.token_type_embeddings``: a module whose dotted name ends so) for generic classes (Embedding)."""
    paths = {id(m): name for name, m in model.named_modules()}
    out = []
    for group, names in user_rules.items():
        if group not in GROUPS:
            from fpt.base.text import suggest

            raise ValueError(f"freeze_rules: unknown group {group!r}.{suggest(group, GROUPS)} Groups: {', '.join(GROUPS)}")
        names = {names} if isinstance(names, str) else set(names)

        def match(m, names=names):
            path = paths.get(id(m), "")
            return type(m).__name__ in names or any(path == n or path.endswith("." + n) for n in names)

        out.append((group, match))
    return out


# Module classes that many architectures share: a rule must name such a module by its path instead.
_GENERIC = ("Embedding", "Linear", "LayerNorm", "Conv1d", "Conv2d", "Conv1D", "Dropout", "Module", "Parameter")
# Words in a class name or module path -> the group a user most likely means (only for the suggestion in the
# error message; freezing itself never looks at names).
_GROUP_HINTS = (("position", "positions"), ("pos_emb", "positions"), ("token_type", "token_embedding"),
                ("segment", "token_embedding"), ("norm", "norm"), ("ln_", "norm"), ("attn", "attention"),
                ("attention", "attention"), ("mlp", "feedforward"), ("ffn", "feedforward"), ("feedforward", "feedforward"),
                ("feed_forward", "feedforward"), ("intermediate", "feedforward"), ("pooler", "feedforward"),
                ("dense", "feedforward"), ("proj", "feedforward"))


def suggested_rules(model: nn.Module, unclaimed: list[tuple[str, nn.Module]]) -> str:
    """``positions: [OPTLearnedPositionalEmbedding], token_embedding: [embeddings.token_type_embeddings]``:
    a freeze_rules entry per unclaimed module, by class name (its dotted path for a generic class)."""
    paths = {id(m): name for name, m in model.named_modules()}
    by_group: dict[str, list[str]] = {}
    for _, module in unclaimed:
        cls = type(module).__name__
        path = paths.get(id(module), "")
        key = ".".join(path.split(".")[-2:]) if cls in _GENERIC else cls
        words = f"{cls} {path}".lower()
        group = next((g for word, g in _GROUP_HINTS if word in words), "GROUP")
        entries = by_group.setdefault(group, [])
        if key not in entries:
            entries.append(key)
    return ", ".join(f"{g}: [{', '.join(v)}]" for g, v in by_group.items())


def rules_source(model: nn.Module, arch: str, user_rules=None, use_map: bool = True) -> str:
    """Where the freezing rules of an FPT model come from: ``freeze_rules`` (the config's), ``map``
    (``ARCHITECTURES``), ``inferred`` (read from the module tree, ``infer.py``) or ``lstm``."""
    if user_rules:
        return "freeze_rules"
    if arch == "lstm":
        return "lstm"
    return "map" if use_map and arch in ARCHITECTURES else "inferred"


def group_rules(model: nn.Module, arch: str, user_rules: dict[str, Iterable[str]] | None = None,
                use_map: bool = True):
    """The ordered rules for an FPT model (``model.input_layer``, ``.positions``, ``.head``, ``.backbone``).

    Without ``user_rules``: the map's entry for ``arch``, else the rules inferred from the backbone's
    module tree (``model.backbone.inferred_rules``; ``use_map=False`` uses them for a mapped family too)."""
    token_table = model.backbone.token_embedding()
    summary = getattr(model, "summary_token", None)  # the 'first' read-out's trained vector: an input
    rules: list[tuple[str, Callable[[nn.Module], bool]]] = [
        ("input", lambda m: m is model.input_layer or (summary is not None and m is summary)),
        ("output", lambda m: m is model.head),
        ("positions", lambda m: m is model.position_table),
        ("token_embedding", lambda m: token_table is not None and m is token_table),
    ]
    known = ARCHITECTURES.get(arch) if use_map else None
    if known is not None and arch != "lstm":
        for group, modules in known.parts(model.backbone.model).items():
            ids = {id(m) for m in modules}
            rules.append((group, lambda m, ids=ids: id(m) in ids))
    if user_rules:
        rules += _user_rules(user_rules, model)
    elif arch == "lstm":
        from fpt.backbones.lnlstm import LayerNormLSTMCell, LNLSTMLayerNorm

        # the layer-norm LSTM's norms first: they sit inside its cells, which are "recurrent"
        rules.append(("norm", lambda m: isinstance(m, LNLSTMLayerNorm)))
        rules.append(("recurrent", lambda m: isinstance(m, (nn.LSTM, LayerNormLSTMCell))))
    elif known is not None:
        for group, types in known.rules():
            if types:
                rules.append((group, lambda m, types=types: isinstance(m, types)))
    elif getattr(model.backbone, "inferred_rules", None) is not None:
        rules += _user_rules(model.backbone.inferred_rules.rules, model)
    else:
        why = getattr(model.backbone, "inference_error", None)
        raise ValueError(
            f"no freezing rules for architecture {arch!r}"
            + (f": fpt could not read them from the model ({why})" if why else "")
            + f". Families with explicit rules: {', '.join(SUPPORTED_ARCHITECTURES)}. "
            "Give them in the config as freeze_rules: {norm: [ClassName], attention: [ClassName], "
            "feedforward: [ClassName]} (module class names of that architecture; this model's: "
            + ", ".join(sorted({type(m).__name__ for m in model.backbone.model.modules()
                                if any(True for _ in m.parameters())} - {"ModuleList", "Sequential", "ModuleDict"}))
            + ")."
        )
    return rules


def assign_groups(model: nn.Module, arch: str, user_rules=None, use_map: bool = True) -> dict[str, str]:
    """``{parameter name: group}`` for every parameter of ``model``; unclaimed ones are an error. A
    parameter shared by two modules (T5's token table, tied) is grouped once, where it is first reached."""
    rules = group_rules(model, arch, user_rules, use_map=use_map)
    groups: dict[str, str] = {}
    unclaimed = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str, ancestors: tuple[nn.Module, ...]):
        chain = ancestors + (module,)
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = prefix + pname
            for group, match in rules:
                if any(match(m) for m in chain):
                    groups[full] = group
                    break
            else:
                unclaimed.append((f"{full} (in {type(module).__name__})", module))
        for cname, child in module.named_children():
            visit(child, f"{prefix}{cname}.", chain)

    visit(model, "", ())
    if unclaimed:
        names = [text for text, _ in unclaimed]
        raise ValueError(
            f"freezing rules for {arch!r} do not cover {len(unclaimed)} parameters: {', '.join(names[:8])}"
            + (" ..." if len(unclaimed) > 8 else "")
            + f". Add a rule for them to freeze_rules in the config, e.g. {{{suggested_rules(model, unclaimed)}}} "
            "beside your other groups (a rule names module classes, or module paths such as "
            "embeddings.token_type_embeddings for generic classes like Embedding; groups: "
            f"{', '.join(g for g in GROUPS if g not in ('input', 'output'))}; a pooler FPT does not use can go "
            "to feedforward, frozen under fpt)."
        )
    return groups


def resolve_preset(preset: str | Iterable[str]) -> tuple[str, ...]:
    """A preset name, or an explicit list of groups to train."""
    if isinstance(preset, str):
        if preset in PRESETS:
            return PRESETS[preset]
        from fpt.base.text import suggest

        raise ValueError(f"unknown freeze preset {preset!r}.{suggest(preset, PRESETS)} Presets: {', '.join(PRESETS)}.")
    groups = tuple(preset)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown parameter groups {bad}; groups are {', '.join(GROUPS)}")
    if "token_embedding" in groups:
        raise ValueError("the token embedding table is unused by FPT and never trained")
    return groups


def apply_freeze(model: nn.Module, arch: str, preset: str | Iterable[str], user_rules=None) -> dict[str, dict[str, int]]:
    """Set ``requires_grad`` from the preset; returns per-group ``{"trainable": n, "total": n}`` counts."""
    trained = set(resolve_preset(preset))
    groups = assign_groups(model, arch, user_rules)
    counts: dict[str, dict[str, int]] = {}
    params = dict(model.named_parameters())
    for name, group in groups.items():
        p = params[name]
        p.requires_grad_(group in trained)
        c = counts.setdefault(group, {"trainable": 0, "total": 0})
        c["total"] += p.numel()
        c["trainable"] += p.numel() if group in trained else 0
    return counts
