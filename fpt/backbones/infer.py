"""Freezing rules read from the model, for a family without an entry in ``freeze.ARCHITECTURES``.

The groups come from the module tree, by module *type and structure*, never from parameter names:

* ``norm``: every module whose own parameters are a weight vector and maybe a bias vector (1-D), with
  no parameters below it: LayerNorm, RMSNorm and their per-family copies (``T5LayerNorm``...);
* ``attention``: each block's attention module, the outermost module whose class is named
  ``*Attention`` (Hugging Face's convention: ``OPTAttention``, ``T5LayerSelfAttention``,
  ``DisentangledSelfAttention``...), and an ``nn.Embedding`` with one column per attention head outside
  them (a learned relative-position bias shared by the blocks, as MPNet's);
* ``feedforward``: the outermost ``*MLP``, ``*Intermediate`` / ``*Output``, ``*FeedForward``,
  ``*FFN``, ``*DenseActDense``... modules, *the rest of each block* (what a block holds besides its
  norms, attention and named feed-forward: OPT's ``fc1``/``fc2``, ALBERT's ``ffn``, DINOv2's layer
  scales), and the dense maps between the embeddings and the blocks (ALBERT's
  ``embedding_hidden_mapping_in``, Swin's patch merging): pretrained weights, frozen under ``fpt``;
* ``positions``: an ``nn.Embedding`` beside the token table (the embeddings level) with at least as
  many rows as the model has positions (GPT-Neo's ``wpe``, OPT's learned positions);
* ``token_embedding``: an ``nn.Embedding`` beside the token table with ``config.type_vocab_size`` rows
  (a token-type table: frozen, as BERT's).

A block is an element of an ``nn.ModuleList`` of same-class modules that hold an attention module
(the innermost such list: Swin's ``blocks`` within its stages). Anything else (a bare parameter
outside the blocks, an embedding table that fits none of the above) is ambiguous: inference stops
and names it, and the family needs an explicit entry in the map or ``freeze_rules`` in the config.

The result is written as the ``freeze_rules`` a user could put in a config (module class names, or
module paths for generic classes such as ``Embedding`` and ``Linear``) and applied through exactly
that path, so what is printed is what freezes. The ordered-rules guard of ``freeze.assign_groups``
stays the judge: every parameter claimed by exactly one rule, or a hard error naming the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

# Class-name endings of feed-forward modules across Hugging Face families.
FEEDFORWARD_SUFFIXES = ("MLP", "Mlp", "Intermediate", "Output", "FeedForward", "FFN", "DenseActDense",
                        "DenseGatedActDense", "LayerFF")
ATTENTION_SUFFIX = "Attention"
# Modules many families share: a rule names such a module by its path, never by its class.
GENERIC_TYPES = (nn.Embedding, nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm)
DENSE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
RULE_ORDER = ("norm", "attention", "feedforward", "positions", "token_embedding")


class InferenceError(ValueError):
    """The module tree does not say unambiguously which group a part belongs to."""


@dataclass
class InferredRules:
    """What inference found: ``rules`` in ``freeze_rules`` form, and the position tables (paths)."""

    rules: dict[str, list[str]]
    positions: list[str] = field(default_factory=list)  # paths of the learned position tables found

    def yaml(self) -> str:
        """The ``freeze_rules:`` block a user could write in a config to get the same groups."""
        lines = ["freeze_rules:"]
        for group, names in self.rules.items():
            lines.append(f"  {group}: [{', '.join(names)}]")
        return "\n".join(lines)


def _own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(module.named_parameters(recurse=False))


def is_norm(module: nn.Module) -> bool:
    """A weight vector and maybe a bias vector, nothing below: LayerNorm / RMSNorm-like, whatever its class."""
    own = dict(_own_params(module))
    if "weight" not in own or not set(own) <= {"weight", "bias"} or any(p.dim() != 1 for p in own.values()):
        return False
    return not any(True for child in module.children() for _ in child.parameters())


def _is_attention(module: nn.Module) -> bool:
    return type(module).__name__.endswith(ATTENTION_SUFFIX)


def _is_feedforward(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith(FEEDFORWARD_SUFFIXES) and not isinstance(module, GENERIC_TYPES)


def _heads(config) -> int | None:
    for attr in ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            return None  # per-stage head counts (Swin): no single width to recognise a bias table by
    return None


def config_max_positions(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _outermost(paths: dict[str, nn.Module], test) -> dict[str, nn.Module]:
    """Modules passing ``test`` that have no ancestor passing it, by path."""
    hits = {p: m for p, m in paths.items() if test(m)}
    return {p: m for p, m in hits.items() if not any(p.startswith(q + ".") for q in hits if q != p)}


def _blocks(model: nn.Module, attention: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Elements of the innermost ModuleLists of same-class modules that hold attention modules."""
    lists = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            prefix = f"{path}." if path else ""
            elements = {f"{prefix}{i}": m for i, m in enumerate(module)}
            if all(any(a.startswith(e + ".") for a in attention) for e in elements):
                lists[path] = elements
    innermost = {p: e for p, e in lists.items()
                 if not any(q != p and q.startswith((p + ".") if p else "") for q in lists)}
    return {path: m for elements in innermost.values() for path, m in elements.items()}


def _rule_name(path: str, module: nn.Module) -> str:
    """A module's class name, or its path for a generic class (``Embedding``, ``Linear``...)."""
    return path if type(module) in GENERIC_TYPES else type(module).__name__


def infer_freeze_rules(model: nn.Module, config) -> InferredRules:
    """The ``freeze_rules`` of a backbone's model, read from its module tree (module docstring)."""
    paths = dict(model.named_modules())
    paths.pop("", None)
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    table_weight = getattr(table, "weight", None)

    def under(path: str, roots) -> bool:
        return any(path == r or path.startswith(r + ".") for r in roots)

    # The token table and any module tied to it (T5's encoder.embed_tokens shares shared.weight).
    token_paths = {p for p, m in paths.items()
                   if m is table or (table_weight is not None and getattr(m, "weight", None) is table_weight)}
    norms = {p: m for p, m in paths.items() if is_norm(m)}
    attention = _outermost({p: m for p, m in paths.items() if p not in token_paths}, _is_attention)
    feedforward = _outermost({p: m for p, m in paths.items() if not under(p, attention)}, _is_feedforward)
    blocks = _blocks(model, attention)

    rules: dict[str, list[str]] = {g: [] for g in RULE_ORDER}

    def add(group: str, name: str) -> None:
        if name not in rules[group]:
            rules[group].append(name)

    for module in norms.values():
        add("norm", type(module).__name__)  # every module of a norm's class is a norm (its structure says so)
    for path, module in attention.items():
        add("attention", _rule_name(path, module))
    for path, module in feedforward.items():
        add("feedforward", _rule_name(path, module))

    claimed = set(norms) | set(attention) | set(feedforward) | token_paths
    # The embeddings level: the token table's parent (the model itself when it has no token table: ViT).
    first_token = min(token_paths, key=len) if token_paths else None
    level = first_token.rpartition(".")[0] if first_token else ""
    positions: list[str] = []
    type_rows = getattr(config, "type_vocab_size", None)
    max_positions = config_max_positions(config)
    heads = _heads(config)
    ambiguous: list[str] = []
    for path, module in paths.items():
        own = _own_params(module)
        if not own or under(path, claimed):
            continue
        in_block = next((b for b in blocks if path.startswith(b + ".")), None)
        if isinstance(module, nn.Embedding) and not under(path, blocks):
            beside = path.rpartition(".")[0] == level
            if beside and type_rows is not None and module.num_embeddings == type_rows and \
                    module.num_embeddings != max_positions:
                add("token_embedding", _rule_name(path, module))
            elif beside and (max_positions is None or module.num_embeddings >= max_positions):
                add("positions", _rule_name(path, module))
                positions.append(path)
            elif heads is not None and module.embedding_dim == heads:
                add("attention", _rule_name(path, module))  # a per-head relative-position bias
            else:
                ambiguous.append(f"{path} ({type(module).__name__} {module.num_embeddings}x{module.embedding_dim})")
            claimed.add(path)
        elif in_block is not None:
            add("feedforward", type(blocks[in_block]).__name__)  # the rest of the block
        elif in_block is None and path in blocks:
            add("feedforward", type(module).__name__)  # a parameter of the block module itself (BEiT's lambda_1)
        elif isinstance(module, DENSE_TYPES) or type(module).__name__ == "Conv1D":
            # a dense map between the embeddings and the blocks, or between stages (Swin's patch merging:
            # named by its module's class, which holds only it and norms, so that one rule covers every stage)
            parent_path = path.rpartition(".")[0]
            parent = paths.get(parent_path)
            merging = parent is not None and not _own_params(parent) and not isinstance(parent, GENERIC_TYPES) and all(
                child is module or is_norm(child) or not any(True for _ in child.parameters())
                for child in parent.children())
            add("feedforward", type(parent).__name__ if merging else _rule_name(path, module))
            claimed.add(path)
        else:
            ambiguous.append(f"{path} ({type(module).__name__}: {', '.join(n for n, _ in own)})")
    if ambiguous:
        raise InferenceError(
            f"the module tree does not say which group {len(ambiguous)} part(s) belong to: {'; '.join(ambiguous[:6])}"
        )
    return InferredRules({g: names for g, names in rules.items() if names}, positions)
