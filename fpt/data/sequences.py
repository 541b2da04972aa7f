"""Variable-length discrete sequences: compact storage, padded batches, and the too-long policy.

Sequences are never truncated. A task with a ``max_tokens`` limit checks every sequence against
it when loading (:func:`apply_length_policy`):

* ``too_long="error"`` (default): if any sequence is longer, loading stops with one message that
  counts the affected sequences per split, gives the longest length and the first offender, and
  says what to do (raise ``max_tokens`` if the backbone allows it, or ``too_long=skip``);
* ``too_long="skip"``: those sequences are dropped, and the counts are logged and kept in
  ``task.skipped`` (note that skipping test sequences changes the benchmark).

:class:`PackedSequenceSplit` (finite, from files) and :class:`GeneratedSequenceSplit` (drawn by a
generator) hand out such sequences as padded batches with a ``mask``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fpt.data.splits import ArraySplit, GeneratedSplit, sample_rng

log = logging.getLogger("fpt.data")

TOO_LONG_POLICIES = ("error", "skip")


def check_too_long_option(value: str, task: str) -> None:
    if value not in TOO_LONG_POLICIES:
        raise ValueError(f"{task}: option too_long must be one of {TOO_LONG_POLICIES}, got {value!r}")


class PackedSequences:
    """Many 1-D token arrays stored as one flat array plus offsets."""

    def __init__(self, seqs: list[np.ndarray] | None = None, flat: np.ndarray | None = None,
                 offsets: np.ndarray | None = None, dtype=np.uint8):
        if seqs is not None:
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            self.flat = np.concatenate(seqs).astype(dtype) if seqs else np.zeros(0, dtype)
        else:
            self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def subset(self, keep: np.ndarray) -> "PackedSequences":
        idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
        return PackedSequences([self[int(i)] for i in idx], dtype=self.flat.dtype)


def pad_batch(seqs: list[np.ndarray], labels, pad_id: int = 0, pad_to: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token sequences: ``x`` int64 [B, T], ``mask`` bool [B, T] (True = real), ``y``.

    ``pad_to=N``: every batch is N tokens long and carries no mask (the 2021 FPT code's ListOps
    batches: padded to 512, the model reads the last position, a pad for shorter sequences)."""
    t = pad_to or max(len(s) for s in seqs)
    if pad_to and max(len(s) for s in seqs) > pad_to:
        raise ValueError(f"a sequence of {max(len(s) for s in seqs)} tokens does not fit pad_to={pad_to}")
    x = np.full((len(seqs), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), t), dtype=bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    out = {"x": torch.from_numpy(x), "y": torch.as_tensor(np.asarray(labels, dtype=np.int64))}
    if not pad_to:
        out["mask"] = torch.from_numpy(mask)
    return out


def apply_length_policy(lengths: dict[str, np.ndarray], max_tokens: int, policy: str, task: str,
                        where: dict[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Check sequence lengths per split against ``max_tokens``.

    Returns ``(keep masks per split, number dropped per split)``; raises ``ValueError`` under
    ``policy="error"`` when any sequence is too long (see module docstring).
    """
    check_too_long_option(policy, task)
    keep = {name: np.asarray(l) <= max_tokens for name, l in lengths.items()}
    counts = {name: int((~k).sum()) for name, k in keep.items()}
    total = sum(counts.values())
    if total == 0:
        return keep, counts
    longest = max(int(np.max(l)) for l in lengths.values() if len(l))
    parts = []
    for name, k in keep.items():
        if counts[name]:
            first = int(np.flatnonzero(~k)[0])
            loc = f" in {where[name]}" if where and name in where else ""
            parts.append(f"{name}: {counts[name]} of {len(k)} (first: record {first}{loc}, "
                         f"{int(lengths[name][first])} tokens)")
    summary = "; ".join(parts)
    if policy == "error":
        raise ValueError(
            f"{task}: {total} sequences are longer than max_tokens={max_tokens} (longest: {longest} tokens). "
            f"Per split: {summary}. Sequences are never truncated. Either raise max_tokens to >= {longest} "
            f"(e.g. --task-option max_tokens={longest}; the backbone must accept that many positions), or "
            f"drop them with --task-option too_long=skip (this changes the test set if test sequences are dropped)."
        )
    log.warning("%s: too_long=skip: dropping %d sequences longer than max_tokens=%d (%s)", task, total, max_tokens, summary)
    for name, k in keep.items():
        if not k.any():
            raise ValueError(f"{task}: too_long=skip dropped every sequence of split {name!r} "
                             f"(max_tokens={max_tokens}); raise max_tokens")
    return keep, counts


def drop_too_long(raw: dict[str, tuple[PackedSequences, np.ndarray]], max_tokens: int, policy: str, task: str,
                  where: dict[str, str] | None = None):
    """``apply_length_policy`` on ``{split: (sequences, labels)}``; returns the kept data and the counts dropped."""
    keep, skipped = apply_length_policy({s: seqs.lengths for s, (seqs, _) in raw.items()}, max_tokens, policy,
                                        task, where=where)
    data = {s: ((seqs.subset(keep[s]), y[keep[s]]) if skipped.get(s) else (seqs, y)) for s, (seqs, y) in raw.items()}
    return data, skipped


class PackedSequenceSplit(ArraySplit):
    """An :class:`ArraySplit` over packed sequences: batches are padded and carry a mask (or, with
    ``pad_to=N``, are N tokens long without one: the 2021 code's ListOps, :func:`pad_batch`)."""

    def __init__(self, seqs: PackedSequences, labels: np.ndarray, shuffle_seed: int | None = None, pad_id: int = 0,
                 pad_to: int = 0):
        super().__init__({"row": np.arange(len(seqs), dtype=np.int64), "y": np.asarray(labels, dtype=np.int64)},
                         shuffle_seed=shuffle_seed)
        self.seqs = seqs
        self.pad_id = pad_id
        self.pad_to = pad_to  # N: every batch N tokens, no mask (pad_batch)

    def token_lengths(self, indices: np.ndarray) -> np.ndarray | None:
        if self.pad_to:  # every batch pad_to tokens long: no length to group by
            return None
        return self.seqs.lengths[self.arrays["row"][self.positions_to_indices(indices)]]

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        out = super().batch(indices)
        rows = out["row"].numpy()
        return pad_batch([self.seqs[int(r)] for r in rows], out["y"].numpy(), self.pad_id, self.pad_to)


class GeneratedSequenceSplit(GeneratedSplit):
    """A :class:`GeneratedSplit` of ``{"x": tokens, "y": label}`` samples, padded as :class:`PackedSequenceSplit`.

    A finite split (``size`` set) remembers its samples, so evaluation sets are generated once.
    """

    def __init__(self, make_sample, seed: int, stream: int, size: int | None, pad_id: int = 0, pad_to: int = 0):
        super().__init__(make_sample, seed, stream, size)
        self.pad_id = pad_id
        self.pad_to = pad_to
        self._memo: dict[int, dict[str, np.ndarray]] | None = {} if size is not None else None
        # an endless stream keeps the samples it drew for their lengths (length bucketing) until batched
        self._recent: dict[int, dict[str, np.ndarray]] = {}
        self._recent_tokens = 0

    def _sample(self, i: int) -> dict[str, np.ndarray]:
        if self._memo is not None and i in self._memo:
            return self._memo[i]
        if i in self._recent:
            s = self._recent.pop(i)
            self._recent_tokens -= len(s["x"])
            return s
        s = self.make_sample(sample_rng(self.seed, self.stream, i))
        if self._memo is not None:
            self._memo[i] = s
        return s

    def token_lengths(self, indices: np.ndarray) -> np.ndarray | None:
        if self.pad_to:
            return None
        if self._memo is None:
            lengths = np.empty(len(indices), dtype=np.int64)
            for k, i in enumerate(map(int, indices)):
                if i not in self._recent:
                    if self._recent_tokens > 20_000_000:  # ~160 MB: dropping them only means drawing them again
                        self._recent.clear()
                        self._recent_tokens = 0
                    self._recent[i] = self.make_sample(sample_rng(self.seed, self.stream, i))
                    self._recent_tokens += len(self._recent[i]["x"])
                lengths[k] = len(self._recent[i]["x"])
            return lengths
        return np.array([len(self._sample(int(i))["x"]) for i in indices], dtype=np.int64)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        if self.size is not None and len(indices) and (int(np.max(indices)) >= self.size or int(np.min(indices)) < 0):
            raise IndexError(f"indices outside 0..{self.size - 1}")
        samples = [self._sample(int(i)) for i in indices]
        return pad_batch([s["x"] for s in samples], [s["y"] for s in samples], self.pad_id, self.pad_to)
