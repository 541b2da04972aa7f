"""Which parameters train under each freeze preset, checked against an independent module walk."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn

from conftest import BACKBONES
from fpt.backbones.freeze import GROUPS, PRESETS, assign_groups, resolve_preset
from fpt.model.network import FPT, ModelConfig
from fpt.tasks import make_task

# Module classes of each architecture, written out here rather than taken from fpt.backbones.freeze.
ATTENTION = {"gpt2": {"GPT2Attention"}, "llama": {"LlamaAttention"}, "gpt_neox": {"GPTNeoXAttention"},
             "bert": {"BertAttention"}, "roberta": {"RobertaAttention"}, "electra": {"ElectraAttention"},
             "distilbert": {"DistilBertSelfAttention"}, "vit": {"ViTAttention"}, "deit": {"DeiTAttention"}}
FEEDFORWARD = {"gpt2": {"GPT2MLP"}, "llama": {"LlamaMLP"}, "gpt_neox": {"GPTNeoXMLP"},
               "bert": {"BertIntermediate", "BertOutput"}, "roberta": {"RobertaIntermediate", "RobertaOutput"},
               "electra": {"ElectraIntermediate", "ElectraOutput"}, "distilbert": {"FFN"},
               "vit": {"ViTMLP"}, "deit": {"DeiTMLP"}}
NORMS = {"llama": "LlamaRMSNorm"}  # every other family: LayerNorm


def xor_task():
    return make_task("bit-xor", {"n_bits": 4, "val_samples": 8, "test_samples": 8})


def _backbone_tables(arch: str, inner: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """(token tables, position tables, extra feed-forward modules) of a backbone, by attribute."""
    tokens = [inner.get_input_embeddings()] if inner.get_input_embeddings() is not None else []
    positions, feedforward = [], []
    if arch == "gpt2":
        positions.append(inner.wpe)
    elif arch in ("bert", "roberta", "electra", "distilbert"):
        positions.append(inner.embeddings.position_embeddings)
        if arch != "distilbert":
            tokens.append(inner.embeddings.token_type_embeddings)  # never trained
        if arch == "electra":
            feedforward.append(inner.embeddings_project)  # 32 -> 64 in the tiny config
    elif arch in ("vit", "deit"):
        positions.append(inner.position_embeddings)
    return tokens, positions, feedforward


def expected_groups(model: FPT) -> dict[str, list[nn.Parameter]]:
    """Parameters per group, by walking the modules of the model (independently of assign_groups):
    a parameter of a norm is ``norm`` even inside an attention or feed-forward block (BERT's post-LN)."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    backbone = model.backbone
    arch = backbone.arch
    groups["input"] += list(model.input_layer.parameters())
    if model.summary_token is not None:
        groups["input"] += list(model.summary_token.parameters())
    groups["output"] += list(model.head.parameters())
    if model.position_table is not None:
        groups["positions"] += list(model.position_table.parameters())
    inner = backbone.model
    if arch == "lstm":
        groups["recurrent"] += list(inner.lstm.parameters())
        return groups
    tokens, positions, extra_ff = _backbone_tables(arch, inner)
    by_identity = {id(m): "token_embedding" for m in tokens}
    by_identity.update({id(m): "positions" for m in positions})
    by_identity.update({id(m): "feedforward" for m in extra_ff})

    def walk(module: nn.Module, ancestors: tuple[str, ...]):
        name = type(module).__name__
        for p in module.parameters(recurse=False):
            if id(module) in by_identity:
                groups[by_identity[id(module)]].append(p)
            elif name == NORMS.get(arch, "LayerNorm"):
                groups["norm"].append(p)
            elif ATTENTION[arch] & set(ancestors + (name,)):
                groups["attention"].append(p)
            elif FEEDFORWARD[arch] & set(ancestors + (name,)):
                groups["feedforward"].append(p)
            else:
                raise AssertionError(f"{arch}: no group for a parameter of {name} under {ancestors}")
        for child in module.children():
            walk(child, ancestors + (name,))

    walk(inner, ())
    return groups


def one_step(model: FPT, task) -> None:
    batch = task.train().batch(range(4))
    logits = model(batch["x"], batch.get("mask"))
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["y"].reshape(-1)).backward()


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arch", BACKBONES)
def test_preset_trains_exactly_its_groups(make_backbone, arch, preset):
    task = xor_task()
    model = FPT(make_backbone(arch), task.spec, ModelConfig(freeze=preset))
    groups = expected_groups(model)

    # The walk above is a partition of all parameters: every one is in exactly one group.
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}

    trained_groups = set(PRESETS[preset])
    expected_trainable = sum(p.numel() for g in trained_groups for p in groups[g])
    assert model.parameter_counts()["trainable"] == expected_trainable
    assert model.parameter_counts()["total"] == sum(p.numel() for p in model.parameters())
    assert expected_trainable > 0

    one_step(model, task)
    for group, params in groups.items():
        for p in params:
            if group in trained_groups:
                assert p.requires_grad and p.grad is not None, (arch, preset, group, p.shape)
            else:
                assert not p.requires_grad and p.grad is None, (arch, preset, group, p.shape)
    # The token table is never trained, whatever the preset.
    assert all(not p.requires_grad for p in groups["token_embedding"])
    # Gradient actually flows into what trains (not only allocated zeros).
    assert any(p.grad.abs().sum() > 0 for g in trained_groups for p in groups[g])

    # The per-group counts apply_freeze reports agree with the walk.
    for group, counts in model.group_counts.items():
        total = sum(p.numel() for p in groups[group])
        assert counts["total"] == total, group
        assert counts["trainable"] == (total if group in trained_groups else 0), group


def test_presets_are_the_papers_ladder():
    assert set(PRESETS["fpt"]) == {"input", "output", "norm", "positions"}
    assert PRESETS["+pos"] == PRESETS["fpt"]
    assert set(PRESETS["output-only"]) == {"output"}
    assert set(PRESETS["+ln"]) == {"output", "norm"}
    assert set(PRESETS["+input"]) == {"output", "norm", "input"}
    assert set(PRESETS["+ff"]) == set(PRESETS["fpt"]) | {"feedforward"}
    assert set(PRESETS["+attn"]) == set(PRESETS["fpt"]) | {"attention"}
    assert set(PRESETS["full"]) == set(GROUPS) - {"token_embedding"}
    for groups in PRESETS.values():
        assert "token_embedding" not in groups


def test_fpt_on_gpt2_trains_layer_norms_wpe_input_and_head_only(make_backbone):
    """The paper's count for GPT-2, spelled out by hand."""
    task = xor_task()
    model = FPT(make_backbone("gpt2"), task.spec, ModelConfig(freeze="fpt"))
    gpt2 = model.backbone.model
    layer_norm = sum(p.numel() for m in gpt2.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    assert layer_norm == (2 * 2 + 1) * 2 * 64  # ln_1, ln_2 per block + ln_f; weight and bias of width 64
    expected = (layer_norm + gpt2.wpe.weight.numel()
                + sum(p.numel() for p in model.input_layer.parameters())
                + sum(p.numel() for p in model.head.parameters()))
    assert model.parameter_counts()["trainable"] == expected
    assert model.position_table is None
    assert gpt2.wpe.weight.requires_grad and not gpt2.wte.weight.requires_grad


def test_explicit_group_list(make_backbone):
    task = xor_task()
    model = FPT(make_backbone("llama"), task.spec, ModelConfig(freeze=["output", "attention"]))
    groups = expected_groups(model)
    expected = sum(p.numel() for g in ("output", "attention") for p in groups[g])
    assert model.parameter_counts()["trainable"] == expected


@pytest.mark.parametrize("bad", [["output", "token_embedding"], ["output", "ffn"]])
def test_bad_group_lists_are_rejected(make_backbone, bad):
    task = xor_task()
    with pytest.raises(ValueError, match="token embedding|unknown parameter groups"):
        FPT(make_backbone("gpt2"), task.spec, ModelConfig(freeze=bad))


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match=r"unknown freeze preset 'fpy'.*Did you mean 'fpt'"):
        resolve_preset("fpy")


def test_pythia_attention_and_llama_rmsnorm_groups(make_backbone):
    task = xor_task()
    neox = FPT(make_backbone("gpt_neox"), task.spec, ModelConfig())
    groups = assign_groups(neox, "gpt_neox")
    block = neox.backbone.model.layers[0]
    assert type(block.attention).__name__ == "GPTNeoXAttention"
    attention_params = [n for n in groups if ".layers.0.attention." in n]
    assert attention_params and all(groups[n] == "attention" for n in attention_params)
    assert all(groups[n] == "feedforward" for n in groups if ".layers.0.mlp." in n)
    assert groups["backbone.model.layers.0.input_layernorm.weight"] == "norm"
    assert groups["backbone.model.final_layer_norm.bias"] == "norm"
    assert groups["backbone.model.embed_in.weight"] == "token_embedding"
    assert groups["position_table.weight"] == "positions"

    llama = FPT(make_backbone("llama"), task.spec, ModelConfig())
    groups = assign_groups(llama, "llama")
    assert type(llama.backbone.model.norm).__name__ == "LlamaRMSNorm"
    assert groups["backbone.model.norm.weight"] == "norm"
    assert groups["backbone.model.layers.1.post_attention_layernorm.weight"] == "norm"
    assert groups["backbone.model.layers.1.self_attn.k_proj.weight"] == "attention"
    assert groups["backbone.model.layers.1.mlp.gate_proj.weight"] == "feedforward"
    assert groups["backbone.model.embed_tokens.weight"] == "token_embedding"
    assert groups["input_layer.weight"] == "input" and groups["head.bias"] == "output"


# -- an architecture fpt has no rules for --------------------------------------------------------
@pytest.fixture
def phi3_backbone(tmp_path):
    from transformers import Phi3Config

    from fpt.backbones import load_backbone
    from fpt.backbones.freeze import SUPPORTED_ARCHITECTURES

    config = Phi3Config(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config.save_pretrained(str(tmp_path))
    backbone = load_backbone(str(tmp_path), init="random")
    assert backbone.arch == "phi3" and "phi3" not in SUPPORTED_ARCHITECTURES
    return backbone


def test_unmapped_architecture_has_its_rules_read_from_the_model(phi3_backbone):
    """Phi-3 has no map entry: its rules are inferred from the module tree, and group exactly as the rules a
    user would write for it by hand."""
    task = xor_task()
    model = FPT(phi3_backbone, task.spec, ModelConfig())
    assert model.freeze_source == "inferred" and phi3_backbone.build["freeze_rules_from"] == "inferred"
    assert model.inferred_rules == {"norm": ["Phi3RMSNorm"], "attention": ["Phi3Attention"], "feedforward": ["Phi3MLP"]}
    assert model.inferred_rules_yaml.splitlines()[0] == "freeze_rules:"
    by_hand = {"norm": ["Phi3RMSNorm"], "attention": ["Phi3Attention"], "feedforward": ["Phi3MLP"]}
    assert assign_groups(model, "phi3") == assign_groups(model, "phi3", by_hand)


def test_ambiguous_architecture_needs_rules(tmp_path):
    """XLM with language embeddings: a 2-row table beside the token table is neither a position table nor (no
    type_vocab_size) a token-type table: inference names it, and the family needs freeze_rules."""
    from transformers import XLMConfig

    from fpt.backbones import load_backbone

    XLMConfig(n_layers=1, emb_dim=32, n_heads=4, vocab_size=64, n_langs=2, use_lang_emb=True,
              max_position_embeddings=32).save_pretrained(str(tmp_path))
    backbone = load_backbone(str(tmp_path), init="random")
    task = xor_task()
    with pytest.raises(ValueError, match=r"no freezing rules for architecture 'xlm': fpt could not read them from the "
                                         r"model .*lang_embeddings \(Embedding 2x32\).*freeze_rules"):
        FPT(backbone, task.spec, ModelConfig())
    rules = {"norm": ["LayerNorm"], "attention": ["MultiHeadAttention"], "feedforward": ["TransformerFFN"],
             "positions": ["position_embeddings"], "token_embedding": ["lang_embeddings"]}
    model = FPT(backbone, task.spec, ModelConfig(freeze_rules=rules))
    assert model.freeze_source == "freeze_rules"
    assert not backbone.model.lang_embeddings.weight.requires_grad
    assert backbone.model.position_embeddings.weight.requires_grad


def test_unknown_architecture_with_rules(phi3_backbone):
    task = xor_task()
    rules = {"norm": ["Phi3RMSNorm"], "attention": ["Phi3Attention"], "feedforward": ["Phi3MLP"]}
    model = FPT(phi3_backbone, task.spec, ModelConfig(freeze="fpt", freeze_rules=rules))
    inner = model.backbone.model
    norms = sum(p.numel() for m in inner.modules() if type(m).__name__ == "Phi3RMSNorm" for p in m.parameters())
    assert norms == (2 * 2 + 1) * 64
    expected = norms + sum(p.numel() for m in (model.input_layer, model.head, model.position_table)
                           for p in m.parameters())
    assert model.parameter_counts()["trainable"] == expected
    assert not inner.embed_tokens.weight.requires_grad
    assert not inner.layers[0].self_attn.qkv_proj.weight.requires_grad
    one_step(model, task)
    assert inner.layers[0].input_layernorm.weight.grad is not None
    assert inner.layers[0].mlp.down_proj.weight.grad is None


def test_incomplete_rules_name_the_unclaimed_parameters(phi3_backbone):
    task = xor_task()
    with pytest.raises(ValueError, match=r"do not cover .*mlp.*freeze_rules"):
        FPT(phi3_backbone, task.spec, ModelConfig(freeze_rules={"norm": ["Phi3RMSNorm"], "attention": ["Phi3Attention"]}))
    with pytest.raises(ValueError, match="unknown group 'mlp'"):
        FPT(phi3_backbone, task.spec, ModelConfig(freeze_rules={"mlp": ["Phi3MLP"]}))
