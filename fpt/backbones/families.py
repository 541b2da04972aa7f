"""Per-family building of a Hugging Face model as a frozen engine: which class, which attention
implementation, how fpt's input enters it, how many positions it takes, what the read-out reads.

* **Class**: ``AutoModel``'s base model; for an encoder-decoder (T5, mT5, UMT5) its encoder half
  (``T5EncoderModel``: the decoder is never built nor loaded). An encoder-decoder without such a class
  (BART...) is refused with the reason.
* **Attention**: the implementation asked for (``sdpa`` by default) where the class has it, else
  ``eager`` (BLOOM, GPT-Neo, DeBERTa-v2, MPNet, Gemma-2...), said once per family on the console and
  recorded in the backbone (``results.json``: ``backbone_build``).
* **Input**: decoders and encoders take ``inputs_embeds``. Vision transformers take pixels, so an
  adapter (``fpt/backbones/encoders.py``) replaces the patch embedding by fpt's input layer: ViT,
  DeiT, DINOv2, BEiT feed their blocks any sequence; Swin (hierarchical) takes exactly its patch
  grid and its head reads the pooled output of the last stage. A model whose forward takes no
  ``inputs_embeds`` and that has no adapter is refused with the reason.
* **Causal or bidirectional** (families fpt has no map entry for): measured, not guessed: position
  0's output is computed twice, with the last input changed; a decoder's does not move.
* **Positions**: learned absolute tables (found by ``infer.py`` or the map) train under ``fpt``;
  rotary, ALiBi and relative schemes have nothing to train, and fpt adds its own table as for
  SmolLM2. A table with a padding row (RoBERTa-style, XLM-R, CamemBERT, MPNet) numbers positions
  from ``padding_idx + 1``: its first rows are never used, and fewer positions fit.
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

from fpt.backbones.backbone import FamilyRefused  # noqa: F401  (raised here; defined below every loader)

VIT_LIKE = ("dinov2", "beit")  # beside the map's vit and deit: blocks fed any sequence (encoders.VisionOnEmbeddings)
HIERARCHICAL = ("swin",)  # patch grid in, pooled last stage out (encoders.SwinOnEmbeddings)
_SAID: set[tuple[str, str]] = set()  # (family, what) said once per process


def say_once(family: str, text: str) -> None:
    if (family, text) not in _SAID:
        _SAID.add((family, text))
        print(f"fpt: {text}", file=sys.stderr, flush=True)


def model_class(config) -> type:
    """The transformers class fpt builds for ``config``: the base model, or an encoder-decoder's encoder half."""
    import transformers
    from transformers import AutoModel

    try:
        cls = AutoModel._model_mapping[type(config)]
    except KeyError:
        raise FamilyRefused(f"transformers {transformers.__version__} has no base model class for "
                            f"{config.model_type!r}; use a family it supports (fpt list)") from None
    if isinstance(cls, (list, tuple)):
        cls = cls[0]
    if getattr(config, "is_encoder_decoder", False):
        encoder = getattr(transformers, cls.__name__.replace("Model", "EncoderModel"), None)
        if encoder is None:
            raise FamilyRefused(
                f"{config.model_type!r} is an encoder-decoder, and transformers has no class for its encoder half "
                f"alone ({cls.__name__.replace('Model', 'EncoderModel')}), so fpt cannot feed it one sequence; use "
                "the T5 family (t5, mt5, umt5: their encoder halves are built alone) or an encoder (bert, roberta...)")
        return encoder
    model_type = config.model_type
    if "inputs_embeds" not in inspect.signature(cls.forward).parameters and model_type not in ("vit", "deit") \
            + VIT_LIKE + HIERARCHICAL:
        raise FamilyRefused(
            f"{cls.__name__} takes no inputs_embeds (its forward reads {_inputs(cls)}), so fpt cannot give it its own "
            "input sequence, and fpt has no adapter for it; use a decoder, an encoder, or a vision transformer fpt "
            "adapts (vit, deit, dinov2, beit, swin)")
    return cls


def _inputs(cls) -> str:
    names = [n for n in inspect.signature(cls.forward).parameters if n != "self"][:2]
    return ", ".join(names) or "nothing"


def attention_implementation(cls: type, asked: str, family: str) -> str:
    """``asked`` where ``cls`` has it, else ``eager`` (said once per family)."""
    import transformers

    if asked == "sdpa" and not getattr(cls, "_supports_sdpa", False):
        say_once(family, f"{family}: {cls.__name__} has no sdpa attention in transformers {transformers.__version__}; "
                         "using eager attention (same results, slower)")
        return "eager"
    return asked


def build_kwargs(cls: type, config) -> dict:
    """No pooler where the class can leave it out and fpt's read-out does not use it (BEiT's mean pooling does)."""
    if "add_pooling_layer" not in inspect.signature(cls.__init__).parameters:
        return {}
    if config.model_type == "beit" and getattr(config, "use_mean_pooling", False):
        return {}  # its pooler's LayerNorm normalises the mean of the patch tokens: the head reads that
    return {"add_pooling_layer": False}


def adapter(model: nn.Module) -> nn.Module:
    """The model fed with ``inputs_embeds``: vision families through their adapter, others as they are."""
    model_type = model.config.model_type
    if model_type in VIT_LIKE:
        from fpt.backbones.encoders import VisionOnEmbeddings

        return VisionOnEmbeddings(model)
    if model_type in HIERARCHICAL:
        from fpt.backbones.encoders import SwinOnEmbeddings

        return SwinOnEmbeddings(model)
    return model


def takes_use_cache(model: nn.Module) -> bool:
    return "use_cache" in inspect.signature(model.forward).parameters


def position_count(model: nn.Module, config, position_paths: list[str], config_count: int | None) -> int | None:
    """Positions a model accepts: its config's count, fewer where a table numbers from ``padding_idx + 1``."""
    modules = dict(model.named_modules())
    count = config_count
    for path in position_paths:
        table = modules[path]
        rows = table.num_embeddings - (table.padding_idx + 1 if table.padding_idx is not None else 0)
        count = rows if count is None else min(count, rows)
    return count


@torch.no_grad()
def is_causal(model: nn.Module, width: int, scale: float, use_cache: bool) -> bool | None:
    """Measured: does position 0's output stay put when only the last of 4 inputs changes (a decoder)?"""
    if any(p.is_meta for p in model.parameters()):
        return None
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, width, generator=generator) * (scale or 1.0)
    changed = x.clone()
    changed[0, -1] = torch.randn(width, generator=generator) * (scale or 1.0)
    was_training = model.training
    model.eval()
    try:
        kwargs = {"use_cache": False} if use_cache else {}
        first = model(inputs_embeds=x, **kwargs).last_hidden_state[0, 0]
        again = model(inputs_embeds=changed, **kwargs).last_hidden_state[0, 0]
    except Exception as err:  # a family whose forward cannot run on an injected sequence: say so, no traceback
        raise FamilyRefused(
            f"{type(model).__name__} fails on a sequence given as inputs_embeds ({type(err).__name__}: {err}); fpt "
            "cannot feed this family its own input. Use a family of docs/backbones.md's table, or give fpt an adapter "
            "for it (fpt/backbones/families.py)") from err
    finally:
        model.train(was_training)
    return bool(torch.allclose(first, again, rtol=1e-5, atol=1e-6))
