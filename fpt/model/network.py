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

import contextlib
import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import nn

from fpt.backbones import Backbone
from fpt.backbones.freeze import apply_freeze, resolve_preset, rules_source
from fpt.data.splits import TaskSpec

READOUTS = ("last", "mean", "first", "tokens", "flatten")


@dataclass
class ModelConfig:
    """How FPT wraps a backbone. Every field is also a key of a run's YAML config."""

    freeze: str | list[str] = "fpt"  # a preset (fpt, output-only, +ln, +input, +pos, +ff, +attn, full) or a list of groups
    freeze_rules: dict[str, list[str]] | None = None  # module class names per group, for architectures fpt does not know
    # "last", "mean", "first" (a trained summary token prepended; encoders), "tokens" or "flatten" (every token
    # position into one linear layer, GPT4TS's forecasting head); None: the task's
    # default, or on an encoder its family's in place of "last"
    readout: str | None = None
    learned_positions: bool = True  # add a trained position table for backbones without one (RoPE: Llama, SmolLM2, Pythia)
    lstm_positions: bool = False  # add one to an LSTM's inputs too (the paper's LSTM ablation)
    # "embedding": orthogonal, rescaled to the token embeddings' scale; "paper": the 2021 code's (below)
    input_init: str = "embedding"
    input_gain: float = 1.41  # orthogonal init gain of the input layer (paper: 1.41)
    # dropout after a continuous input layer (the 2021 code: 0.1, fpt.py:118; none after an embedding)
    input_dropout: float = 0.0

    @classmethod
    def from_config(cls, config) -> "ModelConfig":
        """The model options of a RunConfig: every field of the config's of the same name (``input_gain``
        is not an option of a run: it keeps its default)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


class FPT(nn.Module):
    """Frozen Pretrained Transformer: trains only what ``config.freeze`` selects."""

    def __init__(self, backbone: Backbone, spec: TaskSpec, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.spec = spec
        self.backbone = backbone
        hidden = backbone.hidden_size
        width = backbone.input_size  # of inputs_embeds (ELECTRA-small: narrower than the blocks)
        self.readout = readout = self._choose_readout(config.readout, spec, backbone)
        # With "last"/"mean"/"first" on a many-label task one vector predicts every label.
        self.readout_tokens = spec.readout_tokens if readout == "tokens" else 1
        # The 'first' read-out prepends one token (the summary) to every sequence.
        tokens = spec.max_tokens + (1 if readout == "first" else 0)
        if backbone.sequence_length is not None:
            self._check_fixed_grid(backbone, spec, readout, tokens)
        if backbone.max_positions is not None and tokens > backbone.max_positions:
            raise ValueError(
                f"the task's sequences have up to {spec.max_tokens} tokens"
                + (" (+1 summary token of the 'first' read-out)" if readout == "first" else "")
                + f" but backbone {backbone.name!r} accepts at most {backbone.max_positions}; use a larger patch "
                "size, shorter sequences, or a backbone with a longer context"
                + (f" (or grow its position table: --position-rows {1 << (tokens - 1).bit_length()})"
                   if backbone.arch == "gpt2" else "")
            )
        if config.input_init not in ("embedding", "paper"):
            raise ValueError(f"input_init must be 'embedding' or 'paper', got {config.input_init!r}")
        if not 0.0 <= config.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {config.input_dropout!r}")
        paper = config.input_init == "paper"

        # -- input layer -------------------------------------------------------------------
        scale = backbone.embedding_std
        if spec.input_type == "continuous":
            self.input_layer = nn.Linear(spec.input_dim, width)
            nn.init.orthogonal_(self.input_layer.weight, gain=config.input_gain)
            nn.init.zeros_(self.input_layer.bias)
            if config.input_init == "embedding":
                # For unit-variance inputs an orthogonal map gives outputs of variance gain^2 * D / H
                # (D < H); rescale so each output coordinate has the token embeddings' std instead.
                natural_std = config.input_gain * math.sqrt(min(spec.input_dim, width) / width)
                with torch.no_grad():
                    self.input_layer.weight.mul_(scale / natural_std)
        else:
            self.input_layer = nn.Embedding(spec.input_dim, width, padding_idx=spec.pad_id if spec.padded else None)
            # "paper": nn.Embedding's own N(0, 1) (fpt.py:97), whatever the backbone's embedding scale
            nn.init.normal_(self.input_layer.weight, std=1.0 if paper else scale)
        # The 2021 code: nn.Dropout after the input Linear (fpt.py:118), none after an embedding (fpt.py:97).
        self.input_dropout = (nn.Dropout(config.input_dropout)
                              if config.input_dropout > 0 and spec.input_type == "continuous" else None)

        # -- positions: only for backbones that have no learned table of their own --------------
        self.position_table = None
        lstm_table = backbone.arch == "lstm" and config.lstm_positions
        if lstm_table or (config.learned_positions and not backbone.learned_positions and backbone.arch != "lstm"):
            # Never zeros: an exactly-zero input vector into SmolLM2 drives input gradients to ~1e31
            # (measured). Start at the token embeddings' scale instead.
            self.position_table = nn.Embedding(tokens, width)
            nn.init.normal_(self.position_table.weight, std=scale)

        # -- output head -------------------------------------------------------------------
        self.labels_per_readout = spec.num_labels // self.readout_tokens
        # "flatten" (GPT4TS's out_layer: nn.Linear(d_model * patch_num, pred_len)) reads every position at once
        head_in = hidden * spec.max_tokens if readout == "flatten" else hidden
        self.head = nn.Linear(head_in, self.labels_per_readout * spec.num_classes)
        # "paper": nn.Linear's default init, as the 2021 code's out_net (fpt.py:129); "flatten": the same, as GPT4TS's
        # out_layer (an orthogonal map of ~16k inputs onto 96 outputs would start the forecasts far off scale)
        if not paper and readout != "flatten":
            nn.init.orthogonal_(self.head.weight, gain=config.input_gain)
            nn.init.zeros_(self.head.bias)

        # -- summary token of the 'first' read-out (created last: other models' seeded init is unchanged) --
        self.summary_token = None
        if readout == "first":
            # A trained vector prepended to every sequence, read out at position 0 (BERT's and ViT's CLS
            # position). It starts as the backbone's own CLS token where there is one (ViT), else at the
            # token embeddings' scale; never all zeros (a randomly initialised DeiT's CLS token is).
            # Trained as part of the input.
            self.summary_token = nn.Embedding(1, width)
            with torch.no_grad():
                init = backbone.summary_init
                if init is not None and bool(init.abs().sum() > 0):
                    self.summary_token.weight.copy_(init.reshape(1, width))
                else:
                    nn.init.normal_(self.summary_token.weight, std=scale)

        self.group_counts = apply_freeze(self, backbone.arch, config.freeze, config.freeze_rules)
        # where the freezing rules came from (map / inferred / freeze_rules) and, inferred, the rules as YAML
        self.freeze_source = rules_source(self, backbone.arch, config.freeze_rules)
        inferred = backbone.inferred_rules if self.freeze_source == "inferred" else None
        self.inferred_rules = inferred.rules if inferred is not None else None
        self.inferred_rules_yaml = inferred.yaml() if inferred is not None else None
        missing = [g for g in resolve_preset(config.freeze) if g not in self.group_counts]
        if missing and config.freeze != "full":  # "full" means everything there is
            # e.g. "+ln" on the LSTM (no norms) trains exactly what "output-only" trains: say so.
            warnings.warn(f"freeze {config.freeze!r} trains {', '.join(missing)}, but this model ({backbone.arch}) "
                          "has no such parameters; the preset trains the same as one without them", stacklevel=2)

    @staticmethod
    def _check_fixed_grid(backbone: Backbone, spec: TaskSpec, readout: str, tokens: int) -> None:
        """A backbone that takes exactly one sequence length (Swin: its patch grid) and is read pooled."""
        n = backbone.sequence_length
        problems = []
        if tokens != n:
            problems.append(f"the task gives {spec.max_tokens} tokens" + (" (+1 summary token)" if tokens != spec.max_tokens
                                                                          else ""))
        if spec.padded:
            problems.append("the task's sequences vary in length (padded), and its windows take no padding mask")
        if readout != "mean":
            problems.append(f"readout {readout!r} reads token positions, which its patch merging does not keep")
        if problems:
            raise ValueError(
                f"backbone {backbone.name!r} ({backbone.arch}) takes exactly its patch grid of {n} tokens of width "
                f"{backbone.input_size} and its head reads the pooled output (readout mean); " + "; ".join(problems)
                + ". Use a task (or patch size) that gives exactly that many tokens, per-sequence labels and the mean "
                "read-out, or a ViT-style backbone (vit, deit, dinov2), which takes any length")

    @staticmethod
    def _choose_readout(asked: str | None, spec: TaskSpec, backbone: Backbone) -> str:
        """The read-out: the one asked for, else the task's default, except that a bidirectional backbone
        replaces the task's "last" (meaningful only for a causal model, whose last token has seen every
        other) by its family's default (``mean`` for BERT-style text encoders, ``first`` for ViT)."""
        readout = asked or spec.readout
        if asked is None and readout == "last" and backbone.causal is False and backbone.default_readout:
            readout = backbone.default_readout
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if readout == "flatten" and spec.padded:
            raise ValueError("readout 'flatten' reads every token position: it needs fixed-length sequences (a padded "
                             "task's positions differ from sample to sample)")
        if readout == "tokens" and spec.readout != "tokens":
            raise ValueError("readout 'tokens' needs a task that predicts labels per token (e.g. bit tasks)")
        if readout == "first" and backbone.causal:
            raise ValueError(
                f"readout 'first' reads a summary token prepended at position 0, which sees nothing of the input in "
                f"a causal backbone ({backbone.arch}); use 'last' or 'mean', or an encoder (bert, vit...)")
        if readout == "first" and backbone.causal is None:
            warnings.warn(f"readout 'first': fpt does not know whether {backbone.arch!r} is bidirectional; in a causal "
                          "model the summary token at position 0 sees nothing of the input", stacklevel=3)
        return readout

    # -- storage of the frozen weights ---------------------------------------------------------------
    frozen_dtype = torch.float32  # of the frozen matmul weights (store_frozen_weights)

    def store_frozen_weights(self, dtype: torch.dtype) -> int:
        """Store the frozen weights of the backbone's matmul modules (``nn.Linear``, GPT-2's ``Conv1D``, by
        type) in ``dtype``; returns how many tensors changed. Everything that trains keeps its dtype (fp32:
        the input layer, norms, positions, head, and any block a freeze preset trains), and so do frozen
        norms and embedding tables. With bf16 storage :meth:`features` computes under bf16 autocast
        wherever it is called (prediction, cached features), so the model always computes as it trained.
        The backbone's fingerprint was taken as built (fp32) and does not change."""
        changed = 0
        for module in self.backbone.modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                for p in module.parameters(recurse=False):
                    if not p.requires_grad and p.dtype != dtype:
                        p.data = p.data.to(dtype)
                        changed += 1
        self.frozen_dtype = dtype
        return changed

    def frozen_autocast(self, device_type: str):
        """bf16 autocast when the frozen weights are stored in bf16 and no autocast is on (Lightning's is)."""
        if self.frozen_dtype == torch.float32 or torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.frozen_dtype)

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
        """The sequence the backbone sees: the input layer's tokens (after the summary token, with the
        'first' read-out), plus FPT's position table where the backbone has none of its own."""
        h = self.input_layer(x)
        if self.input_dropout is not None:
            h = self.input_dropout(h)
        if self.summary_token is not None:
            h = torch.cat([self.summary_token.weight.to(h.dtype).expand(h.shape[0], 1, -1), h], 1)
        if self.position_table is not None:
            h = h + self.position_table.weight[: h.shape[1]]
        return h

    def backbone_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The padding mask of :meth:`embed`'s sequence (the summary token is always attended to)."""
        if mask is None or self.summary_token is None:
            return mask
        return torch.cat([torch.ones_like(mask[:, :1]), mask], 1)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone output at the read-out positions: ``[B, readout_tokens, H]``."""
        with self.frozen_autocast(x.device.type):
            hidden = self.backbone(self.embed(x), attention_mask=self.backbone_mask(mask))
        return self.read_out(hidden, mask)

    def read_out(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.readout == "tokens":
            return self._read_tokens(hidden, mask)
        return self.backbone.pool(self._read_pooled(hidden, mask))  # BEiT: its mean-pooling norm

    def _read_pooled(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.readout == "first":
            return hidden[:, :1]
        if self.readout == "flatten":  # [B, T, H] -> [B, 1, T * H], token-major (GPT4TS: reshape(B * M, -1))
            return hidden.reshape(hidden.shape[0], 1, -1)
        if self.readout == "mean":
            if mask is None:
                return hidden.mean(1, keepdim=True)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        return self._read_tokens(hidden, mask)  # "last": the last real token

    def _read_tokens(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return hidden[:, -self.readout_tokens:]
        # Right padding: the last real token of row b is at lengths[b] - 1, never a pad.
        lengths = mask.long().sum(1)
        offsets = torch.arange(self.readout_tokens, device=hidden.device) - self.readout_tokens
        index = (lengths.unsqueeze(1) + offsets).clamp_min(0)
        return torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: the outputs feed the loss (a regression's predictions would keep
        # only ~3 significant digits in bf16); the head is one small matmul
        with torch.autocast(features.device.type, enabled=False):
            logits = self.head(features.float())  # [B, R, labels_per_readout * C]
        return logits.reshape(features.shape[0], self.spec.num_labels, self.spec.num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_labels, num_classes]``."""
        return self.head_logits(self.features(x, mask))
