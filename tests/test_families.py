"""The family sweep: tiny random models of Hugging Face families (built in code from transformers' config
classes; nothing is downloaded), each trained two steps under every freeze preset, parameters counted
per group; the refused ones refuse with a reason. docs/backbones.md holds the table this sweep produces:
``python tests/test_families.py`` rewrites it (the test fails when it is stale).
"""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import save_config_dir  # noqa: E402
from fpt.backbones.freeze import PRESETS, assign_groups  # noqa: E402
from fpt.model import FPT, ModelConfig  # noqa: E402
from fpt.data.splits import TaskSpec  # noqa: E402

H = 32  # width of every tiny model
_TEXT = dict(num_hidden_layers=2, hidden_size=H, intermediate_size=64, num_attention_heads=4, vocab_size=128,
             max_position_embeddings=64)
_IDS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)
_ROBERTA = dict(_TEXT, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2)
_VISION = dict(num_hidden_layers=2, hidden_size=H, intermediate_size=64, num_attention_heads=4, image_size=32,
               patch_size=4)

# family: (config class, its arguments, kind, position scheme). Kind: decoder (causal), encoder, vision.
FAMILIES = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=H, n_head=4, n_positions=64, vocab_size=128, **_IDS), "decoder",
             "learned"),
    "gpt_neo": ("GPTNeoConfig", dict(num_layers=2, hidden_size=H, num_heads=4, vocab_size=128, max_position_embeddings=64,
                                     attention_types=[[["global", "local"], 1]], window_size=8, **_IDS), "decoder",
                "learned"),
    "gptj": ("GPTJConfig", dict(n_layer=2, n_embd=H, n_head=4, n_positions=64, vocab_size=128, rotary_dim=4, **_IDS),
             "decoder", "rotary"),
    "gpt_neox": ("GPTNeoXConfig", dict(_TEXT, rotary_pct=0.25, **_IDS), "decoder", "rotary"),
    "opt": ("OPTConfig", dict(num_hidden_layers=2, hidden_size=H, ffn_dim=64, num_attention_heads=4, vocab_size=128,
                              max_position_embeddings=64, word_embed_proj_dim=H, pad_token_id=1, bos_token_id=0,
                              eos_token_id=0), "decoder", "learned"),
    "bloom": ("BloomConfig", dict(n_layer=2, hidden_size=H, n_head=4, vocab_size=128, **_IDS), "decoder", "alibi"),
    "falcon": ("FalconConfig", dict(num_hidden_layers=2, hidden_size=H, num_attention_heads=4, vocab_size=128,
                                    max_position_embeddings=64, **_IDS), "decoder", "rotary"),
    "llama": ("LlamaConfig", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "mistral": ("MistralConfig", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "qwen2": ("Qwen2Config", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "qwen3": ("Qwen3Config", dict(_TEXT, num_key_value_heads=2, head_dim=8, **_IDS), "decoder", "rotary"),
    "phi": ("PhiConfig", dict(_TEXT, **_IDS), "decoder", "rotary"),
    "phi3": ("Phi3Config", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "gemma": ("GemmaConfig", dict(_TEXT, num_key_value_heads=2, head_dim=8, **_IDS), "decoder", "rotary"),
    "gemma2": ("Gemma2Config", dict(_TEXT, num_key_value_heads=2, head_dim=8, **_IDS), "decoder", "rotary"),
    "olmo": ("OlmoConfig", dict(_TEXT, **_IDS), "decoder", "rotary"),
    "stablelm": ("StableLmConfig", dict(_TEXT, num_key_value_heads=4, **_IDS), "decoder", "rotary"),
    "starcoder2": ("Starcoder2Config", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(n_layer=2, n_embd=H, n_head=4, n_positions=64, vocab_size=128, **_IDS),
                    "decoder", "learned"),
    "codegen": ("CodeGenConfig", dict(n_layer=2, n_embd=H, n_head=4, n_positions=64, n_ctx=64, vocab_size=128,
                                      rotary_dim=4, **_IDS), "decoder", "rotary"),
    "mpt": ("MptConfig", dict(n_layers=2, d_model=H, n_heads=4, vocab_size=128, max_seq_len=64), "decoder", "alibi"),
    "biogpt": ("BioGptConfig", dict(_TEXT, **_IDS), "decoder", "learned"),
    "xglm": ("XGLMConfig", dict(num_layers=2, d_model=H, ffn_dim=64, attention_heads=4, vocab_size=128,
                                max_position_embeddings=64, **_IDS), "decoder", "sinusoidal"),
    "persimmon": ("PersimmonConfig", dict(_TEXT, **_IDS), "decoder", "rotary"),
    "granite": ("GraniteConfig", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "cohere": ("CohereConfig", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "olmo2": ("Olmo2Config", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "gemma3_text": ("Gemma3TextConfig", dict(_TEXT, num_key_value_heads=2, head_dim=8, **_IDS), "decoder", "rotary"),
    "nemotron": ("NemotronConfig", dict(_TEXT, num_key_value_heads=2, **_IDS), "decoder", "rotary"),
    "mixtral": ("MixtralConfig", dict(_TEXT, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, **_IDS),
                "decoder", "rotary"),
    "qwen2_moe": ("Qwen2MoeConfig", dict(_TEXT, num_key_value_heads=2, num_experts=2, num_experts_per_tok=1,
                                         moe_intermediate_size=32, shared_expert_intermediate_size=32, **_IDS),
                  "decoder", "rotary"),
    "bert": ("BertConfig", dict(_TEXT), "encoder", "learned"),
    "ernie": ("ErnieConfig", dict(_TEXT), "encoder", "learned"),
    "megatron-bert": ("MegatronBertConfig", dict(_TEXT), "encoder", "learned"),
    "rembert": ("RemBertConfig", dict(_TEXT, input_embedding_size=16, output_embedding_size=16), "encoder", "learned"),
    "squeezebert": ("SqueezeBertConfig", dict(_TEXT, embedding_size=H), "encoder", "learned"),
    "data2vec-text": ("Data2VecTextConfig", dict(_ROBERTA), "encoder", "learned"),
    "esm": ("EsmConfig", dict(_ROBERTA, mask_token_id=2), "encoder", "learned"),
    "roberta": ("RobertaConfig", dict(_ROBERTA), "encoder", "learned"),
    "xlm-roberta": ("XLMRobertaConfig", dict(_ROBERTA), "encoder", "learned"),
    "camembert": ("CamembertConfig", dict(_ROBERTA), "encoder", "learned"),
    "electra": ("ElectraConfig", dict(_TEXT, embedding_size=16), "encoder", "learned"),
    "distilbert": ("DistilBertConfig", dict(n_layers=2, dim=H, hidden_dim=64, n_heads=4, vocab_size=128,
                                            max_position_embeddings=64), "encoder", "learned"),
    "albert": ("AlbertConfig", dict(_TEXT, embedding_size=16), "encoder", "learned"),
    "deberta": ("DebertaConfig", dict(_TEXT), "encoder", "learned"),
    "deberta-v2": ("DebertaV2Config", dict(_TEXT, relative_attention=True, position_biased_input=False,
                                           position_buckets=32, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                           max_relative_positions=-1), "encoder", "relative"),
    "mpnet": ("MPNetConfig", dict(_TEXT), "encoder", "learned"),
    "modernbert": ("ModernBertConfig", dict(_TEXT, **_IDS, cls_token_id=0, sep_token_id=0), "encoder", "rotary"),
    "xlm": ("XLMConfig", dict(n_layers=2, emb_dim=H, n_heads=4, vocab_size=128, max_position_embeddings=64),
            "encoder", "learned"),
    "t5": ("T5Config", dict(num_layers=2, d_model=H, d_ff=64, num_heads=4, d_kv=8, vocab_size=128), "encoder",
           "relative"),
    "mt5": ("MT5Config", dict(num_layers=2, d_model=H, d_ff=64, num_heads=4, d_kv=8, vocab_size=128), "encoder",
            "relative"),
    "umt5": ("UMT5Config", dict(num_layers=2, d_model=H, d_ff=64, num_heads=4, d_kv=8, vocab_size=128), "encoder",
             "relative"),
    "vit": ("ViTConfig", dict(_VISION), "vision", "learned"),
    "deit": ("DeiTConfig", dict(_VISION), "vision", "learned"),
    "dinov2": ("Dinov2Config", dict(num_hidden_layers=2, hidden_size=H, mlp_ratio=2, num_attention_heads=4,
                                    image_size=32, patch_size=4), "vision", "learned"),
    "beit": ("BeitConfig", dict(_VISION), "vision", "none"),
    "swin": ("SwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                window_size=4), "vision", "relative"),
}
# Families that cannot take fpt's input sequence: each is refused with this reason (a part of the message).
REFUSED = {
    "bart": ("BartConfig", dict(encoder_layers=1, decoder_layers=1, d_model=H, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=128,
                                max_position_embeddings=64), "encoder-decoder, and transformers has no class for its "
                                                             "encoder half"),
    "beit (relative position bias)": ("BeitConfig", dict(_VISION, use_relative_position_bias=True),
                                      "relative position bias indexed by pairs of cells"),
    "convnext": ("ConvNextConfig", dict(hidden_sizes=[16, 32], depths=[1, 1], image_size=32),
                 "takes no inputs_embeds"),
}
KIND_TEXT = {"decoder": "decoder", "encoder": "encoder", "vision": "vision"}
POSITION_TEXT = {"learned": "learned absolute (trains under `fpt`)", "rotary": "rotary (fpt adds its table)",
                 "alibi": "ALiBi (fpt adds its table)", "relative": "relative (fpt adds its table)",
                 "sinusoidal": "sinusoidal, fixed (fpt adds its table)",
                 "none": "none (fpt adds its table)"}


def config_of(spec):
    import transformers

    cls, values = spec[0], spec[1]
    return getattr(transformers, cls)(**values)


@functools.lru_cache(maxsize=None)
def family_dir(family: str) -> str:
    import tempfile

    spec = FAMILIES.get(family) or REFUSED[family]
    return save_config_dir(config_of(spec), Path(tempfile.mkdtemp(prefix=f"fpt-family-{family.split()[0]}-")))


@functools.lru_cache(maxsize=None)
def family_backbone(family: str):
    from fpt.backbones import load_backbone

    return load_backbone(family_dir(family), init="random")


def task_spec(backbone) -> TaskSpec:
    """Sequences of 8 tokens of 3 values, one label of 3 classes (the patch grid's length for Swin)."""
    return TaskSpec(input_type="continuous", input_dim=3, max_tokens=backbone.sequence_length or 8, num_classes=3)


def train_steps(model: FPT, steps: int = 2) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, model.spec.max_tokens, 3, generator=generator)
    y = torch.randint(0, 3, (4,), generator=generator)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x)[:, 0], y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_under_every_preset(family):
    """Every preset trains exactly its groups (params change), freezes the rest (unchanged), counts add up."""
    backbone = family_backbone(family)
    kind, scheme = FAMILIES[family][2], FAMILIES[family][3]
    assert backbone.causal is (kind == "decoder"), "causality measured on the model"
    assert backbone.learned_positions is (scheme == "learned")
    spec = task_spec(backbone)
    for preset in PRESETS:
        torch.manual_seed(0)
        model = FPT(copy.deepcopy(backbone), spec, ModelConfig(freeze=preset))
        groups = assign_groups(model, backbone.arch, model.config.freeze_rules)
        params = dict(model.named_parameters())
        assert set(groups) == set(params), "every parameter in exactly one group"
        trained = set(PRESETS[preset])
        counts = model.group_counts
        assert sum(c["total"] for c in counts.values()) == model.parameter_counts()["total"]
        assert model.parameter_counts()["trainable"] == sum(c["total"] for g, c in counts.items() if g in trained)
        assert all(c["trainable"] == 0 for g, c in counts.items() if g not in trained)
        assert counts["input"]["trainable"] > 0 or preset in ("output-only", "+ln")
        if "token_embedding" in counts:
            assert counts["token_embedding"]["trainable"] == 0
        before = {n: p.detach().clone() for n, p in params.items()}
        losses = train_steps(model)
        assert all(torch.isfinite(torch.tensor(losses))), (preset, losses)
        for name, p in params.items():
            moved = not torch.equal(before[name], p.detach())
            if groups[name] not in trained:
                assert not moved, (preset, name)
        assert any(not torch.equal(before[n], p.detach()) for n, p in params.items() if groups[n] in trained)
        # the backbone itself: frozen blocks under fpt, norms trained where it has any
        if preset == "fpt" and "norm" in counts:
            assert any(not torch.equal(before[n], params[n].detach()) for n in params if groups[n] == "norm")


@pytest.mark.parametrize("family", [f for f, spec in FAMILIES.items() if spec[2] != "decoder" and f != "swin"])
def test_encoder_families_mask_their_padding(family):
    """Bidirectional families: pads never reach the real tokens when the mask says so."""
    backbone = family_backbone(family).eval()
    h = torch.randn(2, 7, backbone.input_size)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    garbage = h.clone()
    garbage[1, 4:] = 50 * torch.randn(3, backbone.input_size)
    with torch.no_grad():
        out = backbone(h, attention_mask=mask)
        torch.testing.assert_close(backbone(garbage, attention_mask=mask)[1, :4], out[1, :4], rtol=1e-4, atol=1e-4)


def inferred_families():
    return [f for f in FAMILIES if family_backbone(f).build["freeze_rules_from"] == "inferred"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "bert", "roberta", "electra",
                                    "distilbert", "vit", "deit", "deberta-v2"])
def test_inferred_rules_group_mapped_families_as_the_map_does(family):
    """Both paths agree where both apply: inference on a mapped family gives the map's grouping
    (DeBERTa-v2 here without relative positions; with them, its relative table is what inference cannot place)."""
    from fpt.backbones.infer import infer_freeze_rules

    backbone = family_backbone(family) if family != "deberta-v2" else _deberta_v2_absolute()
    assert backbone.build["freeze_rules_from"] == "map"
    model = FPT(backbone, task_spec(backbone), ModelConfig())
    backbone.inferred_rules = infer_freeze_rules(backbone.model, backbone.model.config)
    assert assign_groups(model, backbone.arch, use_map=False) == assign_groups(model, backbone.arch)


def _deberta_v2_absolute():
    import transformers

    from fpt.backbones import load_backbone

    import tempfile

    directory = save_config_dir(transformers.DebertaV2Config(**_TEXT), Path(tempfile.mkdtemp()))
    return load_backbone(directory, init="random")


def test_inference_refuses_what_it_cannot_place(tmp_path):
    """DeBERTa-v3's relative table has as many rows as a position table and sits outside the embeddings: ambiguous,
    so the family keeps its map entry; inference names the module."""
    from fpt.backbones.infer import InferenceError, infer_freeze_rules

    backbone = family_backbone("deberta-v2")
    assert backbone.build["freeze_rules_from"] == "map"
    with pytest.raises(InferenceError, match=r"encoder.rel_embeddings \(Embedding"):
        infer_freeze_rules(backbone.model, backbone.model.config)
    groups = assign_groups(FPT(backbone, task_spec(backbone), ModelConfig()), "deberta-v2")
    assert groups["backbone.model.encoder.rel_embeddings.weight"] == "attention"
    assert groups["backbone.model.encoder.LayerNorm.weight"] == "norm"


def test_inferred_rules_are_the_yaml_a_user_could_write():
    """The printed freeze_rules, given back as the config's freeze_rules, freeze exactly the same parameters."""
    import yaml

    for family in ("opt", "t5", "albert", "swin"):
        backbone = family_backbone(family)
        model = FPT(copy.deepcopy(backbone), task_spec(backbone), ModelConfig())
        assert model.freeze_source == "inferred"
        rules = yaml.safe_load(model.inferred_rules_yaml)["freeze_rules"]
        given = FPT(copy.deepcopy(backbone), task_spec(backbone), ModelConfig(freeze_rules=rules))
        assert given.freeze_source == "freeze_rules"
        assert assign_groups(given, backbone.arch, rules) == assign_groups(model, backbone.arch)


def test_inferred_groups_by_module_type():
    """Spelled out for OPT (fc1/fc2 sit in the block itself), T5 (a weight-only norm, relative bias inside
    attention, the token table tied under two names) and ALBERT (shared blocks, a dense map before them)."""
    opt = family_backbone("opt")
    groups = assign_groups(FPT(copy.deepcopy(opt), task_spec(opt), ModelConfig()), "opt")
    prefix = "backbone.model.decoder."
    assert groups[prefix + "embed_positions.weight"] == "positions"
    assert groups[prefix + "layers.0.fc1.weight"] == "feedforward"
    assert groups[prefix + "layers.0.self_attn.q_proj.weight"] == "attention"
    assert groups[prefix + "layers.0.self_attn_layer_norm.bias"] == "norm"
    assert groups[prefix + "embed_tokens.weight"] == "token_embedding"
    assert opt.max_positions == 64  # OPT's table has 2 extra rows (its offset)

    t5 = family_backbone("t5")
    assert type(t5.model).__name__ == "T5EncoderModel"  # the encoder half alone: no decoder built
    groups = assign_groups(FPT(copy.deepcopy(t5), task_spec(t5), ModelConfig()), "t5")
    prefix = "backbone.model.encoder.block.0.layer."
    assert groups[prefix + "0.layer_norm.weight"] == "norm"
    assert groups[prefix + "0.SelfAttention.relative_attention_bias.weight"] == "attention"
    assert groups[prefix + "1.DenseReluDense.wi.weight"] == "feedforward"
    assert groups["backbone.model.shared.weight"] == "token_embedding"

    albert = family_backbone("albert")
    groups = assign_groups(FPT(copy.deepcopy(albert), task_spec(albert), ModelConfig()), "albert")
    assert groups["backbone.model.encoder.embedding_hidden_mapping_in.weight"] == "feedforward"
    layer = "backbone.model.encoder.albert_layer_groups.0.albert_layers.0."
    assert groups[layer + "ffn.weight"] == "feedforward" and groups[layer + "attention.query.weight"] == "attention"
    assert groups[layer + "full_layer_layer_norm.weight"] == "norm"
    assert groups["backbone.model.embeddings.token_type_embeddings.weight"] == "token_embedding"
    assert groups["backbone.model.embeddings.position_embeddings.weight"] == "positions"

    mpnet = family_backbone("mpnet")
    groups = assign_groups(FPT(copy.deepcopy(mpnet), task_spec(mpnet), ModelConfig()), "mpnet")
    assert groups["backbone.model.encoder.relative_attention_bias.weight"] == "attention"  # one column per head
    assert mpnet.max_positions == 62  # numbered from padding_idx + 1, as RoBERTa


def test_swin_reads_its_patch_grid_and_pools(tmp_path):
    """Swin: the input layer yields the 8x8 patch grid of width embed_dim; the head reads the pooled output
    (SwinModel's pooler_output, here computed from the same modules); other lengths or read-outs are refused."""
    import transformers

    swin = family_backbone("swin")
    assert (swin.sequence_length, swin.input_size, swin.hidden_size) == (64, 16, 32)
    model = FPT(copy.deepcopy(swin), task_spec(swin), ModelConfig()).eval()
    assert model.readout == "mean"
    x = torch.randn(2, 64, 3)
    reference = transformers.SwinModel(config_of(FAMILIES["swin"])).eval()
    reference.load_state_dict({k: v for k, v in model.backbone.model.state_dict().items()
                               if not k.startswith("position")}, strict=False)
    with torch.no_grad():
        tokens = model.embed(x)
        hidden = reference.encoder(reference.embeddings.norm(tokens), (8, 8)).last_hidden_state
        pooled = reference.pooler(reference.layernorm(hidden).transpose(1, 2)).flatten(1)
        torch.testing.assert_close(model.features(x)[:, 0], pooled)
    for spec, why in ((TaskSpec(input_type="continuous", input_dim=3, max_tokens=16, num_classes=3), "gives 16 tokens"),
                      (TaskSpec(input_type="continuous", input_dim=3, max_tokens=64, num_classes=3, padded=True),
                       "padded"),
                      (TaskSpec(input_type="continuous", input_dim=3, max_tokens=64, num_classes=2, num_labels=64,
                                readout="tokens"), "readout 'tokens'")):
        with pytest.raises(ValueError, match=rf"takes exactly its patch grid of 64 tokens.*{why}"):
            FPT(copy.deepcopy(swin), spec, ModelConfig())
    from fpt.backbones import load_backbone

    with pytest.raises(ValueError, match="--layers: swin stacks stages"):
        load_backbone(family_dir("swin"), init="random", layers=1)


def test_beit_head_reads_the_mean_through_its_pooling_norm():
    beit = family_backbone("beit")
    model = FPT(copy.deepcopy(beit), task_spec(beit), ModelConfig()).eval()
    assert model.readout == "mean" and isinstance(beit.model.pooled_norm, nn.LayerNorm)
    x = torch.randn(2, 8, 3)
    with torch.no_grad():
        hidden = model.backbone(model.embed(x))
        torch.testing.assert_close(model.features(x), model.backbone.model.pooled_norm(hidden.mean(1, keepdim=True)))
    assert model.group_counts["norm"]["total"] == 2 * 2 * 2 * H + 2 * H  # 2 per block + the pooling norm


@pytest.mark.parametrize("family", list(REFUSED))
def test_refused_families_say_why(family):
    from fpt.backbones import load_backbone
    from fpt.backbones.families import FamilyRefused

    with pytest.raises(FamilyRefused, match=REFUSED[family][2]):
        load_backbone(family_dir(family), init="random")


def test_attention_falls_back_to_eager_once_and_is_recorded(capfd):
    from fpt.backbones import families, load_backbone

    families._SAID.clear()
    first = load_backbone(family_dir("bloom"), init="random")
    again = load_backbone(family_dir("bloom"), init="random")
    err = capfd.readouterr().err
    assert err.count("BloomModel has no sdpa attention") == 1 and "using eager" in err
    assert first.build["attn_implementation"] == again.build["attn_implementation"] == "eager"
    assert first.model.config._attn_implementation == "eager"
    assert load_backbone(family_dir("llama"), init="random").build["attn_implementation"] == "sdpa"
    eager = load_backbone(family_dir("llama"), init="random", attn_implementation="eager")
    assert eager.build["attn_implementation"] == "eager"


@pytest.mark.parametrize("family", ["t5", "swin", "dinov2", "beit", "opt", "albert"])
def test_pretrained_directories_load_every_kept_weight_quietly(tmp_path, family):
    """Saved with save_pretrained (T5: the whole encoder-decoder), loaded by fpt: every tensor fpt keeps is one of
    the saved tensors (a vision adapter's position table: the saved one's rows), and nothing is reported missing."""
    import warnings

    from safetensors.torch import load_file
    from transformers import AutoModel

    from fpt.backbones import load_backbone

    torch.manual_seed(0)
    AutoModel.from_config(config_of(FAMILIES[family])).save_pretrained(str(tmp_path))
    stored = list(load_file(str(tmp_path / "model.safetensors")).values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = load_backbone(str(tmp_path))
    for key, tensor in backbone.model.state_dict().items():
        assert any(s.shape == tensor.shape and torch.equal(s, tensor) for s in stored) or any(
            s.dim() == 3 and s[0].shape == tensor.shape and torch.equal(s[0], tensor) for s in stored), key


def test_pretrained_weights_of_a_fallback_family_load_without_a_false_corruption_hint(tmp_path):
    """GPT-Neo has no sdpa: its saved weights load (eager), every tensor as saved; the error hint about truncated
    files is kept for real safetensors errors only."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    from fpt.backbones import load_backbone

    torch.manual_seed(0)
    AutoModel.from_config(config_of(FAMILIES["gpt_neo"])).save_pretrained(str(tmp_path))
    backbone = load_backbone(str(tmp_path))
    stored = load_file(str(tmp_path / "model.safetensors"))
    for key, tensor in backbone.model.state_dict().items():
        assert torch.equal(tensor, stored[key]), key
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_backbone(str(tmp_path))


# -- the table of docs/backbones.md ---------------------------------------------------------------
TABLE_START = "<!-- families: generated by tests/test_families.py -->\n"
TABLE_END = "<!-- end of families -->"


def family_row(family: str) -> str:
    kind, scheme = FAMILIES[family][2], FAMILIES[family][3]
    backbone = family_backbone(family)
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=backbone.sequence_length or 8, num_classes=3)
    model = FPT(copy.deepcopy(backbone), spec, ModelConfig())
    readout = model.readout + (" + its pooling norm" if getattr(backbone.model, "pooled_norm", None) is not None else "")
    if backbone.sequence_length:
        readout += f" (pooled; exactly its {backbone.sequence_length}-token patch grid in)"
    groups = backbone.build["freeze_rules_from"]
    what = {"VisionOnEmbeddings": "its blocks fed directly", "SwinOnEmbeddings": "its stages fed the patch grid"}.get(
        type(backbone.model).__name__, type(backbone.model).__name__)
    status = "trains (8 presets)" if "norm" in model.group_counts else \
        "trains (8 presets; its norms have no weights, so `+ln` trains what `output-only` does)"
    return (f"| `{family}` | {KIND_TEXT[kind]} ({what}) | {groups} | {POSITION_TEXT[scheme]} | {readout} | "
            f"{backbone.build['attn_implementation']} | {status} |")


def family_table() -> str:
    rows = ["| family | kind (what fpt builds) | groups found by | positions | read-out | attention | status |",
            "|---|---|---|---|---|---|---|"]
    rows += [family_row(f) for f in FAMILIES]
    rows += [f"| `{f.split()[0]}`{' ' + f.split(' ', 1)[1] if ' ' in f else ''} | | | | | | refused: "
             f"{REFUSED[f][2]} |" for f in REFUSED]
    return "\n".join(rows) + "\n"


def test_docs_table_is_the_sweeps():
    text = (ROOT / "docs" / "backbones.md").read_text()
    assert TABLE_START in text, "docs/backbones.md lacks the family table: run python tests/test_families.py"
    current = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert current == family_table(), "docs/backbones.md's family table is stale: run python tests/test_families.py"


if __name__ == "__main__":
    path = ROOT / "docs" / "backbones.md"
    text = path.read_text()
    head, rest = text.split(TABLE_START, 1)
    path.write_text(head + TABLE_START + family_table() + TABLE_END + rest.split(TABLE_END, 1)[1])
    print(f"wrote the table of {len(FAMILIES)} + {len(REFUSED)} families into {path}")


# -- the online path, offline: a Hugging Face hub cache laid out as the hub client writes it -------------
MAIN, OLD = "a1" * 20, "b2" * 20  # two commits of acme/tiny-opt: main, and an older pinned one


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE with models--acme--tiny-opt/snapshots/<commit>/{config.json, model.safetensors} for two
    commits (different weights), refs/main naming the first, and acme/remote-code whose config needs its own code;
    offline (FPT_OFFLINE=1), so nothing but the cache is read."""
    import json

    import huggingface_hub.constants
    from transformers import AutoModel

    from fpt.backbones import shipped

    root = tmp_path / "hub"
    repo = root / "models--acme--tiny-opt"
    for seed, commit in ((0, MAIN), (1, OLD)):
        torch.manual_seed(seed)
        AutoModel.from_config(config_of(FAMILIES["opt"])).save_pretrained(str(repo / "snapshots" / commit))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    remote = root / "models--acme--remote-code"
    (remote / "snapshots" / MAIN).mkdir(parents=True)
    config = config_of(FAMILIES["opt"]).to_dict()
    config.update(model_type="acme-custom", auto_map={"AutoConfig": "configuration_acme.AcmeConfig",
                                                      "AutoModel": "modeling_acme.AcmeModel"})
    (remote / "snapshots" / MAIN / "config.json").write_text(json.dumps(config))
    (remote / "refs").mkdir()
    (remote / "refs" / "main").write_text(MAIN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("FPT_OFFLINE", "1")
    shipped.hub_reachable.cache_clear()
    yield repo
    shipped.hub_reachable.cache_clear()


def _weights(repo: Path, commit: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(repo / "snapshots" / commit / "model.safetensors"))


def test_hub_id_resolves_through_the_cache_and_a_pinned_revision(hub_cache):
    from fpt.backbones import load_backbone

    main = load_backbone("acme/tiny-opt")
    pinned = load_backbone("acme/tiny-opt", revision=OLD)
    for backbone, commit in ((main, MAIN), (pinned, OLD)):
        stored = _weights(hub_cache, commit)
        assert all(torch.equal(t, stored[k]) for k, t in backbone.model.state_dict().items())
    assert main.weights_fingerprint != pinned.weights_fingerprint
    assert pinned.build["revision"] == OLD and "revision" not in main.build
    assert load_backbone("acme/tiny-opt", revision=MAIN).weights_fingerprint == main.weights_fingerprint


def test_offline_misses_say_what_the_cache_holds(hub_cache):
    from fpt.backbones import load_backbone, shipped

    with pytest.raises(shipped.BackboneUnavailable,
                       match=rf"revision 'c3c3' of it is not in the Hugging Face cache .*cached: main -> {MAIN[:12]}, "
                             rf"{OLD[:12]}\), and the hub cannot be reached from here \(offline: FPT_OFFLINE"):
        load_backbone("acme/tiny-opt", revision="c3c3")
    with pytest.raises(shipped.BackboneUnavailable, match=r"(?s)nothing of it is cached.*--backbone smollm2-135m"):
        load_backbone("acme/not-there", init="random")


def test_remote_code_is_refused_unless_asked_for(hub_cache):
    from fpt.backbones import load_backbone

    with pytest.raises(ValueError, match=r"ships its own Python code, which fpt does not run by default.*"
                                         r"--trust-remote-code"):
        load_backbone("acme/remote-code", init="random")


def test_fit_records_the_revision_the_rules_and_the_attention(hub_cache, tmp_path, run_values, capsys):
    """fpt fit --backbone acme/tiny-opt --backbone-revision OLD: trains on that commit's weights, prints the inferred
    freezing rules once, and results.json says how the backbone was built and what froze."""
    import json

    from fpt.cli.main import main

    run_dir = tmp_path / "run"
    assert main(["fit", "--task", "bit-xor", "-o", "n_bits=3", "-o", "val_samples=16", "-o", "test_samples=16",
                 "--backbone", "acme/tiny-opt", "--backbone-revision", OLD, "--steps", "2", "--eval-every", "2",
                 "--batch-size", "8", "--device", "cpu", "--run-dir", str(run_dir), "--no-progress-bar"]) == 0
    out = capsys.readouterr().out
    assert out.count("freezing rules read from its modules") == 1 and "  freeze_rules:\n    norm: [LayerNorm]" in out
    results = json.loads((run_dir / "results.json").read_text())
    build = results["backbone_build"]
    assert build["revision"] == OLD and build["class"] == "OPTModel"
    assert build["attn_implementation"] == results["fast_path"]["attention"]  # auto's choice for this CPU
    assert build["freeze_rules_from"] == "inferred"
    assert build["freeze_rules"]["positions"] == ["OPTLearnedPositionalEmbedding"]
    assert sum(g["trainable"] for g in build["parameter_groups"].values()) == results["trainable_params"]
    import yaml

    assert yaml.safe_load((run_dir / "config.yaml").read_text())["backbone_revision"] == OLD


def test_readme_backbone_sentence_is_as_true_as_the_table():
    """The README's promise names what the table shows: decoders, encoders, T5's encoder half, vision transformers,
    this many families trained, refusals with a reason."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"the {len(FAMILIES)} families of [the table](docs/backbones.md) train" in readme
    assert "any Hugging Face model" not in readme
    kinds = {spec[2] for spec in FAMILIES.values()}
    assert kinds == {"decoder", "encoder", "vision"} and "t5" in FAMILIES
    assert "decoders, encoders, T5's encoder half and vision transformers" in readme
