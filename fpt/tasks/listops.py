"""ListOps (Long Range Arena): classify the value (0-9) of a nested MAX/MIN/MED/SUM_MOD expression.

Tokens are discrete (vocabulary of 16 incl. padding id 0, see :mod:`fpt.data.listops`); batches
are right-padded with a ``mask`` and the head reads the last real token (``readout="last"``).
By default the closing bracket ``]`` is kept and nothing is truncated (Rothermel et al. 2021's
fix of the two known bugs of the 2021 FPT code; their frozen GPT-2 reaches 46.1%).

The 2021 code's behaviour is one option each (all set by ``--protocol paper``; the paper's 38.4%
was measured this way): ``close_bracket=false`` drops every ``]`` (its tfds tokenizer kept
alphanumeric tokens only), ``truncate_at=512`` cuts every sequence to its first 512 tokens,
``pad_to=512`` pads every sequence to 512 tokens without a mask so that the head reads position
511 (a pad for shorter sequences), and ``test_split=val`` reports ``basic_val.tsv`` as the test
set (the 2021 ``ListopsDataset`` took the second split LRA's loader returns, which is val;
``basic_test.tsv`` is then reported too, as ``test_basic_test``; the 2021 loop had no validation
split, and fpt then validates on ``val_fraction`` of ``basic_train.tsv``, held out, so that no choice
is made on the reported split). What was stripped and cut is
logged and kept in ``task.preprocessing`` (results.json ``data``).

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

import logging
from dataclasses import dataclass

import numpy as np

from fpt.data import listops as lo
from fpt.data import sources
from fpt.data.sequences import GeneratedSequenceSplit, PackedSequenceSplit, check_too_long_option, drop_too_long
from fpt.data.store import ensure_files
from fpt.base.options import FRACTION, SEEDS, at_least, bounded
from fpt.data.splits import TaskSpec, carve_validation
from fpt.tasks.base import Task, register_task

SOURCES = ("files", "generated")
TEST_SPLITS = ("test", "val")
log = logging.getLogger("fpt.data")


@register_task
class ListOps(Task):
    name = "listops"
    description = "LRA ListOps: value (0-9) of a nested MAX/MIN/MED/SUM_MOD expression, 500-2000 discrete tokens"

    @dataclass
    class Options:
        source: str = "files"  # "files": LRA's basic_*.tsv; "generated": built-in generator (offline)
        max_tokens: int = bounded(2000, at_least(1))  # longest sequence accepted (LRA's are < 2000 tokens once parentheses go)
        too_long: str = "error"  # files longer than max_tokens: "error" (stop, with counts) or "skip" (drop)
        min_length: int = bounded(500, at_least(0))  # generated: keep expressions with min_length < tokens < max_length (as LRA)
        max_length: int = bounded(2000, at_least(1))  # generated: see min_length
        max_depth: int = bounded(10, at_least(1))  # generated: nesting depth limit (LRA: 10)
        max_args: int = bounded(10, at_least(2))  # generated: arguments per operator, 2..max_args (LRA: 10)
        val_samples: int = bounded(2000, at_least(1))  # generated: fixed validation set size (LRA: 2000)
        test_samples: int = bounded(2000, at_least(1))  # generated: fixed test set size (LRA: 2000)
        data_seed: int = bounded(0, SEEDS)  # generated: seed of the fixed validation / test sets
        close_bracket: bool = True  # keep the ']' tokens; false: drop them as the 2021 code's tokenizer did (alphanumeric only)
        truncate_at: int = bounded(0, at_least(0))  # cut sequences to their first N tokens (the 2021 code: 512); 0: never
        # pad every sequence to N tokens, no mask, read position N-1 (the 2021 code: 512); 0: per batch, masked
        pad_to: int = bounded(0, at_least(0))
        # the headline test split: test (basic_test) | val (basic_val, what the 2021 code reported as test)
        test_split: str = "test"
        # with test_split=val: the share of basic_train held out as fpt's validation split, so that no choice
        # (best point, early stop, a sweep's lr) reads the reported split (generated: a fresh set instead)
        val_fraction: float = bounded(0.02, FRACTION)
        split_seed: int = bounded(0, SEEDS)  # with test_split=val: which basic_train rows are held out

    def __init__(self, options, seed=0, data_dir=None):
        super().__init__(options, seed, data_dir)
        o = options
        if o.source not in SOURCES:
            raise ValueError(f"{self.name}: option source must be one of {SOURCES}, got {o.source!r}")
        check_too_long_option(o.too_long, self.name)
        if o.max_tokens < 1:
            raise ValueError(f"{self.name}: max_tokens must be >= 1, got {o.max_tokens}")
        if o.truncate_at < 0 or o.pad_to < 0:
            raise ValueError(f"{self.name}: truncate_at and pad_to must be >= 0 (0: off), got {o.truncate_at}, {o.pad_to}")
        if o.test_split not in TEST_SPLITS:
            raise ValueError(f"{self.name}: option test_split must be one of {TEST_SPLITS}, got {o.test_split!r}")
        if o.pad_to and self._longest() > o.pad_to:
            raise ValueError(f"{self.name}: pad_to={o.pad_to} but sequences can have up to {self._longest()} tokens; "
                             f"set truncate_at <= {o.pad_to} (the 2021 code: truncate_at=512, pad_to=512)")
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
        # what close_bracket / truncate_at / pad_to did (results.json "data"); per split once files are read
        self.preprocessing: dict | None = None
        if not o.close_bracket or o.truncate_at or o.pad_to or o.test_split != "test":
            self.preprocessing = {"close_bracket": o.close_bracket, "truncate_at": o.truncate_at, "pad_to": o.pad_to,
                                  "test_split": o.test_split}
            if o.source == "generated":
                self.preprocessing["applied"] = "to every generated expression"
                if o.test_split == "val":
                    self.preprocessing["validation"] = (f"a separate generated set of {o.val_samples:,} expressions; the "
                                                        "reported test is read only by the final test")
                self._note_generated()

    def _longest(self) -> int:
        o = self.options
        longest = min(o.max_tokens, o.max_length - 1) if o.source == "generated" else o.max_tokens
        return min(longest, o.truncate_at) if o.truncate_at else longest

    @property
    def spec(self) -> TaskSpec:
        o = self.options
        if o.pad_to:  # fixed length, no mask: the head reads the last position, pad or not (the 2021 code)
            return TaskSpec(input_type="discrete", input_dim=lo.VOCAB_SIZE, max_tokens=o.pad_to,
                            num_classes=lo.NUM_CLASSES, readout="last", padded=False, pad_id=lo.PAD_ID)
        return TaskSpec(input_type="discrete", input_dim=lo.VOCAB_SIZE, max_tokens=self._longest(),
                        num_classes=lo.NUM_CLASSES, readout="last", padded=True, pad_id=lo.PAD_ID)

    # -- the 2021 code's preprocessing (options close_bracket, truncate_at) ---------------------
    def _preprocess(self, ids: np.ndarray) -> np.ndarray:
        o = self.options
        if not o.close_bracket:
            ids = ids[ids != lo.CLOSE_ID]
        if o.truncate_at:
            ids = ids[: o.truncate_at]
        return ids

    def _note_generated(self) -> None:
        o = self.options
        parts = []
        if not o.close_bracket:
            parts.append("every ']' is dropped (close_bracket=false, as the 2021 code's tokenizer)")
        if o.truncate_at:
            parts.append(f"expressions are cut to {o.truncate_at} tokens (truncate_at)")
        if o.pad_to:
            parts.append(f"every sequence is padded to {o.pad_to} tokens without a mask; the head reads the last position")
        if o.test_split != "test":
            parts.append("the generated validation set is reported as test (test_split=val); fpt validates on a "
                         "separate generated set")
        log.warning("%s (generated): %s", self.name, "; ".join(parts))

    # -- generated ---------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.options
        ids, value = lo.generate_listops(rng, max_depth=o.max_depth, max_args=o.max_args,
                                         min_length=o.min_length, max_length=o.max_length)
        return {"x": self._preprocess(ids).astype(np.int64), "y": np.int64(value)}

    # -- files -------------------------------------------------------------------------------
    def _load(self):
        if self._data is None:
            o = self.options
            files = ensure_files(sources.LISTOPS, self.data_dir, task=self.name)
            raw = {split: lo.read_listops_tsv(files[name]) for split, name in lo.FILES.items()}
            if self.preprocessing is not None:
                per_split = {}
                for split, (seqs, y) in raw.items():
                    seqs, per_split[split] = lo.strip_and_truncate(seqs, o.close_bracket, o.truncate_at)
                    raw[split] = (seqs, y)
                self.preprocessing["splits"] = per_split
                self._note_files(per_split, {s: str(files[n]) for s, n in lo.FILES.items()})
            self._data, self.skipped = drop_too_long(raw, o.max_tokens, o.too_long, self.name,
                                                     where={s: str(files[n]) for s, n in lo.FILES.items()})
            if o.test_split == "val":  # basic_val is the test: validate on rows held out of basic_train instead
                seqs, y = self._data["train"]
                keep, held = carve_validation(len(y), o.val_fraction, o.split_seed, self.name)
                self._data["train"] = (seqs.subset(keep), y[keep])
                self._data["val_carved"] = (seqs.subset(held), y[held])
                self.preprocessing["validation"] = (f"{len(held):,} rows of basic_train.tsv (val_fraction "
                                                    f"{o.val_fraction:g}, split_seed {o.split_seed}); basic_val.tsv "
                                                    f"is the test and is read only by the final test")
            if any(self.skipped.values()):  # dropped sequences change the benchmark: results.json says how many
                self.preprocessing = {**(self.preprocessing or {}), "max_tokens": o.max_tokens,
                                      "dropped_too_long": dict(self.skipped)}
        return self._data

    def _note_files(self, per_split: dict[str, dict[str, int]], where: dict[str, str]) -> None:
        """Say what the 2021 code's preprocessing changed, split by split (visible in every run's log)."""
        o = self.options
        lines = []
        for split, st in per_split.items():
            parts = []
            if not o.close_bracket:
                parts.append(f"dropped {st['close_brackets_removed']:,} ']' tokens")
            if o.truncate_at:
                parts.append(f"cut {st['truncated']:,} of {st['sequences']:,} sequences to {o.truncate_at} tokens "
                             f"(longest {st['longest_before']:,} -> {st['longest_after']:,})")
            if parts:
                lines.append(f"{split} ({where[split]}): " + ", ".join(parts))
        if o.pad_to:
            lines.append(f"every sequence is padded to {o.pad_to} tokens without a mask; the head reads position "
                         f"{o.pad_to - 1}")
        if o.test_split == "val":
            lines.append("test = basic_val.tsv (as the 2021 code); basic_test.tsv is reported as test_basic_test; "
                         f"validation = {o.val_fraction:g} of basic_train.tsv (the 2021 code had none)")
        log.warning("%s: the 2021 code's preprocessing (close_bracket=%s, truncate_at=%s, pad_to=%s, test_split=%s):\n  %s",
                    self.name, str(o.close_bracket).lower(), o.truncate_at, o.pad_to, o.test_split, "\n  ".join(lines))

    # -- splits ------------------------------------------------------------------------------
    def train(self):
        if self.options.source == "generated":
            return GeneratedSequenceSplit(self.sample, self.seed, stream=0, size=None, pad_id=lo.PAD_ID,
                                          pad_to=self.options.pad_to)
        seqs, y = self._load()["train"]
        return PackedSequenceSplit(seqs, y, shuffle_seed=self.seed, pad_id=lo.PAD_ID, pad_to=self.options.pad_to)

    def _fixed(self, name: str, stream: int, size: int) -> GeneratedSequenceSplit:
        if name not in self._fixed_sets:  # kept, so the set is generated once per task
            self._fixed_sets[name] = GeneratedSequenceSplit(self.sample, self.options.data_seed, stream=stream,
                                                            size=size, pad_id=lo.PAD_ID, pad_to=self.options.pad_to)
        return self._fixed_sets[name]

    def _split(self, name: str):
        if self.options.source == "generated":  # val_carved: a third fixed set, when val is reported as test
            return self._fixed(name, {"val": 1, "test": 2, "val_carved": 3}[name],
                               self.options.test_samples if name == "test" else self.options.val_samples)
        seqs, y = self._load()[name]
        return PackedSequenceSplit(seqs, y, pad_id=lo.PAD_ID, pad_to=self.options.pad_to)

    def val(self):
        # with test_split=val the official validation split is the reported test: never select on it
        return self._split("val_carved" if self.options.test_split == "val" else "val")

    def test(self):
        if self.options.test_split == "val":  # the 2021 code's "test" was LRA's val split
            other = "test_basic_test" if self.options.source == "files" else "test_generated_test"
            return {"test": self._split("val"), other: self._split("test")}
        return {"test": self._split("test")}
