"""Cached-feature mode (``cache_features: true``, freeze ``output-only`` only).

When only the output head trains, everything before it — input layer, positions, the frozen
blocks, the read-out — is a fixed function of the input, so its output at the read-out positions
(``FPT.features``: ``[R, H]`` per sample) is computed once per sample and the head trains on those
vectors: a training step becomes one small matrix product. Validation and test splits are cached
whole (and reused by every validation pass).

Training data:

* finite datasets (``ArraySplit`` tasks: images, homology, ListOps files...): every training
  sample is cached once, and the training stream keeps walking the task's own seeded per-epoch
  permutations, so the batches are exactly those of an uncached run. Random augmentation (e.g.
  ``cifar10``'s crop + flip) cannot be cached: such a task is refused unless augmentation is off;
* generated tasks (endless streams: bit-xor, bit-memory, generated ListOps): the first
  ``cache_train_samples`` stream positions are cached (default 0 = ``steps x batch_size``: exactly
  the samples an uncached run draws, so both give the same model). A smaller number makes the
  training set **finite**: position ``p`` reads row ``p mod N`` in the first pass over the cache and
  seeded permutations of it afterwards, so the model sees each cached sample many times.

Caches up to ``cache_memory_mb`` stay in memory; larger ones are written (streamed, never held in
memory at once) to ``RUN_DIR/features/<split>.safetensors`` and memory-mapped; the file records a
key of everything the features depend on, so a resumed run reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fpt.data.splits import Split
from fpt.model import fastpath

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
              torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8", torch.int16: "I16", torch.int8: "I8"}
_NP_FOR_ST = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "I64": np.int64, "I32": np.int32,
              "BOOL": np.bool_, "U8": np.uint8, "I16": np.int16, "I8": np.int8}


def check_cacheable(model) -> None:
    """Only the output head may train: anything else would change the cached outputs."""
    moving = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    if moving:
        raise ValueError(
            "cache_features needs freeze output-only: the frozen network's outputs must not change during "
            f"training, but {len(moving)} parameters before the head train ({', '.join(moving[:3])}...). "
            "Use --freeze output-only, or turn cache_features off."
        )


class FeatureSplit(Split):
    """Cached read-out features: ``batch(positions)`` -> ``{"features": [B, R, H], "y": ...}``.

    ``rows(positions)`` maps stream positions (training) or indices (evaluation) to cache rows.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], rows: Callable[[np.ndarray], np.ndarray] | None = None):
        self.tensors = tensors
        self.n = len(tensors["features"])
        self.rows = rows

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64) if self.rows is None else self.rows(indices)
        idx = torch.from_numpy(np.ascontiguousarray(rows))
        return {k: v[idx] for k, v in self.tensors.items()}


class _StreamRows:
    """Position ``p`` of an endless stream over ``n`` cached rows: row ``p`` in the first pass, then
    the seeded permutation of pass ``p // n`` (picklable, for DataLoader workers)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, np.ndarray] = {}

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        passes, offsets = positions // self.n, positions % self.n
        out = offsets.copy()
        for k in np.unique(passes):
            if k == 0:
                continue
            if int(k) not in self._perms:
                if len(self._perms) > 4:
                    self._perms.clear()
                self._perms[int(k)] = np.random.default_rng([self.seed, 11, int(k)]).permutation(self.n)
            sel = passes == k
            out[sel] = self._perms[int(k)][offsets[sel]]
        return out


class _FiniteRows:
    """A finite training split: position -> the split's own sample index -> the row that holds it."""

    def __init__(self, split, inverse: np.ndarray):
        self.split, self.inverse = split, inverse

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return self.inverse[self.split.positions_to_indices(positions)]


class FeatureCache:
    """Computes and holds the cached features of one run's splits (see the module docstring)."""

    def __init__(self, model, config):
        check_cacheable(model)
        self.model = model
        self.config = config
        self.splits: dict[str, FeatureSplit] = {}
        self.stats: dict[str, dict[str, Any]] = {}  # per split: samples, bytes, seconds, where

    # -- what to cache -----------------------------------------------------------------------
    def _train_plan(self, split: Split) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
        if hasattr(split, "positions_to_indices"):  # a finite dataset (ArraySplit and subclasses)
            transform = getattr(split, "transform", None)
            if getattr(transform, "augment", False):
                raise ValueError(
                    f"cache_features: task {self.config.task!r} augments its training images randomly per batch, "
                    "which cached features cannot reproduce. Turn augmentation off (-o augment=false) or drop "
                    "--cache-features."
                )
            n = len(split)
            sample_of_row = split.positions_to_indices(np.arange(n, dtype=np.int64))  # epoch 0 order
            inverse = np.empty(n, dtype=np.int64)
            inverse[sample_of_row] = np.arange(n, dtype=np.int64)
            return n, _FiniteRows(split, inverse)
        n = self.config.cache_train_samples or self.config.steps * self.config.batch_size
        return int(n), _StreamRows(int(n), self.config.seed)

    # -- public --------------------------------------------------------------------------------
    def split(self, name: str, split: Split, device: torch.device | str = "cpu",
              autocast: Callable[[], Any] | None = None) -> FeatureSplit:
        """The cached version of ``split`` (computed on first use). ``name``: train, val, test-<name>."""
        if name in self.splits:
            return self.splits[name]
        if name == "train":
            n, rows = self._train_plan(split)
        else:
            n, rows = len(split), None
        tensors = self._compute(name, split, n, torch.device(device), autocast or contextlib.nullcontext)
        self.splits[name] = FeatureSplit(tensors, rows)
        return self.splits[name]

    # -- computing -----------------------------------------------------------------------------
    def _key(self, name: str, n: int) -> str:
        model = self.model
        digest = hashlib.sha256()
        c = self.config
        meta = {"identity": model.backbone.identity(), "task": c.task, "options": c.task_options, "seed": c.seed,
                "data_dir": c.data_dir, "split": name, "n": n, "readout": model.readout,
                # as resolved (a resumed run's config names auto's choice: the same features)
                "precision": fastpath.choose_precision(c.precision, fastpath.accelerator_for(c.device))[0],
                "frozen_dtype": str(model.frozen_dtype),
                "input_init": c.input_init, "learned_positions": c.learned_positions}
        digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
        with torch.no_grad():
            for module in (model.input_layer, model.position_table):
                if module is not None:
                    digest.update(module.weight.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    @torch.no_grad()
    def _compute(self, name: str, split: Split, n: int, device: torch.device, autocast) -> dict[str, torch.Tensor]:
        import time

        model = self.model
        batch_size = max(1, self.config.eval_batch_size)
        per_sample = model.readout_tokens * model.backbone.hidden_size * 4
        on_disk = n * per_sample > self.config.cache_memory_mb * 2**20 and self.config.run_dir
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        suffix = f".rank{rank}" if rank else ""  # every process of a DDP run holds its own copy
        path = Path(self.config.run_dir or ".") / "features" / f"{name}{suffix}.safetensors"
        key = self._key(name, n)
        start = time.time()
        if on_disk and path.exists():
            try:
                tensors, meta = _mmap_safetensors(path)
                if meta.get("key") == key:
                    self.stats[name] = {"samples": n, "where": str(path), "seconds": 0.0, "reused": True}
                    return tensors
            except (OSError, ValueError, KeyError):
                pass
        writer = None
        chunks: dict[str, list[torch.Tensor]] = {}
        was_training = model.training
        model.eval()
        try:
            for s in range(0, n, batch_size):
                batch = split.batch(np.arange(s, min(s + batch_size, n), dtype=np.int64))
                x = batch["x"].to(device, non_blocking=True)
                mask = batch.get("mask")
                with autocast():
                    feats = model.features(x, None if mask is None else mask.to(device, non_blocking=True))
                out = {"features": feats.detach()}
                out.update({k: v for k, v in batch.items() if k not in ("x", "mask")})
                out = {k: v.cpu() for k, v in out.items()}
                if on_disk:
                    if writer is None:
                        writer = _StreamingSafetensors(path, n, {k: v for k, v in out.items()}, {"key": key})
                    writer.write(s, out)
                else:
                    for k, v in out.items():
                        chunks.setdefault(k, []).append(v)
        finally:
            model.train(was_training)
        if on_disk:
            writer.close()
            tensors, _ = _mmap_safetensors(path)
        else:
            tensors = {k: torch.cat(v) for k, v in chunks.items()}
        self.stats[name] = {"samples": n, "where": str(path) if on_disk else "memory",
                            "bytes": int(sum(t.numel() * t.element_size() for t in tensors.values())),
                            "seconds": round(time.time() - start, 3), "reused": False}
        return tensors


# -- safetensors written in a stream and read back through a memory map -----------------------------
class _StreamingSafetensors:
    """Writes a safetensors file whose tensors all have ``n`` rows, ``rows`` at a time (a standard file:
    ``safetensors.safe_open`` reads it)."""

    def __init__(self, path: Path, n: int, example: dict[str, torch.Tensor], metadata: dict[str, str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp, self.n = path, path.with_suffix(".tmp"), n
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self.layout = {}
        for k in sorted(example):
            t = example[k]
            row_bytes = t[0].numel() * t.element_size()
            shape = [n] + list(t.shape[1:])
            header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": shape, "data_offsets": [offset, offset + n * row_bytes]}
            self.layout[k] = (offset, row_bytes)
            offset += n * row_bytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.f = open(self.tmp, "wb")
        self.f.write(len(raw).to_bytes(8, "little"))
        self.f.write(raw)
        self.f.truncate(self.data_start + offset)

    def write(self, start: int, rows: dict[str, torch.Tensor]) -> None:
        for k, t in rows.items():
            offset, row_bytes = self.layout[k]
            self.f.seek(self.data_start + offset + start * row_bytes)
            t = t.contiguous()
            self.f.write(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())

    def close(self) -> None:
        self.f.close()
        self.tmp.replace(self.path)


def _mmap_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file as a (copy-on-write) memory map; no data is read up front."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for k, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = math.prod(shape)
        if end - begin != count * np.dtype(_NP_FOR_ST[info["dtype"]]).itemsize:
            raise ValueError(f"{path}: tensor {k} has inconsistent offsets")
        arr = np.memmap(path, dtype=_NP_FOR_ST[info["dtype"]], mode="c", offset=8 + length + begin, shape=shape)
        t = torch.from_numpy(arr)
        out[k] = t.view(torch.bfloat16) if info["dtype"] == "BF16" else t
    return out, meta
