"""Reuse loaded backbones across the trials of one process (``fpt study``'s in-process runner).

A study runs many trials in one worker process. Each trial's ``fit`` asks :func:`fpt.backbones.load_backbone`
for its backbone; inside :func:`reuse_backbones` the first request for a backbone *identity* loads it (the
registry's loader, as always) and keeps that pristine copy; every request, the first included, gets
``copy.deepcopy`` of it. A trial therefore starts from exactly the tensors a fresh process would load, and
whatever it trains (layer norms, positions, a fully trained LSTM) or compiles stays in its own copy. A
deep copy of MiniLM-L6 or of SmolLM2 cut to 6 blocks costs ~0.1 s of CPU; loading one costs 1-2.5 s
(the GGUF dequantisation, safetensors reads, transformers' model construction).

The identity is the backbone's name plus every :class:`BuildOptions` field, with ``seed`` dropped for
``init="pretrained"`` (the seed only seeds random weights; a pretrained backbone is the same for every
seed). The loaders never touch the global RNG (random weights are built under ``fork_rng``), so skipping a
load changes no later random draw: a trial's results are bit-identical with or without the cache
(tests/test_study.py checks it).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# The pristine backbones kept by the active cache (None: no cache, every request loads).
_ACTIVE: "BackboneCache | None" = None


class BackboneCache:
    """Pristine backbones by identity, least recently used dropped beyond ``capacity``; hands out deep copies."""

    def __init__(self, capacity: int = 6):
        if capacity < 1:
            raise ValueError(f"a backbone cache holds at least one backbone, got capacity {capacity}")
        self.capacity = capacity
        self.entries: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0  # backbones loaded (cache misses)
        self.hits = 0  # requests served by a copy of a kept backbone

    @staticmethod
    def key(name: str, options) -> tuple:
        fields = dataclasses.asdict(options)
        if fields.get("init") == "pretrained":
            fields.pop("seed", None)  # only random weights depend on the seed
        return (str(name), tuple(sorted(fields.items())))

    def get(self, name: str, options, load: Callable[[str, Any], Any]) -> Any:
        key = self.key(name, options)
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
        else:
            self.entries[key] = load(name, options)
            self.loads += 1
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return copy.deepcopy(self.entries[key])


def load_through_cache(name: str, options, load: Callable[[str, Any], Any]) -> Any:
    """``load(name, options)``, or a copy of the kept backbone while :func:`reuse_backbones` is active."""
    if _ACTIVE is None:
        return load(name, options)
    return _ACTIVE.get(name, options, load)


@contextmanager
def reuse_backbones(capacity: int = 6) -> Iterator[BackboneCache]:
    """Within the block, backbones are loaded once per identity and handed out as deep copies."""
    global _ACTIVE
    outer, _ACTIVE = _ACTIVE, BackboneCache(capacity)
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = outer


def enable_for_process(capacity: int = 6) -> BackboneCache:
    """A worker process's cache for its whole life (the study's process pool initialiser)."""
    global _ACTIVE
    _ACTIVE = BackboneCache(capacity)
    return _ACTIVE
