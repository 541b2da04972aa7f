"""The paper's LSTM baseline (torch.nn.LSTM, or the 2021 code's layer-norm LSTM in lnlstm.py)."""

from __future__ import annotations

import torch
from torch import nn

from fpt.backbones.backbone import BuildOptions
from fpt.backbones.backbone import Backbone

LSTM_MAX_LAYERS = 48  # the LSTM baseline's deepest build (--layers)


class LSTMBackbone(nn.Module):
    """The paper's LSTM baseline on cuDNN/oneDNN kernels (``torch.nn.LSTM``), not a Python loop."""

    def __init__(self, hidden_size: int = 768, num_layers: int = 3, dropout: float = 0.0):
        super().__init__()
        # dropout: nn.LSTM's, on the outputs of every layer but the last
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(inputs_embeds)
        return out


def load_lstm_source(name: str, options: BuildOptions) -> Backbone:
    if options.init == "pretrained":
        raise ValueError("the LSTM baseline has no pretrained weights: use --init random")
    n = options.layers if options.layers is not None else 3
    if n < 1:
        raise ValueError("--layers 0: the LSTM baseline needs at least one layer (0 blocks is the transformers' "
                         "'no transformer' ablation)")
    if n > LSTM_MAX_LAYERS:  # nothing bounds an LSTM's depth but memory: 999 x 768 wide is ~4.7e9 weights
        raise ValueError(f"--layers {n}: the LSTM baseline is built with that many layers, and fpt builds at most "
                         f"{LSTM_MAX_LAYERS} (the paper's has 3; a transformer's limit is its own depth)")
    p = 0.0 if options.dropout == "keep" else float(options.dropout)  # an LSTM has no dropout of its own to keep
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        if options.lstm_kind == "layernorm":
            from fpt.backbones.lnlstm import LayerNormLSTM

            model = LayerNormLSTM(options.lstm_width, options.lstm_width, n, dropout=p, residual=options.lstm_residual)
        else:
            model = LSTMBackbone(options.lstm_width, n, dropout=p)
    return Backbone(model, name="lstm", arch="lstm", init=options.init, hidden_size=options.lstm_width, num_layers=n,
                    max_positions=None, learned_positions=False, embedding_std=1.0)
