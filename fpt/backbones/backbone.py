"""What every backbone loader returns: a sequence model with what FPT needs to know about it."""

from __future__ import annotations

import hashlib
import inspect
from typing import Literal
from dataclasses import dataclass, fields

import torch
from torch import nn

from fpt.config.run import FIELDS

LSTM_KINDS = FIELDS["lstm_kind"].metadata["choices"]  # declared once, with the option (fpt/config/run.py)

Init = Literal["pretrained", "random", "statistics"]


#: The name ``load_backbone`` uses when none is given: works offline after ``make install``.
OFFLINE_DEFAULT = "smollm2-135m"


class FamilyRefused(ValueError):
    """A model family fpt cannot feed with its own input sequence; the message says why and what to do."""


def _default(name: str):
    return FIELDS[name].default  # RunConfig's declaration is the one place of each option's default


@dataclass(frozen=True)
class BuildOptions:
    """How to build a backbone: every loader receives these (one new option = one new field here, named as
    its RunConfig field, which gives its default and its help; :meth:`from_config` fills them from a config)."""

    # "pretrained" (load the weights), "random" (same architecture, seeded weights) or "statistics" (the pretrained
    # weights' per-tensor mean and std only: fpt.backbones.statistics)
    init: str = _default("init")
    layers: int | None = _default("layers")  # first K blocks (None: all; 0: none, "no transformer")
    seed: int = _default("seed")  # seed of the random weights under init="random"
    attn_implementation: str = _default("attn_implementation")  # "sdpa" (fast) or "eager" (reads attention weights)
    trust_remote_code: bool = _default("trust_remote_code")  # run Python code shipped with a hub model (never by default)
    revision: str | None = _default("backbone_revision")  # a hub model's pinned revision (commit, branch, tag); None: main
    lstm_width: int = _default("lstm_width")  # hidden size of the LSTM baseline
    lstm_kind: str = _default("lstm_kind")  # the LSTM baseline: RunConfig.lstm_kind's choices (lstm.py, lnlstm.py)
    lstm_residual: bool = _default("lstm_residual")  # layernorm LSTM: x = x + layer(x) per layer (2021 residual=True)
    position_rows: int | None = _default("position_rows")  # grow GPT-2's position table to this many rows (positions.py)
    # the backbone's dropout probability, or "keep" its own config's (hf._set_dropout); RunConfig.backbone_dropout
    dropout: float | str = _default("backbone_dropout")

    @classmethod
    def from_config(cls, config, **overrides) -> "BuildOptions":
        """The options of a RunConfig's backbone: each field from the config field of the same name
        (``dropout`` and ``revision`` are ``backbone_dropout`` and ``backbone_revision`` there), except
        ``overrides`` (e.g. the attention implementation a config's ``auto`` resolved to)."""
        renamed = {"dropout": "backbone_dropout", "revision": "backbone_revision"}
        values = {f.name: getattr(config, renamed.get(f.name, f.name)) for f in fields(cls)}
        return cls(**{**values, **overrides})

    def __post_init__(self):
        if self.init not in ("pretrained", "random", "statistics"):
            raise ValueError(f"init must be 'pretrained', 'random' or 'statistics', got {self.init!r}")
        if self.attn_implementation == "auto":  # a run resolves auto (fpt.model.fastpath.choose_attention) before
            object.__setattr__(self, "attn_implementation", "sdpa")  # building; built outside a run: fused kernels
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")
        if self.lstm_kind not in LSTM_KINDS:
            raise ValueError(f"lstm_kind must be {' or '.join(LSTM_KINDS)}, got {self.lstm_kind!r}")
        if self.lstm_residual and self.lstm_kind != "layernorm":
            raise ValueError("lstm_residual is an option of the layer-norm LSTM: add --lstm-kind layernorm "
                             "(torch.nn.LSTM stacks its layers in one kernel, with no residual connection)")
        if self.dropout != "keep" and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"backbone dropout must be a probability in [0, 1) or 'keep', got {self.dropout!r}")
        # checked here, before any file is read: a bad number is never blamed on a model file
        if self.layers is not None and (isinstance(self.layers, bool) or not isinstance(self.layers, int)
                                        or self.layers < 0):
            raise ValueError(f"layers must be a non-negative integer (--layers >= 0), got {self.layers!r}")
        if isinstance(self.lstm_width, bool) or not isinstance(self.lstm_width, int) or self.lstm_width < 1:
            raise ValueError(f"lstm_width must be a positive integer (--lstm-width >= 1), got {self.lstm_width!r}")
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.strip()):
            raise ValueError(f"revision must be a commit hash, branch or tag (--backbone-revision), got {self.revision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in 0..{2**32 - 1} (--seed), got {self.seed!r}")


class Backbone(nn.Module):
    """A sequence model that maps ``inputs_embeds [B, T, input_size]`` to hidden states ``[B, T, H]``.

    Wraps a transformers base model (or the LSTM baseline) and records what FPT needs to know
    about it: width, depth, the longest sequence it accepts, whether it has a learned position
    table of its own, the scale of its token embeddings, and whether it is causal (a decoder) or
    sees the whole sequence (an encoder: padding is masked out, there is no causal mask).
    """

    def __init__(self, model: nn.Module, *, name: str, arch: str, init: str, hidden_size: int,
                 num_layers: int, max_positions: int | None, learned_positions: bool, embedding_std: float,
                 causal: bool | None = True, input_size: int | None = None, default_readout: str | None = None,
                 summary_init: torch.Tensor | None = None, build: dict | None = None,
                 inferred_rules=None, inference_error: str | None = None):
        super().__init__()
        # Loaders may hand back eval-mode models; dropout follows the run's backbone_dropout (see
        # _set_dropout), and a uniform train() state keeps Lightning's mode bookkeeping predictable.
        self.model = model.train()
        self.name = name  # what the user asked for (e.g. "smollm2-135m", "gpt2", a directory)
        self.arch = arch  # config.model_type ("gpt2", "llama", "gpt_neox", ...) or "lstm"
        self.init = init  # "pretrained", "random" or "statistics"
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.max_positions = max_positions  # None: no limit (LSTM, RoPE without a context limit)
        self.learned_positions = learned_positions  # True when the backbone adds its own position table (GPT-2)
        self.embedding_std = embedding_std  # std of the token embedding table: the scale inputs should match
        self.causal = causal  # True: each position sees only earlier ones (decoders, LSTM); False: encoders; None: unknown
        self.input_size = input_size or hidden_size  # width of inputs_embeds (ELECTRA-small: 128, blocks 256)
        self.default_readout = default_readout  # the family's read-out in place of a task's "last" (encoders)
        self.summary_init = summary_init  # start value of the 'first' read-out's summary token (ViT: its CLS token)
        # How it was built (results.json: backbone_build): attention implementation, the class, where the freezing
        # rules came from ("map" / "inferred"), positions, read-out (fpt.backbones.families)
        self.build = dict(build or {})
        self.inferred_rules = inferred_rules  # fpt.backbones.infer.InferredRules, for families without a map entry
        self.inference_error = inference_error  # why the rules could not be inferred (said when FPT is built)
        # the exact number of tokens it takes (Swin: its patch grid), else None (any length up to max_positions)
        self.sequence_length = getattr(model, "sequence_length", None)
        self._use_cache = arch != "lstm" and "use_cache" in inspect.signature(model.forward).parameters
        # Taken now, before any training changes norms or positions: identifies the weights as built.
        self.weights_fingerprint = self._fingerprint()
        self.source: dict[str, str] | None = None  # set for "run:PATH" backbones (fpt/backbones/runs.py)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.arch == "lstm":
            return self.model(inputs_embeds)
        extra = {"use_cache": False} if self._use_cache else {}
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
        return out.last_hidden_state

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The family's norm on what the head reads (BEiT's mean-pooling LayerNorm), else the features as they are."""
        norm = getattr(self.model, "pooled_norm", None)
        return features if norm is None else norm(features)

    def token_embedding(self) -> nn.Module | None:
        """The backbone's token table; FPT never uses or trains it (inputs come from our own layer)."""
        return None if self.arch == "lstm" else self.model.get_input_embeddings()

    def identity(self) -> dict[str, str]:
        """What a checkpoint records to check later that it is loaded onto the same backbone."""
        return {
            "backbone": self.name, "arch": self.arch, "init": self.init, "layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size), "fingerprint": self.weights_fingerprint,
            **(self.source or {}),
        }

    @torch.no_grad()
    def _fingerprint(self) -> str:
        """A hash of every weight byte as loaded (blake2b: ~0.3 s for SmolLM2's 135M parameters), so a
        checkpoint is never loaded onto a backbone whose weights differ anywhere."""
        digest = hashlib.blake2b(digest_size=16)
        if any(t.is_meta for t in self.model.state_dict().values()):
            return "meta"  # built on the meta device to count parameters (no weights: nothing to identify)
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
