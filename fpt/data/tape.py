"""TAPE's remote homology task (Rao et al. 2019) in TAPE's raw JSON format.

Files: ``remote_homology_{train,valid,test_fold_holdout,test_superfamily_holdout,test_family_holdout}.json``,
each a JSON list of records; we use ``primary`` (the amino-acid string) and ``fold_label``
(an int in 0..1194). Amino acids are tokens of TAPE's 25-letter IUPAC vocabulary
(``ACDEFGHIKLMNOPQRSTUVWXYZ`` plus ``B``: every letter but ``J``) shifted by one so that 0 is
padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fpt.data.sequences import PackedSequences

PAD_ID = 0
IUPAC = "ABCDEFGHIKLMNOPQRSTUVWXYZ"  # 25 letters (TAPE's IUPAC_CODES)
AA_TO_ID = {a: i + 1 for i, a in enumerate(IUPAC)}
VOCAB_SIZE = len(IUPAC) + 1
NUM_FOLDS = 1195
SPLIT_FILES = {
    "train": "remote_homology_train.json",
    "valid": "remote_homology_valid.json",
    "test_fold_holdout": "remote_homology_test_fold_holdout.json",
    "test_superfamily_holdout": "remote_homology_test_superfamily_holdout.json",
    "test_family_holdout": "remote_homology_test_family_holdout.json",
}

_LUT = np.full(256, 255, dtype=np.uint8)
for _a, _i in AA_TO_ID.items():
    _LUT[ord(_a)] = _i
    _LUT[ord(_a.lower())] = _i


class TapeFormatError(ValueError):
    pass


def encode_protein(seq: str, where: str = "sequence") -> np.ndarray:
    """Amino-acid string -> ids 1..25 (``uint8``)."""
    try:
        b = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        b = None
    ids = _LUT[b] if b is not None else None
    if ids is None or (ids == 255).any():
        bad = next(i for i, ch in enumerate(seq) if ch.upper() not in AA_TO_ID)
        raise TapeFormatError(f"{where}: character {seq[bad]!r} at position {bad} is not one of the "
                              f"25 IUPAC amino-acid letters {IUPAC}")
    if len(ids) == 0:
        raise TapeFormatError(f"{where}: empty sequence")
    return ids


def read_tape_json(path: str | Path, num_classes: int = NUM_FOLDS) -> tuple[PackedSequences, np.ndarray]:
    """One split file -> (sequences, fold labels ``int64 [N]``)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise TapeFormatError(f"{path}: not valid JSON ({e}); delete it and fetch it again") from None
    if not isinstance(records, list):
        raise TapeFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise TapeFormatError(f"{path}: no records")
    seqs, labels = [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "primary" not in rec or "fold_label" not in rec:
            raise TapeFormatError(f"{path}: record {i} lacks 'primary' and/or 'fold_label'")
        label = rec["fold_label"]
        if isinstance(label, bool) or not isinstance(label, (int, float)) or int(label) != label:
            raise TapeFormatError(f"{path}: record {i}: fold_label {label!r} is not an integer")
        if not 0 <= int(label) < num_classes:
            raise TapeFormatError(f"{path}: record {i}: fold_label {label} outside 0..{num_classes - 1}")
        primary = rec["primary"]
        if not isinstance(primary, str):
            raise TapeFormatError(f"{path}: record {i}: 'primary' must be a string")
        seqs.append(encode_protein(primary, f"{path}: record {i}"))
        labels.append(int(label))
    return PackedSequences(seqs), np.asarray(labels, dtype=np.int64)
