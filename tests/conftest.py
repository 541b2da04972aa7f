"""Shared fixtures: tiny backbones built from configs in temporary directories (nothing is downloaded).

* ``tiny_dirs``: ``{family: directory}`` holding only a ``config.json`` (for ``init="random"``), for
  every family of ``ARCHS``: the decoders gpt2, llama, gpt_neox and the encoders bert, roberta,
  distilbert, electra, vit, deit (``FAMILY_CONFIGS``: one tiny config per family fpt supports);
* ``pretrained_dirs``: the same architectures with ``model.safetensors`` too (for ``init="pretrained"``);
* ``make_backbone(arch)``: a loaded tiny backbone of any of these, or the LSTM (width 32, 1 layer);
* ``lstm_backbone``: ``load_backbone("lstm", init="random", layers=1, lstm_width=32)``;
* ``run_values(backbone_dir, run_dir, **overrides)``: the flat options of a tiny, fast bit-xor run.
"""

from __future__ import annotations

import os

# Two cores shared with other jobs: one intra-op thread avoids oversubscription (10x slower steps).
# fpt.training.fitting.fit reads OMP_NUM_THREADS for its own thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WIDTH = 64
MAX_POSITIONS = 64
DECODERS = ("gpt2", "llama", "gpt_neox")
ENCODERS = ("bert", "roberta", "distilbert", "electra", "vit", "deit")
ARCHS = DECODERS + ENCODERS
BACKBONES = ARCHS + ("lstm",)

# Encoders: 2 blocks of width 64 that accept 64 positions, like the decoders below.
FAMILY_CONFIGS = {
    "bert": ("BertConfig", dict(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4,
                                vocab_size=128, max_position_embeddings=MAX_POSITIONS)),
    # RoBERTa numbers positions from pad_token_id + 1: 66 rows give 64 positions.
    "roberta": ("RobertaConfig", dict(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4,
                                      vocab_size=128, max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=1,
                                      bos_token_id=0, eos_token_id=2)),
    "distilbert": ("DistilBertConfig", dict(n_layers=2, dim=WIDTH, hidden_dim=96, n_heads=4, vocab_size=128,
                                            max_position_embeddings=MAX_POSITIONS)),
    # ELECTRA-small style: embeddings narrower than the blocks (embedding_size 32 -> hidden 64).
    "electra": ("ElectraConfig", dict(num_hidden_layers=2, hidden_size=WIDTH, embedding_size=32, intermediate_size=96,
                                      num_attention_heads=4, vocab_size=128, max_position_embeddings=MAX_POSITIONS)),
    # 32x32 images of 4x4 patches: 64 patch positions (+ the CLS row; DeiT: + the distillation row).
    "vit": ("ViTConfig", dict(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4,
                              image_size=32, patch_size=4)),
    "deit": ("DeiTConfig", dict(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4,
                                image_size=32, patch_size=4)),
}


def tiny_config(arch: str):
    import transformers
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if arch in FAMILY_CONFIGS:
        cls, values = FAMILY_CONFIGS[arch]
        return getattr(transformers, cls)(**values)
    if arch == "gpt2":
        return GPT2Config(n_layer=2, n_embd=WIDTH, n_head=4, n_positions=MAX_POSITIONS, vocab_size=128,
                          bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=128, max_position_embeddings=MAX_POSITIONS,
                           bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neox":  # Pythia-style: parallel residual, rotary on a quarter of each head
        return GPTNeoXConfig(num_hidden_layers=2, hidden_size=WIDTH, intermediate_size=128, num_attention_heads=4,
                             vocab_size=128, max_position_embeddings=MAX_POSITIONS, rotary_pct=0.25,
                             use_parallel_residual=True, bos_token_id=0, eos_token_id=0)
    raise KeyError(arch)


def save_config_dir(config, path) -> str:
    """A directory holding only ``config``'s config.json (for init="random")."""
    config.save_pretrained(str(path))
    return str(path)


def save_pretrained_dir(arch: str, path, seed: int = 0) -> str:
    """A directory with config.json and model.safetensors of a seeded random tiny model."""
    from transformers import AutoModel

    config = tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    out = {}
    for arch in ARCHS:
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        tiny_config(arch).save_pretrained(str(path))
        out[arch] = str(path)
    return out


@pytest.fixture(scope="session")
def pretrained_dirs(tmp_path_factory) -> dict[str, str]:
    return {arch: save_pretrained_dir(arch, tmp_path_factory.mktemp(f"pretrained-{arch}")) for arch in ARCHS}


@pytest.fixture
def make_backbone(tiny_dirs):
    from fpt.backbones import load_backbone

    def make(arch: str, **kwargs):
        if arch == "lstm":
            return load_backbone("lstm", init="random", layers=kwargs.pop("layers", 1), lstm_width=32, **kwargs)
        return load_backbone(tiny_dirs[arch], init=kwargs.pop("init", "random"), **kwargs)

    return make


@pytest.fixture
def lstm_backbone():
    from fpt.backbones import load_backbone

    return load_backbone("lstm", init="random", layers=1, lstm_width=32)


@pytest.fixture(scope="session")
def run_values():
    """Options of a tiny bit-xor run: 3 bits, 16 val / 16 test samples, batch 8, CPU."""

    def values(backbone: str, run_dir, **overrides) -> dict:
        base = {
            "task": "bit-xor", "task_options": {"n_bits": 3, "val_samples": 16, "test_samples": 16},
            "backbone": str(backbone), "init": "random", "steps": 4, "batch_size": 8, "eval_every": 2,
            "eval_batch_size": 16, "device": "cpu", "run_dir": str(run_dir),
        }
        base.update(overrides)
        return base

    return values


@pytest.fixture
def offline_data(monkeypatch, tmp_path):
    """Dataset code may not touch the network, and sees an empty cache and no $FPT_DATA_DIR."""

    def refuse(*a, **k):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr("fpt.data.store.urlopen", refuse)
    monkeypatch.setenv("FPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FPT_DATA_DIR", raising=False)


@pytest.fixture
def base_file(tmp_path, tiny_dirs, run_values):
    """A sweep's base config file (YAML): the tiny GPT-2 run of ``run_values``, without a run directory."""
    import yaml

    values = run_values(tiny_dirs["gpt2"], tmp_path / "unused", label="-small: tiny test")
    values.pop("run_dir")
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# A tiny Llama (RoPE, RMSNorm, grouped-query attention) saved as a local directory: test_perf.py, test_ddp.py.
TINY_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaModel

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(**TINY_LLAMA)).save_pretrained(path)
    return str(path)
