"""Which parameters train: ordered rules that put every parameter in one group, and presets of groups.

Groups (``GROUPS``):

* ``input``, ``positions``, ``output``: FPT's own input layer, learned position table and head
  (GPT-2's own position table ``wpe`` is also ``positions``);
* ``norm``, ``attention``, ``feedforward``, ``recurrent``: parts of the backbone, recognised by
  *module type* per architecture (never by substrings of parameter names: Pythia calls its
  attention ``attention``, Llama ``self_attn``);
* ``token_embedding``: the backbone's token table, which FPT never uses and never trains.

A parameter's group is the first rule, in order, that matches the module owning it or any module
above it. Every parameter must be matched: a parameter no rule claims is a hard error, and so is
an architecture with no rules (unless the user supplies them), because guessing would silently
train or freeze the wrong weights.

Presets (``PRESETS``) are the paper's ladder (Table 15) and its extensions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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
    "full": "everything but the unused token table (full finetuning / training from scratch)",
}


def _types(module_path: str, *names: str) -> tuple[type, ...]:
    module = importlib.import_module(module_path)
    return tuple(getattr(module, n) for n in names)


@dataclass(frozen=True)
class ArchitectureRules:
    """How to recognise the parts of one transformers architecture (keyed by ``config.model_type``)."""

    norm: Callable[[], tuple[type, ...]]
    attention: Callable[[], tuple[type, ...]]
    feedforward: Callable[[], tuple[type, ...]]
    positions: Callable[[], tuple[type, ...]] = lambda: ()  # learned position tables of the backbone itself

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
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def has_learned_positions(arch: str) -> bool:
    return arch in ARCHITECTURES and bool(ARCHITECTURES[arch].positions())


def _user_rules(user_rules: dict[str, Iterable[str]]) -> list[tuple[str, Callable[[nn.Module], bool]]]:
    """``{"norm": ["MyNorm"], "attention": ["MyAttn"], ...}``: module class names per group."""
    out = []
    for group, class_names in user_rules.items():
        if group not in GROUPS:
            raise ValueError(f"freeze rules: unknown group {group!r}; groups are {', '.join(GROUPS)}")
        names = {class_names} if isinstance(class_names, str) else set(class_names)
        out.append((group, lambda m, names=names: type(m).__name__ in names))
    return out


def group_rules(model: nn.Module, arch: str, user_rules: dict[str, Iterable[str]] | None = None):
    """The ordered rules for an FPT model (``model.input_layer``, ``.positions``, ``.head``, ``.backbone``)."""
    token_table = model.backbone.token_embedding()
    rules: list[tuple[str, Callable[[nn.Module], bool]]] = [
        ("input", lambda m: m is model.input_layer),
        ("output", lambda m: m is model.head),
        ("positions", lambda m: m is model.position_table),
        ("token_embedding", lambda m: token_table is not None and m is token_table),
    ]
    if user_rules:
        rules += _user_rules(user_rules)
    elif arch == "lstm":
        from fpt.backbones.lnlstm import LayerNormLSTMCell, LNLSTMLayerNorm

        # the layer-norm LSTM's norms first: they sit inside its cells, which are "recurrent"
        rules.append(("norm", lambda m: isinstance(m, LNLSTMLayerNorm)))
        rules.append(("recurrent", lambda m: isinstance(m, (nn.LSTM, LayerNormLSTMCell))))
    elif arch in ARCHITECTURES:
        for group, types in ARCHITECTURES[arch].rules():
            if types:
                rules.append((group, lambda m, types=types: isinstance(m, types)))
    else:
        raise ValueError(
            f"no freezing rules for architecture {arch!r}. Known: {', '.join(SUPPORTED_ARCHITECTURES)}. "
            "Give them in the config as freeze_rules: {norm: [ClassName], attention: [ClassName], "
            "feedforward: [ClassName]} (module class names of that architecture)."
        )
    return rules


def assign_groups(model: nn.Module, arch: str, user_rules=None) -> dict[str, str]:
    """``{parameter name: group}`` for every parameter of ``model``; unclaimed ones are an error."""
    rules = group_rules(model, arch, user_rules)
    groups: dict[str, str] = {}
    unclaimed = []

    def visit(module: nn.Module, prefix: str, ancestors: tuple[nn.Module, ...]):
        chain = ancestors + (module,)
        for pname, _ in module.named_parameters(recurse=False):
            full = prefix + pname
            for group, match in rules:
                if any(match(m) for m in chain):
                    groups[full] = group
                    break
            else:
                unclaimed.append(f"{full} (in {type(module).__name__})")
        for cname, child in module.named_children():
            visit(child, f"{prefix}{cname}.", chain)

    visit(model, "", ())
    if unclaimed:
        raise ValueError(
            f"freezing rules for {arch!r} do not cover {len(unclaimed)} parameters: {', '.join(unclaimed[:8])}"
            + (" ..." if len(unclaimed) > 8 else "")
            + ". Add their module class to freeze_rules in the config."
        )
    return groups


def resolve_preset(preset: str | Iterable[str]) -> tuple[str, ...]:
    """A preset name, or an explicit list of groups to train."""
    if isinstance(preset, str):
        if preset in PRESETS:
            return PRESETS[preset]
        from fpt.tasks.base import suggest

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
