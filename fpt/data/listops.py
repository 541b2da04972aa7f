"""ListOps (Nangia & Bowman 2018) as in Long Range Arena: TSV files, tokenizer and generator.

LRA's files (``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv`` in
``lra_release/listops-1000/``) have a header ``Source\\tTarget``; a source looks like
``( ( ( [MAX 2 ) 9 ) ] )``: the operators ``[MAX``, ``[MIN``, ``[MED``, ``[SM`` (sum modulo 10),
digits ``0``-``9``, the closing bracket ``]`` and parentheses. The target is the value, 0-9.

Tokenisation follows LRA's tokenizer in dropping the parentheses (they only encode LRA's
left-nested binary tree and carry no information), but, unlike the 2021 FPT code, it

* KEEPS the closing bracket ``]`` (without it the expression's structure is lost), and
* does NOT truncate (the FPT code cut sequences to 512 tokens; here a task-level ``max_tokens``
  with an explicit ``too_long`` policy decides, see :mod:`fpt.data.sequences`).

Vocabulary: 0 is padding, then ``[MIN [MAX [MED [SM ]`` and the digits ``0``-``9`` (16 ids).

:func:`generate_listops` draws expressions with LRA's generator's distribution (operators MAX,
MIN, MED, SUM_MOD; a node at depth < ``max_depth`` is an operator with probability 0.25, with 2 to
``max_args`` arguments; kept when ``min_length < length < max_length``, the length counting
operator, argument and ``]`` tokens). It is a pure function of the numpy generator it is given.
The independent checker of its labels is :mod:`fpt.data.listops_eval`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fpt.data.sequences import PackedSequences

PAD_ID = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
TOKENS = OPERATORS + (CLOSE,) + DIGITS
TOKEN_TO_ID = {t: i + 1 for i, t in enumerate(TOKENS)}
ID_TO_TOKEN = {i: t for t, i in TOKEN_TO_ID.items()}
VOCAB_SIZE = len(TOKENS) + 1  # incl. padding
NUM_CLASSES = 10
FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}

MIN_ID, MAX_ID, MED_ID, SM_ID = (TOKEN_TO_ID[o] for o in OPERATORS)
CLOSE_ID = TOKEN_TO_ID[CLOSE]
DIGIT_IDS = np.array([TOKEN_TO_ID[d] for d in DIGITS], dtype=np.uint8)

# Fast path: every token becomes one character, then a 256-entry lookup table.
_SINGLE_CHAR = {"[MIN": "a", "[MAX": "b", "[MED": "c", "[SM": "d"}
_LUT = np.full(256, 255, dtype=np.uint8)
for _tok, _ch in _SINGLE_CHAR.items():
    _LUT[ord(_ch)] = TOKEN_TO_ID[_tok]
_LUT[ord("]")] = CLOSE_ID
for _d in DIGITS:
    _LUT[ord(_d)] = TOKEN_TO_ID[_d]


class ListOpsFormatError(ValueError):
    pass


def _slow_tokenize(source: str, where: str) -> np.ndarray:
    words = source.replace("(", " ").replace(")", " ").split()
    if not words:
        raise ListOpsFormatError(f"{where}: empty expression")
    for i, w in enumerate(words):
        if w not in TOKEN_TO_ID:
            raise ListOpsFormatError(
                f"{where}: unknown token {w!r} at token {i}; ListOps tokens are {' '.join(TOKENS)} "
                f"(parentheses are dropped)"
            )
    return np.array([TOKEN_TO_ID[w] for w in words], dtype=np.uint8)


def tokenize(source: str, where: str = "expression") -> np.ndarray:
    """LRA source string -> token ids (``uint8``): parentheses dropped, ``]`` kept, no truncation."""
    s = source.replace("(", " ").replace(")", " ")
    for tok, ch in _SINGLE_CHAR.items():
        s = s.replace(tok, ch)
    s = " ".join(s.split())
    try:
        b = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        return _slow_tokenize(source, where)
    if len(b) == 0 or len(b) % 2 == 0 or (b[1::2] != 32).any():
        return _slow_tokenize(source, where)  # empty, or a token that is not one known word
    ids = _LUT[b[0::2]]
    if (ids == 255).any():
        return _slow_tokenize(source, where)
    return ids


def detokenize(ids) -> str:
    return " ".join(ID_TO_TOKEN[int(i)] for i in ids if int(i) != PAD_ID)


def read_listops_tsv(path: str | Path) -> tuple[PackedSequences, np.ndarray]:
    """Read one LRA ListOps TSV: (token sequences, labels ``int64 [N]``)."""
    path = Path(path)
    seqs: list[np.ndarray] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n")
        if header.split("\t") != ["Source", "Target"]:
            raise ListOpsFormatError(f"{path}: first line must be the header 'Source<TAB>Target', got {header[:60]!r}")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ListOpsFormatError(f"{path}:{lineno}: expected 2 tab-separated fields, got {len(fields)}")
            source, target = fields
            if len(source) >= 2 and source[0] == source[-1] == '"':  # csv quoting, should it appear
                source = source[1:-1].replace('""', '"')
            try:
                label = int(target)
            except ValueError:
                raise ListOpsFormatError(f"{path}:{lineno}: target {target!r} is not an integer") from None
            if not 0 <= label < NUM_CLASSES:
                raise ListOpsFormatError(f"{path}:{lineno}: target {label} outside 0..9")
            seqs.append(tokenize(source, f"{path}:{lineno}"))
            labels.append(label)
    if not seqs:
        raise ListOpsFormatError(f"{path}: no samples")
    return PackedSequences(seqs), np.asarray(labels, dtype=np.int64)


def strip_and_truncate(seqs: PackedSequences, close_bracket: bool = True, truncate_at: int = 0
                       ) -> tuple[PackedSequences, dict[str, int]]:
    """The 2021 FPT code's ListOps preprocessing, as options: drop every ``]`` (``close_bracket=False``:
    its tfds tokenizer kept alphanumeric tokens only) and cut to the first ``truncate_at`` tokens
    (its ``[:max_length]``, 512). Returns the sequences and counts of what changed."""
    flat, offsets = seqs.flat, seqs.offsets
    lengths = np.diff(offsets)
    stats = {"sequences": int(len(lengths)), "longest_before": int(lengths.max()) if len(lengths) else 0,
             "close_brackets_removed": 0, "truncated": 0}
    keep = np.ones(len(flat), dtype=bool)
    if not close_bracket:
        keep &= flat != CLOSE_ID
        stats["close_brackets_removed"] = int((flat == CLOSE_ID).sum())
    seq_of = np.repeat(np.arange(len(lengths)), lengths)  # which sequence each token belongs to
    if truncate_at:
        kept_before = np.cumsum(keep) - keep  # kept tokens before this one, over the whole flat array
        start = np.concatenate([[0], np.cumsum(np.bincount(seq_of[keep], minlength=len(lengths)))])[:-1]
        position = kept_before - start[seq_of]  # position of a kept token within its (stripped) sequence
        stats["truncated"] = int(np.unique(seq_of[keep & (position >= truncate_at)]).size)
        keep &= position < truncate_at
    lengths = np.bincount(seq_of[keep], minlength=len(lengths)).astype(np.int64)
    flat = flat[keep]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    stats["longest_after"] = int(lengths.max()) if len(lengths) else 0
    return PackedSequences(flat=flat, offsets=offsets), stats


# -- generator ---------------------------------------------------------------------------------
VALUE_P = 0.25  # LRA: a node below max_depth is an operator with this probability


class _TooLong(Exception):
    pass


class _Uniforms:
    """Uniform draws from a numpy generator, fetched in blocks (scalar draws are slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 1024):
        self.rng, self.block = rng, block
        self.buf = rng.random(block)
        self.pos = 0

    def __call__(self) -> float:
        if self.pos == self.block:
            self.buf = self.rng.random(self.block)
            self.pos = 0
        u = self.buf[self.pos]
        self.pos += 1
        return float(u)


def _apply(op: int, args: list[int]) -> int:
    if op == MIN_ID:
        return min(args)
    if op == MAX_ID:
        return max(args)
    if op == MED_ID:
        return int(np.median(args))  # as LRA: mean of the two middle values, truncated
    return sum(args) % 10  # SM


def generate_listops(rng: np.random.Generator, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
                     max_length: int = 2000, max_tries: int = 1_000_000) -> tuple[np.ndarray, int]:
    """One expression (token ids, ``uint8``) and its value, with ``min_length < len < max_length``."""
    if max_args < 2 or max_depth < 1:
        raise ValueError(f"listops generator: need max_args >= 2 and max_depth >= 1, got {max_args}, {max_depth}")
    if max_length - min_length < 2:
        raise ValueError(f"listops generator: need min_length < max_length - 1, got {min_length}, {max_length}")
    u = _Uniforms(rng)
    ops = (MIN_ID, MAX_ID, MED_ID, SM_ID)

    def node(depth: int, out: list[int]) -> int:
        if depth >= max_depth or u() > VALUE_P:
            value = min(int(u() * 10), 9)
            out.append(int(DIGIT_IDS[value]))
            if len(out) >= max_length:
                raise _TooLong
            return value
        n_args = 2 + min(int(u() * (max_args - 1)), max_args - 2)
        op = ops[min(int(u() * 4), 3)]
        out.append(op)
        args = [node(depth + 1, out) for _ in range(n_args)]
        out.append(CLOSE_ID)
        if len(out) >= max_length:
            raise _TooLong
        return _apply(op, args)

    for _ in range(max_tries):
        out: list[int] = []
        try:
            value = node(1, out)
        except _TooLong:
            continue
        if min_length < len(out) < max_length:
            return np.asarray(out, dtype=np.uint8), value
    raise RuntimeError(f"listops generator: no expression with {min_length} < length < {max_length} "
                       f"in {max_tries} tries (max_depth={max_depth}, max_args={max_args})")
