"""The shipped GPT-2 family and ViT-B/16 configs: the paper's architectures offline, and a fast, clear failure for weights."""

from __future__ import annotations

import json
import time

import pytest

from fpt.backbones.shipped import SHIPPED, BackboneUnavailable, shipped_config_dir

ARCH = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20), "gpt2-xl": (1600, 48, 25)}


def test_shipped_configs_hold_the_published_architectures():
    from transformers import AutoConfig, GPT2Config

    assert set(SHIPPED) == set(ARCH) | {"vit-base-patch16-224"}
    for name, (width, layers, heads) in ARCH.items():
        path = shipped_config_dir(name) / "config.json"
        assert path.is_file() and path.stat().st_size < 4096  # a few KB of package data
        config = AutoConfig.from_pretrained(str(shipped_config_dir(name)))
        assert (config.model_type, config.n_embd, config.n_layer, config.n_head) == ("gpt2", width, layers, heads)
        assert (config.n_positions, config.vocab_size, config.activation_function) == (1024, 50257, "gelu_new")
        assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.1
    # GPT-2 base is transformers' GPT2Config default
    base = json.loads((shipped_config_dir("gpt2") / "config.json").read_text())
    default = GPT2Config().to_dict()
    for key in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size", "layer_norm_epsilon", "initializer_range",
                "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        assert base[key] == default[key], key


def test_random_gpt2_builds_offline_from_the_shipped_config(capsys):
    from fpt.backbones import load_backbone

    backbone = load_backbone("gpt2", init="random", layers=1)
    assert (backbone.arch, backbone.hidden_size, backbone.num_layers, backbone.max_positions) == ("gpt2", 768, 1, 1024)
    assert backbone.model.config.resid_pdrop == 0.0  # fpt's default backbone_dropout
    assert "shipped copy" in capsys.readouterr().err
    assert load_backbone("openai-community/gpt2-medium", init="random", layers=1).hidden_size == 1024


def test_shipped_vit_is_the_hubs_vit_b16_and_transformers_default():
    from transformers import AutoConfig, ViTConfig

    assert SHIPPED["vit-base-patch16-224"] == "google/vit-base-patch16-224"
    config = AutoConfig.from_pretrained(str(shipped_config_dir("google/vit-base-patch16-224")))
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == ("vit", 768, 12, 12)
    assert (config.image_size, config.patch_size, config.intermediate_size) == (224, 16, 3072)
    shipped = json.loads((shipped_config_dir("vit-base-patch16-224") / "config.json").read_text())
    default = ViTConfig().to_dict()
    for key in set(shipped) - {"architectures", "model_type"}:
        assert shipped[key] == default[key], key


def test_random_vit_builds_offline_and_pretrained_fails_at_once(capsys):
    from fpt.backbones import load_backbone

    backbone = load_backbone("google/vit-base-patch16-224", init="random", layers=1)
    assert (backbone.arch, backbone.hidden_size, backbone.num_layers) == ("vit", 768, 1)
    assert backbone.max_positions == 197  # ViT's position table: 14 x 14 patches and the CLS row
    assert "shipped copy" in capsys.readouterr().err
    with pytest.raises(BackboneUnavailable, match="--init random") as err:
        load_backbone("google/vit-base-patch16-224", init="pretrained", layers=1)
    assert "ViT-B/16" in str(err.value) and "gpt2" not in str(err.value).lower()


def test_pretrained_gpt2_offline_fails_at_once_naming_what_to_run():
    from fpt.backbones import load_backbone

    with pytest.raises(BackboneUnavailable, match="smollm2") as err:
        load_backbone("gpt2-large", init="pretrained", layers=1)
    assert "--init random" in str(err.value) and "4-bit" in str(err.value)


def test_cli_names_the_presets_smollm2_variant(tmp_path, capsys):
    from fpt.cli.main import main

    assert main(["fit", "--config", "bit-xor", "--layers", "1", "--steps", "1", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "fpt fit --config bit-xor-smollm2" in err and not (tmp_path / "r").exists()


def test_every_plain_paper_preset_is_gpt2_and_has_a_smollm2_variant():
    from fpt.config.files import list_presets, read_yaml

    presets = list_presets()
    for task in ("bit-memory", "bit-xor", "listops", "mnist", "cifar10", "cifar10-lra", "remote-homology"):
        assert read_yaml(task)["backbone"] == ("gpt2-large" if task == "cifar10" else "gpt2"), task
        variant = read_yaml(f"{task}-smollm2")
        assert variant["backbone"] == "smollm2-135m" and "not the paper's GPT-2" in variant["label"]
        assert f"{task}-smollm2" in presets


@pytest.mark.benchmark
def test_pretrained_gpt2_offline_fails_in_seconds():
    """Printed, never asserted: the offline refusal comes at once, not after transformers' ~30 s of retries."""
    from fpt.backbones import load_backbone

    start = time.time()
    with pytest.raises(BackboneUnavailable):
        load_backbone("gpt2-large", init="pretrained", layers=1)
    print(f"offline gpt2-large refused in {time.time() - start:.2f} s")
