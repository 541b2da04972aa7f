"""Vision transformers (ViT, DeiT) fed with ``inputs_embeds`` instead of pixels.

``ViTModel.forward`` takes ``pixel_values`` only: its patch embedding (a convolution) turns an image
into tokens, prepends the CLS token and adds the position table. FPT brings its own input layer, so
:class:`ViTOnEmbeddings` keeps the rest of the model and feeds its blocks itself:

* the blocks and the final LayerNorm are ViT's own modules (frozen or trained by the usual rules);
* the position table becomes an ``nn.Embedding`` holding ViT's rows (CLS row first, then the patch
  rows in raster order; DeiT: CLS, distillation, patches), added to the sequence from row 0. With
  the ``first`` read-out (ViT's default) the prepended summary token sits on the CLS row and the
  inputs on the patch rows, ViT's own layout; the table trains as ``positions`` under ``fpt``;
* the CLS token is not a parameter here: it is the initial value of FPT's summary token
  (``cls_token_init``), which then trains as part of the input;
* the patch convolution, the pooler and DeiT's distillation token are dropped. The scale of the
  patch embedding is kept as ``embedding_std`` (the std its output would have on unit-variance
  pixels: the RMS norm of its filters), the scale FPT's input layer starts at;
* padding masks work as in ViTModel (a bidirectional mask, no causal one).

Needs transformers >= 5 (ViT blocks that take an attention mask).
"""

from __future__ import annotations

import torch
from torch import nn


class ViTOnEmbeddings(nn.Module):
    """A ViT/DeiT model's blocks, final norm and position table, taking ``inputs_embeds``."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        layers = getattr(vit, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            import transformers

            raise ValueError(f"{type(vit).__name__} of transformers {transformers.__version__} keeps its blocks "
                             "elsewhere; ViT-family backbones need transformers >= 5 (pip install -U transformers)")
        self.config = vit.config
        embeddings = vit.embeddings
        table = embeddings.position_embeddings.detach()[0]  # [1 (+1) + patches, hidden]
        self.position_embeddings = nn.Embedding(table.shape[0], table.shape[1])
        with torch.no_grad():
            self.position_embeddings.weight.copy_(table)
        self.layers = layers
        self.layernorm = vit.layernorm
        # Not parameters of the backbone: the start value of the 'first' read-out's summary token, and
        # the scale ViT's tokens had (each output of the patch convolution, for unit-variance pixels,
        # has the norm of its filter as std).
        self.cls_token_init = embeddings.cls_token.detach()[0, 0].clone().float()
        filters = embeddings.patch_embeddings.projection.weight.detach().float().flatten(1)
        self.embedding_std = float(filters.pow(2).sum(1).mean().sqrt())

    def get_input_embeddings(self) -> None:
        return None  # no token table: FPT's input layer replaces the patch embedding

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutput

        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        hidden = inputs_embeds + self.position_embeddings(positions).to(inputs_embeds.dtype)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden))
