"""The paper's two synthetic bit tasks.

Bits are fed as +1 / -1 (a masked bit in Bit Memory is 0), so every token is a unit-variance
vector with no exactly-zero patch. Labels are the bits themselves, 0 or 1. The 2021 code fed Bit
XOR's bits as 0 / 1 (``datasets/bit_xor.py``): ``bit_values=binary`` (set by ``--protocol paper``);
its Bit Memory used +1 / -1 with 0 for a masked bit, as fpt does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpt.data.splits import GeneratedSplit, TaskSpec
from fpt.base.options import PROBABILITY, at_least, bounded
from fpt.tasks.base import Task, register_task


def _check_patching(n_bits: int, patch_size: int, task: str) -> None:
    if n_bits < 1:
        raise ValueError(f"{task}: n_bits must be >= 1, got {n_bits}")
    if patch_size < 1 or n_bits % patch_size:
        raise ValueError(
            f"{task}: patch_size ({patch_size}) must be >= 1 and divide n_bits ({n_bits}); "
            f"e.g. --task-option patch_size=1"
        )


class _BitTask(Task):
    def _splits_sizes(self):
        return self.options.val_samples, self.options.test_samples

    def train(self):
        return GeneratedSplit(self.sample, self.seed, stream=0, size=None)

    def val(self):
        return GeneratedSplit(self.sample, self.seed, stream=1, size=self.options.val_samples)

    def test(self):
        return {"test": GeneratedSplit(self.sample, self.seed, stream=2, size=self.options.test_samples)}


@register_task
class BitXor(_BitTask):
    """Two random n-bit strings in, their elementwise XOR out."""

    name = "bit-xor"
    description = "two random n-bit strings -> their elementwise XOR (paper: n=5, up to 256)"

    @dataclass
    class Options:
        n_bits: int = bounded(5, at_least(1))  # length of each string (paper: 5; also up to 256)
        patch_size: int = bounded(1, at_least(1))  # bits per token; the model reads 2*n_bits/patch_size tokens
        val_samples: int = bounded(512, at_least(1))  # fixed held-out validation samples
        test_samples: int = bounded(1024, at_least(1))  # fixed held-out test samples
        bit_values: str = "signed"  # how bits are fed: signed (+1/-1) | binary (0/1, the 2021 code)

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        _check_patching(options.n_bits, options.patch_size, self.name)
        if options.bit_values not in ("signed", "binary"):
            raise ValueError(f"{self.name}: option bit_values must be signed or binary, got {options.bit_values!r}")

    @property
    def spec(self) -> TaskSpec:
        n, p = self.options.n_bits, self.options.patch_size
        return TaskSpec(
            input_type="continuous", input_dim=p, max_tokens=2 * n // p, num_classes=2,
            num_labels=n, readout="tokens", readout_tokens=n // p,
        )

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n, p = self.options.n_bits, self.options.patch_size
        a = rng.integers(0, 2, size=n, dtype=np.int64)
        b = rng.integers(0, 2, size=n, dtype=np.int64)
        bits = np.concatenate([a, b]).astype(np.float32)
        if self.options.bit_values == "signed":
            bits = bits * 2 - 1
        return {"x": bits.reshape(2 * n // p, p), "y": np.bitwise_xor(a, b)}


@register_task
class BitMemory(_BitTask):
    """Memorise several bitstrings, then reconstruct one of them from a half-masked copy."""

    name = "bit-memory"
    description = "5 random n-bit strings, then a masked copy of one -> the original (paper: n=1000, patch 50)"

    @dataclass
    class Options:
        n_bits: int = bounded(1000, at_least(1))  # bits per string (paper: 1000)
        n_strings: int = bounded(5, at_least(1))  # strings to memorise (paper: 5)
        mask_prob: float = bounded(0.5, PROBABILITY)  # probability that a query bit is masked (fed as 0)
        patch_size: int = bounded(50, at_least(1))  # bits per token (paper: 50 -> 120 tokens)
        val_samples: int = bounded(512, at_least(1))  # fixed held-out validation samples
        test_samples: int = bounded(1024, at_least(1))  # fixed held-out test samples

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        _check_patching(options.n_bits, options.patch_size, self.name)
        if options.n_strings < 1:
            raise ValueError(f"{self.name}: n_strings must be >= 1, got {options.n_strings}")
        if not 0.0 <= options.mask_prob < 1.0:
            raise ValueError(f"{self.name}: mask_prob must be in [0, 1), got {options.mask_prob}")

    @property
    def spec(self) -> TaskSpec:
        o = self.options
        tokens_per_string = o.n_bits // o.patch_size
        return TaskSpec(
            input_type="continuous", input_dim=o.patch_size,
            max_tokens=(o.n_strings + 1) * tokens_per_string, num_classes=2,
            num_labels=o.n_bits, readout="tokens", readout_tokens=tokens_per_string,
        )

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.options
        strings = rng.integers(0, 2, size=(o.n_strings, o.n_bits), dtype=np.int64)
        target = int(rng.integers(o.n_strings))
        signed = strings.astype(np.float32) * 2 - 1
        keep = rng.random(o.n_bits) >= o.mask_prob
        query = signed[target] * keep
        x = np.concatenate([signed.reshape(-1), query]).reshape(-1, o.patch_size)
        return {"x": x.astype(np.float32), "y": strings[target]}
