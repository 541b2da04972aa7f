"""The 2021 code's LSTM baseline: a 3-layer layer-norm LSTM (``lstm_kind: layernorm``).

A re-implementation of ``universal_computation/models/lstm.py`` (itself from github.com/exe1023/LSTM_LN)
as the official code configures it (``fpt.py:78-86``: ``LNLSTM(768, 768, num_layers=3,
batch_first=True, residual=False, dropout=dropout, bidirectional=0)``, which passes ``cln=False``
to its cells), with the same arithmetic and the same initialisation:

* per cell (``LayerNormLSTM``): ``preact = LN(i2h(x)) + LN(h2h(h))`` (gates i, f, o by sigmoid on
  the first 3H pre-activations, g by tanh on the last H), ``c' = LN(c * f + i * g)``,
  ``h' = o * tanh(c')``; the normalised ``c'`` is the carried cell state;
* the layer norm (``LayerNorm``, lines 193-227): per sample over the features, *unbiased* variance,
  eps 1e-6, learnable gain ``alpha`` and bias ``beta``, both initialised uniform in
  ``[-1/sqrt(n), 1/sqrt(n)]`` (``reset_parameters``; so the gains start near zero, not at one);
* ``i2h`` / ``h2h``: ``nn.Linear`` re-initialised uniform in ``[-1/sqrt(H), 1/sqrt(H)]``
  (``LSTMcell.reset_parameters``, which runs before the norms exist);
* dropout (``dropout_method='pytorch'``): during training ``h'`` is dropped in place, so the
  dropped vector is both the layer's output and the hidden state carried to the next step;
* initial state (``LNLSTM.init_hidden``): fresh ``N(0, sqrt(2 / (input + hidden)))`` samples for
  ``h`` and ``c`` at every forward pass, from torch's global generator (so evaluation is stochastic
  too, as in the 2021 code).

Its layer norms are what ``--freeze fpt`` trains on this backbone (the 2021 freezing loop keeps
every parameter whose name contains ``ln`` trainable, ``fpt.py:135``): the frozen random LSTM of
the paper. It is a Python loop over time steps (the 2021 code's too): fine on a GPU for the
paper's lengths, slow on a CPU for long sequences; ``lstm_kind: torch`` is fpt's fast default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LNLSTMLayerNorm(nn.Module):
    """Layer normalisation as the 2021 LSTM does it (unbiased variance, eps 1e-6, uniform-initialised affine)."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.size, self.eps = size, eps
        self.alpha = nn.Parameter(torch.empty(1, size))
        self.beta = nn.Parameter(torch.empty(1, size))
        bound = 1.0 / math.sqrt(size)
        nn.init.uniform_(self.alpha, -bound, bound)
        nn.init.uniform_(self.beta, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, size]
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True)  # torch.var's default: unbiased, as the 2021 code
        return self.alpha * ((x - mean) / torch.sqrt(var + self.eps)) + self.beta


class LayerNormLSTMCell(nn.Module):
    """One layer-norm LSTM cell (``LayerNormLSTM`` with ``ln_preact=True, learnable=True, cln=False``)."""

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.dropout = input_size, hidden_size, float(dropout)
        self.i2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        for p in (*self.i2h.parameters(), *self.h2h.parameters()):
            nn.init.uniform_(p, -bound, bound)
        self.ln_i2h = LNLSTMLayerNorm(4 * hidden_size)
        self.ln_h2h = LNLSTMLayerNorm(4 * hidden_size)
        self.ln_cell = LNLSTMLayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.hidden_size
        preact = self.ln_i2h(self.i2h(x)) + self.ln_h2h(self.h2h(h))
        gates = preact[:, : 3 * H].sigmoid()
        g = preact[:, 3 * H:].tanh()
        i, f, o = gates[:, :H], gates[:, H: 2 * H], gates[:, 2 * H:]
        c = self.ln_cell(c * f + i * g)
        h = o * c.tanh()
        if self.training and self.dropout > 0:
            h = F.dropout(h, p=self.dropout, training=True)  # also the carried state, as the in-place 2021 dropout
        return h, c


class LayerNormLSTM(nn.Module):
    """A stack of :class:`LayerNormLSTMCell` (unidirectional), batch first: ``[B, T, D] -> [B, T, H]``.

    ``residual``: each layer's input is added to its output, as the 2021 LNLSTM with ``residual=True``
    (``models/lstm.py:133-134``: ``x = x + f_x``; the 2021 FPT used ``residual=False``)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 3, dropout: float = 0.0,
                 residual: bool = False):
        super().__init__()
        if residual and input_size != hidden_size:
            raise ValueError(f"a residual LSTM needs input_size == hidden_size, got {input_size} and {hidden_size}")
        self.residual = residual
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(LayerNormLSTMCell(s, hidden_size, dropout) for s in sizes)
        self.hidden_size = hidden_size

    def initial_state(self, cell: LayerNormLSTMCell, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        std = math.sqrt(2.0 / (cell.input_size + cell.hidden_size))  # LNLSTM.init_hidden: "Xavier"
        h = torch.randn(batch, cell.hidden_size, dtype=like.dtype, device=like.device) * std
        c = torch.randn(batch, cell.hidden_size, dtype=like.dtype, device=like.device) * std
        return h, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            h, c = self.initial_state(cell, x.shape[0], x)
            outputs = []
            for t in range(x.shape[1]):
                h, c = cell(x[:, t], h, c)
                outputs.append(h)
            x = x + torch.stack(outputs, 1) if self.residual else torch.stack(outputs, 1)
        return x
