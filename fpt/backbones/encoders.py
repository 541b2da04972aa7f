"""Vision transformers fed with ``inputs_embeds`` instead of pixels.

A vision model's forward takes ``pixel_values`` only: its patch embedding (a convolution) turns an
image into tokens. FPT brings its own input layer, so these adapters keep the rest of the model and
feed its blocks themselves.

:class:`VisionOnEmbeddings` (ViT, DeiT, DINOv2, BEiT; ``ViTOnEmbeddings`` is the same class):

* the blocks and the final norm are the model's own modules (frozen or trained by the usual rules);
* its learned position table (ViT, DeiT, DINOv2; BEiT only with ``use_absolute_position_embeddings``)
  becomes an ``nn.Embedding`` holding the model's rows (CLS row first, then the patch rows in raster
  order; DeiT: CLS, distillation, patches), added to the sequence from row 0. With the ``first``
  read-out (the default of the CLS-read families) the prepended summary token sits on the CLS row and
  the inputs on the patch rows, the model's own layout; the table trains as ``positions`` under
  ``fpt``. Without a table (BEiT's default) fpt adds its own, as for RoPE decoders;
* the CLS token is not a parameter here: it is the initial value of FPT's summary token
  (``cls_token_init``), which then trains as part of the input;
* the patch convolution, the pooler, mask tokens and DeiT's distillation token are dropped, except
  BEiT's mean-pooling LayerNorm (``pooled_norm``): BEiT's head reads the *mean* of its patch tokens
  through that norm, so its read-out is ``mean`` followed by that norm (trained as a norm). The scale
  of the patch embedding is kept as ``embedding_std`` (the std its output would have on
  unit-variance pixels: the RMS norm of its filters), the scale FPT's input layer starts at;
* padding masks work as in ViTModel (a bidirectional mask, no causal one).
* BEiT's relative position bias (``use_relative_position_bias`` / ``use_shared_...``) is tied to the
  image's patch grid (its table is indexed by pairs of grid cells), which fpt's sequences of any
  length do not have: such a BEiT is refused, with the reason.

:class:`SwinOnEmbeddings` (Swin, hierarchical): its windows and patch merging need the 2-D patch grid,
so fpt's input layer yields exactly that grid (``sequence_length`` tokens of width ``embed_dim``, in
raster order), the embedding LayerNorm and the stages run as in SwinModel, and the head reads the
pooled output (the mean of the last stage's normalised tokens, SwinModel's ``pooler_output``): the
read-out is ``mean``, and a task must give exactly the grid's number of tokens, without padding.

Needs transformers >= 5 (blocks that take an attention mask, ``model.layers``).
"""

from __future__ import annotations

import torch
from torch import nn


def _patch_std(patch_embeddings: nn.Module) -> float:
    """The std of the patch embedding's outputs on unit-variance pixels: the RMS norm of its filters."""
    weight = patch_embeddings.projection.weight
    if weight.is_meta:
        return 0.02
    filters = weight.detach().float().flatten(1)
    return float(filters.pow(2).sum(1).mean().sqrt())


class VisionOnEmbeddings(nn.Module):
    """A ViT / DeiT / DINOv2 / BEiT model's blocks, final norm and position table, taking ``inputs_embeds``."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        config = vit.config
        layers = getattr(vit, "layers", None)
        if layers is None:
            layers = getattr(getattr(vit, "encoder", None), "layer", None)  # DINOv2: encoder.layer
        if not isinstance(layers, nn.ModuleList):
            import transformers

            raise ValueError(f"{type(vit).__name__} of transformers {transformers.__version__} keeps its blocks "
                             "elsewhere; vision backbones need transformers >= 5 (pip install -U transformers)")
        if getattr(config, "use_relative_position_bias", False) or getattr(config, "use_shared_relative_position_bias",
                                                                            False):
            from fpt.backbones.backbone import FamilyRefused

            raise FamilyRefused(
                f"this {config.model_type} uses a relative position bias indexed by pairs of cells of its "
                f"{config.image_size // config.patch_size}x{config.image_size // config.patch_size} patch grid, which "
                "fpt's input sequences (of any length) do not have; use a BEiT config without it "
                "(use_relative_position_bias: false, use_shared_relative_position_bias: false), or ViT, DeiT, "
                "DINOv2 (learned absolute positions) or Swin (takes the patch grid)")
        self.config = config
        embeddings = vit.embeddings
        table = getattr(embeddings, "position_embeddings", None)
        self.position_embeddings = None
        if table is not None:
            table = table.detach()[0]  # [1 (+1) + patches, hidden]
            self.position_embeddings = nn.Embedding(table.shape[0], table.shape[1], device=table.device)
            with torch.no_grad():
                self.position_embeddings.weight.copy_(table)
        self.max_positions = None if table is None else int(table.shape[0])
        self.layers = layers
        self.layernorm = vit.layernorm  # BEiT with mean pooling: an Identity
        pooler = getattr(vit, "pooler", None)
        self.pooled_norm = getattr(pooler, "layernorm", None) if config.model_type == "beit" else None
        self.default_readout = "mean" if self.pooled_norm is not None else "first"
        # Not parameters of the backbone: the start value of the 'first' read-out's summary token, and
        # the scale the model's tokens had.
        cls = embeddings.cls_token
        self.cls_token_init = None if cls.is_meta else cls.detach()[0, 0].clone().float()
        self.embedding_std = _patch_std(embeddings.patch_embeddings)
        self.input_size = config.hidden_size

    def get_input_embeddings(self) -> None:
        return None  # no token table: FPT's input layer replaces the patch embedding

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutput

        hidden = inputs_embeds
        if self.position_embeddings is not None:
            positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            hidden = hidden + self.position_embeddings(positions).to(inputs_embeds.dtype)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask)
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden))


ViTOnEmbeddings = VisionOnEmbeddings  # the map's adapter name for vit and deit


class SwinOnEmbeddings(nn.Module):
    """A Swin model's stages and norms, taking its patch grid as ``inputs_embeds`` (see the module docstring)."""

    def __init__(self, swin: nn.Module):
        super().__init__()
        config = swin.config
        self.config = config
        embeddings = swin.embeddings
        self.grid = tuple(int(n) for n in embeddings.patch_embeddings.grid_size)
        self.sequence_length = self.grid[0] * self.grid[1]
        self.norm = embeddings.norm  # the LayerNorm after the patch embedding: a norm, trained under fpt
        table = getattr(embeddings, "position_embeddings", None)  # only with use_absolute_embeddings
        self.position_embeddings = None
        if table is not None:
            rows = table.detach()[0, : self.sequence_length]
            self.position_embeddings = nn.Embedding(rows.shape[0], rows.shape[1], device=rows.device)
            with torch.no_grad():
                self.position_embeddings.weight.copy_(rows)
        self.max_positions = self.sequence_length
        self.encoder = swin.encoder
        self.layernorm = swin.layernorm
        self.pooled_norm = None
        self.default_readout = "mean"  # SwinModel's pooler: the mean of the last stage's normalised tokens
        self.cls_token_init = None
        self.embedding_std = _patch_std(embeddings.patch_embeddings)
        self.input_size = config.embed_dim

    def get_input_embeddings(self) -> None:
        return None

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        if inputs_embeds.shape[1] != self.sequence_length:
            raise ValueError(f"Swin takes exactly its {self.grid[0]}x{self.grid[1]} patch grid "
                             f"({self.sequence_length} tokens), got {inputs_embeds.shape[1]}")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("Swin attends within fixed windows of its patch grid and takes no padding mask")
        hidden = self.norm(inputs_embeds)
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings.weight.to(hidden.dtype)
        out = self.encoder(hidden, self.grid).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.layernorm(out))
