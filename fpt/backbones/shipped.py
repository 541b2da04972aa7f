"""The paper's backbones' ``config.json`` files, shipped with fpt, and a fast check that the hub can be reached.

The paper's backbone is GPT-2 (base, and medium / large / XL for its model-size comparison); its
vision-pretrained initialisation is a ViT-B/16. Their architectures are fixed, so fpt ships the five
``config.json`` files (a few KB, package data in ``fpt/backbones/configs/<name>/``): ``--backbone gpt2
--init random`` (the paper's frozen random transformer) and ``--backbone google/vit-base-patch16-224
--init random`` build the architecture with nothing downloaded. The files hold the values
of the Hugging Face hub's ``openai-community/<name>/config.json``: ``gpt2-large`` and ``gpt2-xl``
as the hub's current files; ``gpt2-medium`` with the hub's architecture values (``n_embd`` 1024,
``n_layer`` 24, ``n_head`` 16, ``n_special`` 0, ``predict_special_tokens``) in the current files'
layout; ``gpt2`` as ``transformers.GPT2Config()``'s defaults, which are GPT-2 base's (a test
checks them); ``vit-base-patch16-224`` with the architecture values of the hub's
``google/vit-base-patch16-224/config.json`` (ImageNet-21k pretrained, ImageNet-1k fine-tuned at 224), which
are ``transformers.ViTConfig()``'s defaults (a test checks them; its 1,000 ImageNet labels are left out:
fpt never uses the classifier). Sources are listed in docs/paper-fidelity.md.

Order of use, for these five names: the hub's file when it is in the local Hugging Face cache,
else the hub when it can be reached, else the shipped file (said on stderr). Pretrained weights
cannot be shipped (0.5-6 GB): offline and not cached, :func:`require_weights` fails at once (not
after transformers' ~30 s of retries) with a message naming what to run instead.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from importlib import resources
from urllib.parse import urlparse

# short name -> the hub repository whose config.json it copies
SHIPPED = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
           "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
           "vit-base-patch16-224": "google/vit-base-patch16-224"}


class BackboneUnavailable(OSError):
    """A hub backbone that is neither cached nor downloadable here (offline)."""

    fpt_offline_backbone = True


def shipped_name(name: str) -> str | None:
    """``gpt2`` for ``gpt2`` or ``openai-community/gpt2`` (``vit-base-patch16-224`` for
    ``google/vit-base-patch16-224`` or the short name); None for any other name."""
    if name in SHIPPED:
        return name
    return next((short for short, repo in SHIPPED.items() if repo == name), None)


def shipped_config_dir(name: str):
    short = shipped_name(name)
    if short is None:
        raise KeyError(name)
    return resources.files("fpt") / "backbones" / "configs" / short


def _offline_env() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FPT_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when an offline variable is set or the hub's host does not answer within ``timeout`` s."""
    if _offline_env():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    """True when the hub must not be asked (an offline variable is set, or its host does not answer): loads
    then pass ``local_files_only=True``, so that a model that is not cached fails at once, not after
    transformers' ~30 s of retries."""
    return not hub_reachable()


def hub_cache() -> str:
    """The Hugging Face hub cache directory in use ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_revisions(repo: str) -> list[str]:
    """What the hub cache holds of a model: ``main -> 1a2b3c4``-style refs, then snapshots no ref names."""
    from pathlib import Path

    root = Path(hub_cache()) / ("models--" + repo.replace("/", "--"))
    refs = {}
    if (root / "refs").is_dir():
        refs = {p.name: p.read_text().strip() for p in sorted((root / "refs").iterdir()) if p.is_file()}
    snapshots = sorted(p.name for p in (root / "snapshots").iterdir()) if (root / "snapshots").is_dir() else []
    named = set(refs.values())
    return [f"{ref} -> {commit[:12]}" for ref, commit in refs.items()] + [s[:12] for s in snapshots if s not in named]


def _cached(repo: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    short = shipped_name(repo)
    for candidate in {repo} | ({short, SHIPPED[short]} if short else set()):
        try:
            found = try_to_load_from_cache(candidate, filename)
        except Exception:
            continue
        if isinstance(found, str):
            return True
    return False


def load_config(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The ``transformers`` config of ``name``; for the shipped names, the shipped file when the hub's is
    neither cached nor reachable. Other names go to ``AutoConfig.from_pretrained`` unchanged."""
    from transformers import AutoConfig

    short = shipped_name(name)
    if short is None or _cached(name, "config.json") or hub_reachable():
        local = os.path.isdir(name)
        pinned = {"revision": revision} if revision and not local else {}
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code,
                                          local_files_only=not local and offline(), **pinned)
    print(f"fpt: {name}: the hub is unreachable and its config.json is not cached; using fpt's shipped copy "
          f"({short}, the hub's architecture values)", file=sys.stderr, flush=True)
    return AutoConfig.from_pretrained(str(shipped_config_dir(short)))


def require_weights(name: str) -> None:
    """Fail at once when a shipped name's pretrained weights are neither cached nor downloadable."""
    short = shipped_name(name)
    if short is None or _cached(name, "model.safetensors") or hub_reachable():
        return
    instead = ("--init random (a frozen random ViT-B/16: fpt ships its config.json, nothing is downloaded)."
               if short.startswith("vit") else
               "--init random (the paper's frozen random transformer: fpt ships GPT-2's config.json, nothing is "
               "downloaded), or the offline SmolLM2 variant of a preset (fpt fit --config <preset>-smollm2, e.g. "
               "bit-xor-smollm2; SmolLM2-135M-Instruct, a 4-bit Q4_1 GGUF dequantised, not the paper's GPT-2).")
    raise BackboneUnavailable(
        f"cannot load pretrained {name!r}: its weights are not in the Hugging Face cache and the hub cannot be "
        "reached from here (offline). Either download them once on a machine with internet "
        f"(python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{SHIPPED[short]}')\", then copy "
        f"HF_HOME), or use {instead}")
