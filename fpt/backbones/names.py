"""Backbone names: the hub ids fpt knows, and the check that catches a typo before any download."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

HUB_EXAMPLES = ("gpt2", "gpt2-medium", "gpt2-large", "EleutherAI/pythia-160m", "HuggingFaceTB/SmolLM2-135M",
                "bert-base-uncased", "roberta-base", "google/vit-base-patch16-224")


# Hugging Face ids without an owner (the hub's old canonical models): a bare name outside this list that is
# close to one of them or to a builtin name is taken for a typo ("did you mean"); any owner/name is tried.
CANONICAL_HUB_NAMES = (
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt", "bert-base-uncased", "bert-base-cased",
    "bert-large-uncased", "bert-large-cased", "bert-base-multilingual-cased", "bert-base-multilingual-uncased",
    "roberta-base", "roberta-large", "distilroberta-base", "distilbert-base-uncased", "distilbert-base-cased",
    "albert-base-v2", "albert-large-v2", "xlnet-base-cased", "xlm-roberta-base", "xlm-roberta-large", "t5-small",
    "t5-base", "t5-large", "ctrl", "transfo-xl-wt103",
)


def check_backbone_name(name: str, builtin_names: Iterable[str]) -> None:
    """Refuse names that are neither builtin (``builtin_names``: the registry's built-in names), nor an existing path,
    nor a possible Hugging Face id (the registry calls this before the loaders of names it cannot vouch for)."""
    builtin_names = list(builtin_names)
    from fpt.base.text import suggest

    builtin = f"Builtin backbones: {', '.join(builtin_names)}; or a Hugging Face id (gpt2, owner/name) or a local directory."
    if Path(name).exists():
        return
    pathlike = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith(
        (".gguf", ".safetensors", ".bin", ".json", ".pt", ".ckpt"))
    if pathlike:
        raise FileNotFoundError(f"backbone {name!r}: no such file or directory.{suggest(name, builtin_names)} {builtin}")
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        raise ValueError(f"unknown backbone {name!r}: not a builtin name, a local path or a Hugging Face id."
                         f"{suggest(name, builtin_names)} {builtin}")
    if "/" not in name and name not in CANONICAL_HUB_NAMES:
        # A hub id without an owner is one of the hub's old canonical names; a bare name close to a name fpt
        # knows is a typo: say so now, not after the hub (or its ~30 s of retries offline) says "not found".
        close = suggest(name, [*builtin_names, *CANONICAL_HUB_NAMES])
        if close:
            raise ValueError(f"unknown backbone {name!r}: not a builtin name, a local path, or a Hugging Face id fpt "
                             f"knows.{close} {builtin}")
