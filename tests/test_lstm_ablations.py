"""The paper's LSTM ablations on the 2021 layer-norm LSTM: more layers, residual connections, positions."""

from __future__ import annotations

import pytest
import torch

from fpt.backbones import load_backbone
from fpt.backbones.lnlstm import LayerNormLSTM
from fpt.model import FPT, ModelConfig
from fpt.tasks import make_task


def test_residual_adds_each_layers_input_to_its_output():
    torch.manual_seed(0)
    plain = LayerNormLSTM(8, 8, num_layers=2)
    residual = LayerNormLSTM(8, 8, num_layers=2, residual=True)
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 8)
    torch.manual_seed(1)  # the random initial states: the same draws for both
    first = plain.cells[0]
    h, c = plain.initial_state(first, 3, x)
    outs = []
    for t in range(5):
        h, c = first(x[:, t], h, c)
        outs.append(h)
    layer1 = x + torch.stack(outs, 1)  # what the residual stack feeds its second layer
    residual.eval()
    torch.manual_seed(1)
    y = residual(x)
    second = residual.cells[1]
    torch.manual_seed(1)
    residual.initial_state(first, 3, x)  # replay the first layer's draws
    h, c = residual.initial_state(second, 3, x)
    outs = []
    for t in range(5):
        h, c = second(layer1[:, t], h, c)
        outs.append(h)
    assert torch.allclose(y, layer1 + torch.stack(outs, 1), atol=1e-6)
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        LayerNormLSTM(4, 8, residual=True)


def test_lstm_positions_train_under_fpt_and_residual_needs_the_layernorm_lstm():
    task = make_task("bit-xor", {"n_bits": 3})
    backbone = load_backbone("lstm", init="random", layers=2, lstm_width=16, lstm_kind="layernorm", lstm_residual=True)
    assert backbone.model.residual
    plain = FPT(load_backbone("lstm", init="random", layers=2, lstm_width=16, lstm_kind="layernorm"), task.spec,
                ModelConfig(freeze="fpt"))
    with_positions = FPT(backbone, task.spec, ModelConfig(freeze="fpt", lstm_positions=True))
    assert plain.position_table is None and with_positions.position_table is not None
    assert with_positions.position_table.weight.requires_grad  # the positions group trains under fpt
    assert float(with_positions.position_table.weight.detach().std()) > 0.5  # N(0, 1): never zeros
    with pytest.raises(ValueError, match="--lstm-kind layernorm"):
        load_backbone("lstm", init="random", lstm_residual=True)
