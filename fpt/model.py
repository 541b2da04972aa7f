"""The FPT module: input layer -> backbone(inputs_embeds) -> output head.

Usable without Lightning::

    from fpt.backbones import load_backbone
    from fpt.model import FPT, ModelConfig
    from fpt.tasks import make_task

    task = make_task("bit-xor", {"n_bits": 5})
    model = FPT(load_backbone("smollm2-135m", layers=2), task.spec, ModelConfig(freeze="fpt"))
    logits = model(task.train().batch(range(8))["x"])   # [8, 5 labels, 2 classes]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fpt.backbones import Backbone
from fpt.backbones.freeze import apply_freeze, resolve_preset
from fpt.tasks.base import TaskSpec


@dataclass
class ModelConfig:
    """How FPT wraps a backbone. Every field is also a key of a run's YAML config."""

    freeze: str | list[str] = "fpt"  # a preset (fpt, output-only, +ln, +input, +pos, +ff, +attn, full) or a list of groups
    freeze_rules: dict[str, list[str]] | None = None  # module class names per group, for architectures fpt does not know
    readout: str | None = None  # "last", "mean" or "tokens"; None: the task's default
    learned_positions: bool = True  # add a trained position table for backbones without one (RoPE: Llama, SmolLM2, Pythia)
    input_init: str = "embedding"  # "embedding": orthogonal, rescaled to the token embeddings' scale; "paper": the 2021 code's (below)
    input_gain: float = 1.41  # orthogonal init gain of the input layer (paper: 1.41)
    input_dropout: float = 0.0  # dropout after a continuous input layer (the 2021 code: 0.1, fpt.py:118; none after an embedding)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded but unused


class FPT(nn.Module):
    """Frozen Pretrained Transformer: trains only what ``config.freeze`` selects."""

    def __init__(self, backbone: Backbone, spec: TaskSpec, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.spec = spec
        self.backbone = backbone
        hidden = backbone.hidden_size
        readout = config.readout or spec.readout
        if readout not in ("last", "mean", "tokens"):
            raise ValueError(f"readout must be 'last', 'mean' or 'tokens', got {readout!r}")
        if readout == "tokens" and spec.readout != "tokens":
            raise ValueError("readout 'tokens' needs a task that predicts labels per token (e.g. bit tasks)")
        self.readout = readout
        # With "last"/"mean" on a many-label task one vector predicts every label.
        self.readout_tokens = spec.readout_tokens if readout == "tokens" else 1
        if backbone.max_positions is not None and spec.max_tokens > backbone.max_positions:
            raise ValueError(
                f"the task's sequences have up to {spec.max_tokens} tokens but backbone {backbone.name!r} "
                f"accepts at most {backbone.max_positions}; use a larger patch size, shorter sequences, "
                "or a backbone with a longer context"
            )
        if config.input_init not in ("embedding", "paper"):
            raise ValueError(f"input_init must be 'embedding' or 'paper', got {config.input_init!r}")
        if not 0.0 <= config.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {config.input_dropout!r}")
        paper = config.input_init == "paper"

        # -- input layer -------------------------------------------------------------------
        scale = backbone.embedding_std
        if spec.input_type == "continuous":
            self.input_layer = nn.Linear(spec.input_dim, hidden)
            nn.init.orthogonal_(self.input_layer.weight, gain=config.input_gain)
            nn.init.zeros_(self.input_layer.bias)
            if config.input_init == "embedding":
                # For unit-variance inputs an orthogonal map gives outputs of variance gain^2 * D / H
                # (D < H); rescale so each output coordinate has the token embeddings' std instead.
                natural_std = config.input_gain * math.sqrt(min(spec.input_dim, hidden) / hidden)
                with torch.no_grad():
                    self.input_layer.weight.mul_(scale / natural_std)
        else:
            self.input_layer = nn.Embedding(spec.input_dim, hidden, padding_idx=spec.pad_id if spec.padded else None)
            # "paper": nn.Embedding's own N(0, 1) (fpt.py:97), whatever the backbone's embedding scale
            nn.init.normal_(self.input_layer.weight, std=1.0 if paper else scale)
        # The 2021 code: nn.Dropout after the input Linear (fpt.py:118), none after an embedding (fpt.py:97).
        self.input_dropout = (nn.Dropout(config.input_dropout)
                              if config.input_dropout > 0 and spec.input_type == "continuous" else None)

        # -- positions: only for backbones that have no learned table of their own --------------
        self.position_table = None
        if config.learned_positions and not backbone.learned_positions and backbone.arch != "lstm":
            # Never zeros: an exactly-zero input vector into SmolLM2 drives input gradients to ~1e31
            # (DEVELOPERS.md). Start at the token embeddings' scale instead.
            self.position_table = nn.Embedding(spec.max_tokens, hidden)
            nn.init.normal_(self.position_table.weight, std=scale)

        # -- output head -------------------------------------------------------------------
        self.labels_per_readout = spec.num_labels // self.readout_tokens
        self.head = nn.Linear(hidden, self.labels_per_readout * spec.num_classes)
        if not paper:  # "paper": nn.Linear's default init, as the 2021 code's out_net (fpt.py:129)
            nn.init.orthogonal_(self.head.weight, gain=config.input_gain)
            nn.init.zeros_(self.head.bias)

        self.group_counts = apply_freeze(self, backbone.arch, config.freeze, config.freeze_rules)
        missing = [g for g in resolve_preset(config.freeze) if g not in self.group_counts]
        if missing and config.freeze != "full":  # "full" means everything there is
            # e.g. "+ln" on the LSTM (no norms) trains exactly what "output-only" trains: say so.
            warnings.warn(f"freeze {config.freeze!r} trains {', '.join(missing)}, but this model ({backbone.arch}) "
                          "has no such parameters; the preset trains the same as one without them", stacklevel=2)

    # -- parameter bookkeeping ------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "total": total}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained parameters: what a checkpoint needs on top of the backbone's identity."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    # -- forward ---------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x)
        if self.input_dropout is not None:
            h = self.input_dropout(h)
        if self.position_table is not None:
            h = h + self.position_table.weight[: h.shape[1]]
        return h

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone output at the read-out positions: ``[B, readout_tokens, H]``."""
        hidden = self.backbone(self.embed(x), attention_mask=mask)
        return self.read_out(hidden, mask)

    def read_out(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.readout == "mean":
            if mask is None:
                return hidden.mean(1, keepdim=True)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        if mask is None:
            return hidden[:, -self.readout_tokens:]
        # Right padding: the last real token of row b is at lengths[b] - 1, never a pad.
        lengths = mask.long().sum(1)
        offsets = torch.arange(self.readout_tokens, device=hidden.device) - self.readout_tokens
        index = (lengths.unsqueeze(1) + offsets).clamp_min(0)
        return torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(features)  # [B, R, labels_per_readout * C]
        return logits.reshape(features.shape[0], self.spec.num_labels, self.spec.num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_labels, num_classes]``."""
        return self.head_logits(self.features(x, mask))
