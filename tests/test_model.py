"""The FPT module: shapes, read-outs over padded batches, positions, input scale, limits, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import ARCHS, BACKBONES, ENCODERS
from fpt.model.network import FPT, ModelConfig
from fpt.data.splits import TaskSpec
from fpt.tasks import make_task


def xor(n_bits=4):
    return make_task("bit-xor", {"n_bits": n_bits, "val_samples": 8, "test_samples": 8})


@pytest.mark.parametrize("arch", BACKBONES)
@pytest.mark.parametrize("readout", ["last", "mean", "tokens"])
def test_output_shapes(make_backbone, arch, readout):
    task = xor(4)  # 8 tokens, 4 labels of 2 classes; "tokens" reads the last 4 tokens
    model = FPT(make_backbone(arch), task.spec, ModelConfig(readout=readout))
    x = task.train().batch(range(3))["x"]
    assert x.shape == (3, 8, 1)
    assert model(x).shape == (3, 4, 2)
    width = model.backbone.hidden_size
    assert model.features(x).shape == (3, 4 if readout == "tokens" else 1, width)
    assert model.head.out_features == (2 if readout == "tokens" else 8)


def test_single_label_task_shapes(make_backbone):
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=6, num_classes=5)
    model = FPT(make_backbone("llama"), spec, ModelConfig())
    assert model(torch.randn(2, 6, 3)).shape == (2, 1, 5)
    discrete = TaskSpec(input_type="discrete", input_dim=11, max_tokens=6, num_classes=3)
    model = FPT(make_backbone("gpt2"), discrete, ModelConfig(readout="mean"))
    assert model(torch.randint(0, 11, (2, 6))).shape == (2, 1, 3)


def test_tokens_readout_needs_a_per_token_task(make_backbone):
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=6, num_classes=5)
    with pytest.raises(ValueError, match="tokens"):
        FPT(make_backbone("gpt2"), spec, ModelConfig(readout="tokens"))
    with pytest.raises(ValueError, match="readout must be"):
        FPT(make_backbone("gpt2"), spec, ModelConfig(readout="cls"))


# -- padded batches ------------------------------------------------------------------------------
@pytest.mark.parametrize("readout", ["last", "mean", "first"])
@pytest.mark.parametrize("arch", BACKBONES)
def test_padding_does_not_change_logits(make_backbone, arch, readout):
    torch.manual_seed(0)
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=8, num_classes=4, padded=True)
    if readout == "first" and arch not in ENCODERS:  # a summary token at position 0 of a causal model sees nothing
        with pytest.raises(ValueError, match="readout 'first'.*causal"):
            FPT(make_backbone(arch), spec, ModelConfig(readout=readout))
        return
    model = FPT(make_backbone(arch), spec, ModelConfig(readout=readout)).eval()
    lengths = [8, 5, 2]
    x = torch.randn(3, 8, 3)
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    other = x.clone()
    other[~mask] = 100 * torch.randn(int((~mask).sum()), 3)  # garbage in the pad positions
    with torch.no_grad():
        logits = model(x, mask)
        logits_other = model(other, mask)
        torch.testing.assert_close(logits_other, logits, rtol=1e-4, atol=1e-5)
        # ... and each row equals the same sequence run alone, unpadded.
        for i, n in enumerate(lengths):
            torch.testing.assert_close(model(x[i:i + 1, :n]), logits[i:i + 1], rtol=1e-4, atol=1e-5)
        # Sanity: without the mask the pads are read, so the garbage shows.
        assert not torch.allclose(model(other)[1:], model(x)[1:], atol=1e-3)


def test_tokens_readout_with_mask_reads_the_last_real_tokens(make_backbone):
    spec = TaskSpec(input_type="continuous", input_dim=2, max_tokens=8, num_classes=2, num_labels=3,
                    readout="tokens", readout_tokens=3, padded=True)
    model = FPT(make_backbone("llama"), spec, ModelConfig()).eval()
    x = torch.randn(2, 8, 2)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 6])[:, None]
    with torch.no_grad():
        hidden = model.backbone(model.embed(x), attention_mask=mask)
        feats = model.features(x, mask)
    torch.testing.assert_close(feats[0], hidden[0, 5:8])
    torch.testing.assert_close(feats[1], hidden[1, 3:6])


# -- positions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_rope_backbones_get_a_learned_position_table(make_backbone, arch):
    task = xor(4)
    model = FPT(make_backbone(arch), task.spec, ModelConfig())
    table = model.position_table
    assert table is not None and table.weight.shape == (8, 64) and table.weight.requires_grad
    # Init: the token embeddings' scale, and never an all-zero row.
    std = model.backbone.embedding_std
    assert std > 0
    assert float(table.weight.detach().std()) == pytest.approx(std, rel=0.15)
    assert bool((table.weight.abs().sum(1) > 0).all())
    # It is added to the input: two equal tokens at different positions embed differently.
    x = torch.ones(1, 8, 1)
    h = model.embed(x)
    torch.testing.assert_close(h[0] - model.input_layer(x)[0], table.weight)
    # Turned off on request.
    assert FPT(make_backbone(arch), task.spec, ModelConfig(learned_positions=False)).position_table is None


def test_gpt2_uses_its_own_wpe(make_backbone):
    task = xor(4)
    model = FPT(make_backbone("gpt2"), task.spec, ModelConfig(freeze="fpt"))
    assert model.backbone.learned_positions
    assert model.position_table is None
    assert model.backbone.model.wpe.weight.requires_grad
    assert not model.backbone.model.wte.weight.requires_grad
    frozen = FPT(make_backbone("gpt2"), task.spec, ModelConfig(freeze="+ln"))
    assert not frozen.backbone.model.wpe.weight.requires_grad


def test_lstm_has_no_positions(lstm_backbone):
    model = FPT(lstm_backbone, xor(4).spec, ModelConfig())
    assert model.position_table is None
    assert lstm_backbone.max_positions is None and lstm_backbone.hidden_size == 32
    assert lstm_backbone.model.lstm.num_layers == 1


# -- input layer scale ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("vit", "deit")])  # ViT: no token table (test_backbones)
@pytest.mark.parametrize("input_dim", [5, 100])  # narrower and wider than the 64-wide backbone
def test_input_layer_matches_token_embedding_scale(make_backbone, arch, input_dim):
    backbone = make_backbone(arch)
    table_std = float(backbone.token_embedding().weight.detach().std())
    assert backbone.embedding_std == pytest.approx(table_std, rel=1e-4)
    width = backbone.input_size  # 64, but 32 for the ELECTRA-small-style tiny config
    spec = TaskSpec(input_type="continuous", input_dim=input_dim, max_tokens=4, num_classes=2)
    model = FPT(backbone, spec, ModelConfig())
    torch.manual_seed(0)
    x = torch.randn(4096, input_dim)  # unit-variance inputs
    with torch.no_grad():
        out = model.input_layer(x)
    assert float(out.std()) == pytest.approx(table_std, rel=0.1)
    if input_dim >= width:  # orthonormal rows: every output coordinate has the target std, not just the mean
        per_coordinate = out.std(0)
        assert float(per_coordinate.min()) > 0.9 * table_std and float(per_coordinate.max()) < 1.1 * table_std


def test_paper_input_init_is_orthogonal_with_gain(make_backbone):
    spec = TaskSpec(input_type="continuous", input_dim=5, max_tokens=4, num_classes=2)
    model = FPT(make_backbone("gpt2"), spec, ModelConfig(input_init="paper", input_gain=1.41))
    w = model.input_layer.weight  # [64, 5]: orthonormal columns times the gain
    torch.testing.assert_close(w.T @ w, 1.41 ** 2 * torch.eye(5), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="input_init"):
        FPT(make_backbone("gpt2"), spec, ModelConfig(input_init="xavier"))


def test_discrete_inputs_use_an_embedding_at_the_token_scale(make_backbone):
    spec = TaskSpec(input_type="discrete", input_dim=500, max_tokens=4, num_classes=2)
    backbone = make_backbone("llama")
    model = FPT(backbone, spec, ModelConfig())
    assert isinstance(model.input_layer, torch.nn.Embedding)
    assert model.input_layer.weight is not backbone.token_embedding().weight
    assert float(model.input_layer.weight.detach().std()) == pytest.approx(backbone.embedding_std, rel=0.1)


# -- limits --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_too_long_sequences_are_refused(make_backbone, arch):
    task = xor(40)  # 80 tokens; the tiny backbones accept 64 (ViT 65: its CLS row; DeiT 66)
    limit = make_backbone(arch).max_positions
    assert limit == {"vit": 65, "deit": 66}.get(arch, 64)
    with pytest.raises(ValueError, match=rf"up to 80 tokens .* at most {limit}"):
        FPT(make_backbone(arch), task.spec, ModelConfig())
    FPT(make_backbone(arch), xor(32).spec, ModelConfig())  # exactly 64 is fine


def test_lstm_takes_any_length(lstm_backbone):
    model = FPT(lstm_backbone, xor(40).spec, ModelConfig())
    assert model(torch.randn(2, 80, 1)).shape == (2, 40, 2)


# -- it learns -----------------------------------------------------------------------------------
def test_fpt_overfits_a_fixed_batch(make_backbone):
    """16 samples of 3-bit XOR, tiny random GPT-2 with only FPT's parameters training."""
    torch.manual_seed(0)
    task = xor(3)
    model = FPT(make_backbone("gpt2"), task.spec, ModelConfig(freeze="fpt"))
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = task.train().batch(range(16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # frozen ones get no grad: Adam skips them
    first_loss = None
    for _ in range(800):
        logits = model(batch["x"])
        loss = F.cross_entropy(logits.reshape(-1, 2), batch["y"].reshape(-1))
        value = float(loss.detach())
        first_loss = first_loss if first_loss is not None else value
        accuracy = float((logits.argmax(-1) == batch["y"]).float().mean())
        if accuracy == 1.0 and value < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert accuracy == 1.0
    assert value < 0.05 < math.log(2) * 0.9 < first_loss
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n


def test_dropped_blocks_load_quietly_and_missing_weights_warn(tmp_path, capfd):
    """--layers K drops blocks without transformers' "unexpected keys" report; weights missing from a
    checkpoint (they would start random) are named in a warning."""
    import warnings

    from safetensors.torch import load_file, save_file

    from conftest import save_pretrained_dir
    from fpt.backbones import load_backbone

    path = save_pretrained_dir("llama", tmp_path / "llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = load_backbone(path, layers=1)
    assert backbone.num_layers == 1
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err and "LOAD REPORT" not in out + err
    weights = tmp_path / "llama" / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = next(k for k in tensors if k.endswith("layers.0.mlp.up_proj.weight"))
    del tensors[dropped]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 weights are not in its checkpoint and start random \(e\.g\. .*up_proj"):
        load_backbone(path, layers=1)
