"""What a task hands the model: its shape (``TaskSpec``) and its data (``Split``s of batch dicts).

A split hands the model batches as dicts:

* ``x``: ``float32 [B, T, D]`` for continuous tokens, or ``int64 [B, T]`` for discrete ones;
* ``y``: ``int64 [B]`` (one label per sample) or ``int64 [B, K]`` (K labels per sample, e.g. bits);
  for a regression task (``TaskSpec.output == "regression"``) ``float32 [B]`` or ``[B, K]``, the
  targets in their original units (:mod:`fpt.model.objectives` standardises them for the loss);
* ``mask`` (optional): ``bool [B, T]``, True on real tokens, False on padding (padding is on the
  right, so the last real token is at ``mask.sum(1) - 1``).

Training data is an *indexable stream*: sample ``i`` of the stream is a pure function of the seed and
``i``. The trainer asks for stream positions ``[step * global_batch, (step + 1) * global_batch)``, so
resuming at step ``s`` reproduces exactly the batches an uninterrupted run would have seen, and
data-parallel ranks split a global batch without coordination. Generated data (:class:`GeneratedSplit`)
draws a fresh sample per position; finite datasets (:class:`ArraySplit`) walk seeded per-epoch
permutations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

InputType = Literal["continuous", "discrete"]
Readout = Literal["last", "mean", "tokens", "flatten"]
OutputType = Literal["classification", "regression", "forecast"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the model needs to know about a task's inputs and outputs."""

    input_type: InputType  # "continuous": x is [B, T, D] floats; "discrete": x is [B, T] token ids
    input_dim: int  # features per token (continuous) or vocabulary size incl. padding id (discrete)
    max_tokens: int  # the longest sequence the task produces; checked against the backbone
    num_classes: int  # classes per predicted label (2 for bits)
    num_labels: int = 1  # labels per sample: 1 for classification, n for n predicted bits
    # default head: last real token, mean of real tokens, last tokens, or flatten (every token into one linear layer)
    readout: Readout = "last"
    readout_tokens: int = 1  # with readout="tokens": how many final tokens; each predicts num_labels/readout_tokens labels
    padded: bool = False  # batches carry a `mask` (variable-length sequences)
    pad_id: int = 0  # padding token id for discrete inputs
    # the output type (fpt.model.objectives): "regression" predicts num_labels real-valued targets, num_classes must be 1;
    # "forecast": num_labels future values of one channel (fpt.tasks.forecast), num_classes 1
    output: OutputType = "classification"

    def __post_init__(self):
        if self.input_type not in ("continuous", "discrete"):
            raise ValueError(f"input_type must be 'continuous' or 'discrete', got {self.input_type!r}")
        for name in ("input_dim", "max_tokens", "num_classes", "num_labels", "readout_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TaskSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.output not in ("classification", "regression", "forecast"):
            raise ValueError(f"output must be 'classification', 'regression' or 'forecast', got {self.output!r}")
        if self.output in ("regression", "forecast") and self.num_classes != 1:
            raise ValueError(f"a regression TaskSpec predicts one number per target: num_classes must be 1 "
                             f"(num_labels = targets per sample), got {self.num_classes}")
        if self.readout not in ("last", "mean", "tokens", "flatten"):
            raise ValueError(f"readout must be 'last', 'mean', 'tokens' or 'flatten', got {self.readout!r}")
        if self.readout == "flatten" and self.padded:
            raise ValueError("readout='flatten' reads every token position: it needs fixed-length sequences (padded=False)")
        if self.readout == "tokens" and self.num_labels % self.readout_tokens:
            raise ValueError(
                f"readout='tokens' needs num_labels ({self.num_labels}) divisible by "
                f"readout_tokens ({self.readout_tokens})"
            )


class Split:
    """One split of a task's data: ``len(split)`` samples, ``split.batch(indices)`` -> batch dict.

    ``batch`` receives *stream positions* for the training stream and plain indices for
    evaluation splits; subclasses decide what a position means (see module docstring).
    """

    def __len__(self) -> int:  # number of distinct samples (evaluation splits are finite)
        raise NotImplementedError

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def token_lengths(self, indices: np.ndarray) -> np.ndarray | None:
        """Real tokens of each sample at ``indices`` (stream positions or indices, as ``batch``), for splits
        whose samples vary in length (padded batches); None for the others."""
        return None


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """An independent generator for sample ``index`` of stream ``stream`` (0 train, 1 val, 2 test...)."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


class GeneratedSplit(Split):
    """A split whose sample ``i`` is ``make_sample(rng_i)``; ``size=None`` means an endless stream."""

    def __init__(self, make_sample: Callable[[np.random.Generator], dict[str, np.ndarray]], seed: int, stream: int,
                 size: int | None):
        self.make_sample = make_sample
        self.seed = seed
        self.stream = stream
        self.size = size

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("an endless generated stream has no length")
        return self.size

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        samples = [self.make_sample(sample_rng(self.seed, self.stream, int(i))) for i in indices]
        return collate(samples)


class ArraySplit(Split):
    """A finite split held in memory as arrays of equal first dimension.

    As a training stream, position ``p`` maps to epoch ``p // n`` and the sample at position
    ``p % n`` of that epoch's seeded permutation (``shuffle_seed`` set); ``transform`` (e.g. data
    augmentation) receives the batch and a generator seeded by the positions, so it is reproducible.
    """

    def __init__(self, arrays: dict[str, np.ndarray], shuffle_seed: int | None = None,
                 transform: Callable[[dict[str, torch.Tensor], np.random.Generator], dict[str, torch.Tensor]] | None = None):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of one split must have equal length, got {lengths}")
        self.arrays = arrays
        self.n = next(iter(lengths.values()))
        if self.n == 0:
            raise ValueError("empty split")
        self.shuffle_seed = shuffle_seed
        self.transform = transform
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            self._perm_cache[epoch] = np.random.default_rng([self.shuffle_seed, epoch]).permutation(self.n)
        return self._perm_cache[epoch]

    def positions_to_indices(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self.shuffle_seed is None:
            return positions % self.n
        out = np.empty_like(positions)
        epochs = positions // self.n
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % self.n]
        return out

    def token_lengths(self, indices: np.ndarray) -> np.ndarray | None:
        if "mask" not in self.arrays:  # fixed-length samples
            return None
        return self.arrays["mask"][self.positions_to_indices(indices)].sum(axis=1)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        idx = self.positions_to_indices(indices)
        out = {k: torch.as_tensor(np.ascontiguousarray(v[idx])) for k, v in self.arrays.items()}
        if self.transform is not None:
            rng = np.random.default_rng([int(self.shuffle_seed or 0), 7, int(indices[0]), len(indices)])
            out = self.transform(out, rng)
        return out


class LengthBucketedStream(Split):
    """A training stream whose batches hold sequences of similar length: less padding, same samples.

    TAPE's (and PyTorch-NLP's) ``BucketBatchSampler``, made a pure function of the stream position so
    that a resumed run and every DDP rank see exactly the batches of one uninterrupted run. The stream
    is cut into windows of ``pool`` global batches (positions ``[w P G, (w+1) P G)``, ``G`` the global
    batch, which the trainer reads as consecutive positions); within window ``w`` the samples that
    ``split`` has at those positions are sorted by length (ties keep stream order), cut into ``P``
    batches of ``G`` and put in an order drawn from ``(seed, w)``. So each window holds exactly the
    samples the plain stream has there (a finite dataset still sees each sample once per epoch, up to
    the windows that straddle an epoch's end), only grouped by length.
    """

    def __init__(self, split: Split, global_batch: int, pool: int, seed: int,
                 lengths: Callable[[np.ndarray], np.ndarray | None] | None = None):
        if global_batch < 1 or pool < 1:
            raise ValueError(f"LengthBucketedStream needs global_batch >= 1 and pool >= 1, got {global_batch}, {pool}")
        self.split, self.global_batch, self.pool, self.seed = split, int(global_batch), int(pool), int(seed)
        # the lengths of the plain stream's samples (default: the split's own; cached features: the task's split's)
        self.lengths = lengths or split.token_lengths
        self.window = self.global_batch * self.pool
        self._arrangements: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.split)

    def arrangement(self, w: int) -> np.ndarray:
        """The plain stream's positions of window ``w``, in bucketed order."""
        if w not in self._arrangements:
            if len(self._arrangements) > 2:
                self._arrangements.clear()
            base = np.arange(w * self.window, (w + 1) * self.window, dtype=np.int64)
            lengths = self.lengths(base)
            if lengths is None:
                raise ValueError("LengthBucketedStream: the split has no sequence lengths (fixed-length samples)")
            by_length = np.argsort(np.asarray(lengths), kind="stable").reshape(self.pool, self.global_batch)
            order = np.random.default_rng([self.seed, 0x6275636B, int(w)]).permutation(self.pool)  # "buck"
            self._arrangements[w] = base[by_length[order].reshape(-1)]
        return self._arrangements[w]

    def positions(self, positions: np.ndarray) -> np.ndarray:
        """The plain stream's positions that the bucketed ``positions`` hold."""
        positions = np.asarray(positions, dtype=np.int64)
        windows = positions // self.window
        out = np.empty_like(positions)
        for w in np.unique(windows):
            sel = windows == w
            out[sel] = self.arrangement(int(w))[positions[sel] - int(w) * self.window]
        return out

    def token_lengths(self, indices: np.ndarray) -> np.ndarray | None:
        return self.lengths(self.positions(indices))

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return self.split.batch(self.positions(indices))


def by_length(split: Split) -> np.ndarray | None:
    """Evaluation order: the indices of ``split`` from the longest sample to the shortest (stable), so that
    each evaluation batch holds sequences of similar length; None for fixed-length splits."""
    n = len(split)
    lengths = split.token_lengths(np.arange(n, dtype=np.int64))
    if lengths is None:
        return None
    return np.argsort(-np.asarray(lengths), kind="stable").astype(np.int64)


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack samples; sequences of unequal length are right-padded and get a ``mask``."""
    keys = samples[0].keys()
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        arrs = [np.asarray(s[k]) for s in samples]
        if k == "x" and len({a.shape[0] for a in arrs}) > 1:
            T = max(a.shape[0] for a in arrs)
            padded = np.zeros((len(arrs), T) + arrs[0].shape[1:], dtype=arrs[0].dtype)
            mask = np.zeros((len(arrs), T), dtype=bool)
            for i, a in enumerate(arrs):
                padded[i, : a.shape[0]] = a
                mask[i, : a.shape[0]] = True
            out["x"] = torch.from_numpy(padded)
            out["mask"] = torch.from_numpy(mask)
        else:
            out[k] = torch.from_numpy(np.stack(arrs))
    return out


def carve_validation(n: int, val_fraction: float, split_seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train indices, val indices) of ``n`` samples; the val set depends only on ``split_seed``.

    Used wherever a task has no validation split of its own that is not also reported as test (images;
    ListOps and remote homology when the official validation split is the test, as in the 2021 code)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"{task}: val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(n * val_fraction)))  # a tiny split still gets one validation sample
    if n_val >= n:
        raise ValueError(f"{task}: val_fraction={val_fraction} of {n} training samples gives {n_val} validation "
                         f"samples; need at least 1 and fewer than {n}")
    perm = np.random.default_rng([int(split_seed), 1234]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
