"""ListOps (Long Range Arena): classify the value (0-9) of a nested MAX/MIN/MED/SUM_MOD expression.

Tokens are discrete (vocabulary of 16 incl. padding id 0, see :mod:`fpt.data.listops`); batches
are right-padded with a ``mask`` and the head reads the last real token (``readout="last"``).
The closing bracket ``]`` is kept and nothing is truncated (the two known bugs of the 2021 FPT
code).

``source`` (chosen explicitly, default ``files``):

* ``files``: LRA's ``basic_train.tsv`` / ``basic_val.tsv`` / ``basic_test.tsv`` (official splits;
  looked for as :mod:`fpt.data.store` describes; there is no automatic download, and the error
  when they are missing says where to get them or to use ``source=generated``). Sequences longer
  than ``max_tokens`` follow ``too_long`` (``error``: stop with counts; ``skip``: drop them).
  The default was chosen so that a benchmark number never silently comes from other data.
* ``generated``: the built-in generator with LRA's grammar and distribution. The training stream
  draws a fresh expression per stream position (a pure function of the run seed and position);
  validation and test are fixed sets of ``val_samples`` / ``test_samples`` expressions that
  depend only on ``data_seed`` (the same for every run), generated once and kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpt.data import listops as lo
from fpt.data import sources
from fpt.data.sequences import (  # noqa: F401  (PackedSequenceSplit was defined here)
    GeneratedSequenceSplit, PackedSequenceSplit, check_too_long_option, drop_too_long,
)
from fpt.data.store import ensure_files
from fpt.tasks.base import Task, TaskSpec, register_task

SOURCES = ("files", "generated")


@register_task
class ListOps(Task):
    name = "listops"
    description = "LRA ListOps: value (0-9) of a nested MAX/MIN/MED/SUM_MOD expression, 500-2000 discrete tokens"

    @dataclass
    class Options:
        source: str = "files"  # "files": LRA's basic_*.tsv; "generated": built-in generator (offline)
        max_tokens: int = 2000  # longest sequence accepted (LRA's are < 2000 tokens once parentheses go)
        too_long: str = "error"  # files longer than max_tokens: "error" (stop, with counts) or "skip" (drop)
        min_length: int = 500  # generated: keep expressions with min_length < tokens < max_length (as LRA)
        max_length: int = 2000
        max_depth: int = 10  # generated: nesting depth limit (LRA: 10)
        max_args: int = 10  # generated: arguments per operator, 2..max_args (LRA: 10)
        val_samples: int = 2000  # generated: fixed validation set size (LRA: 2000)
        test_samples: int = 2000  # generated: fixed test set size (LRA: 2000)
        data_seed: int = 0  # generated: seed of the fixed validation / test sets

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        o = options
        if o.source not in SOURCES:
            raise ValueError(f"{self.name}: option source must be one of {SOURCES}, got {o.source!r}")
        check_too_long_option(o.too_long, self.name)
        if o.max_tokens < 1:
            raise ValueError(f"{self.name}: max_tokens must be >= 1, got {o.max_tokens}")
        if o.source == "generated":
            if o.max_length - o.min_length < 2 or o.min_length < 0:
                raise ValueError(f"{self.name}: need 0 <= min_length < max_length - 1, got {o.min_length}, {o.max_length}")
            if o.max_length - 1 > o.max_tokens:
                raise ValueError(
                    f"{self.name}: generated expressions can have up to max_length-1={o.max_length - 1} tokens but "
                    f"max_tokens={o.max_tokens}; set max_length <= {o.max_tokens + 1} or raise max_tokens"
                )
            if o.max_depth < 1 or o.max_args < 2:
                raise ValueError(f"{self.name}: need max_depth >= 1 and max_args >= 2")
            if o.val_samples < 1 or o.test_samples < 1:
                raise ValueError(f"{self.name}: val_samples and test_samples must be >= 1")
        self._data = None
        self._fixed_sets: dict[str, GeneratedSequenceSplit] = {}
        self.skipped: dict[str, int] = {}  # sequences dropped per split under too_long=skip

    @property
    def spec(self) -> TaskSpec:
        o = self.options
        longest = min(o.max_tokens, o.max_length - 1) if o.source == "generated" else o.max_tokens
        return TaskSpec(input_type="discrete", input_dim=lo.VOCAB_SIZE, max_tokens=longest,
                        num_classes=lo.NUM_CLASSES, readout="last", padded=True, pad_id=lo.PAD_ID)

    # -- generated ---------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.options
        ids, value = lo.generate_listops(rng, max_depth=o.max_depth, max_args=o.max_args,
                                         min_length=o.min_length, max_length=o.max_length)
        return {"x": ids.astype(np.int64), "y": np.int64(value)}

    # -- files -------------------------------------------------------------------------------
    def _load(self):
        if self._data is None:
            files = ensure_files(sources.LISTOPS, self.data_dir, task=self.name)
            raw = {split: lo.read_listops_tsv(files[name]) for split, name in lo.FILES.items()}
            self._data, self.skipped = drop_too_long(raw, self.options.max_tokens, self.options.too_long, self.name,
                                                     where={s: str(files[n]) for s, n in lo.FILES.items()})
        return self._data

    # -- splits ------------------------------------------------------------------------------
    def train(self):
        if self.options.source == "generated":
            return GeneratedSequenceSplit(self.sample, self.seed, stream=0, size=None, pad_id=lo.PAD_ID)
        seqs, y = self._load()["train"]
        return PackedSequenceSplit(seqs, y, shuffle_seed=self.seed, pad_id=lo.PAD_ID)

    def _fixed(self, name: str, stream: int, size: int) -> GeneratedSequenceSplit:
        if name not in self._fixed_sets:  # kept, so the set is generated once per task
            self._fixed_sets[name] = GeneratedSequenceSplit(self.sample, self.options.data_seed, stream=stream,
                                                            size=size, pad_id=lo.PAD_ID)
        return self._fixed_sets[name]

    def val(self):
        if self.options.source == "generated":
            return self._fixed("val", 1, self.options.val_samples)
        seqs, y = self._load()["val"]
        return PackedSequenceSplit(seqs, y, pad_id=lo.PAD_ID)

    def test(self):
        if self.options.source == "generated":
            return {"test": self._fixed("test", 2, self.options.test_samples)}
        seqs, y = self._load()["test"]
        return {"test": PackedSequenceSplit(seqs, y, pad_id=lo.PAD_ID)}
