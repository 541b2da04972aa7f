"""ListOps: generator labels vs the independent evaluator, grammar limits, tokenizer round trip."""

from __future__ import annotations

import numpy as np
import pytest

from fpt.data import listops as lo
from fpt.data.fixtures import lra_source, write_listops_files
from fpt.data.listops_eval import ListOpsSyntaxError, evaluate_source, evaluate_tokens


def _depth_and_args(tokens: list[str]) -> tuple[int, int]:
    depth = max_depth = max_args = 0
    counts = []
    for t in tokens:
        if t.startswith("["):
            if counts:
                counts[-1] += 1
            depth += 1
            max_depth = max(max_depth, depth)
            counts.append(0)
        elif t == "]":
            depth -= 1
            max_args = max(max_args, counts.pop())
        elif counts:
            counts[-1] += 1
    return max_depth, max_args


@pytest.mark.parametrize("cfg", [
    dict(min_length=500, max_length=2000),  # LRA's lengths
    dict(min_length=20, max_length=200, max_depth=4, max_args=5),
])
def test_generator_labels_match_evaluator(cfg):
    for i in range(40 if cfg["min_length"] < 100 else 12):
        ids, value = lo.generate_listops(np.random.default_rng([3, i]), **cfg)
        tokens = lo.detokenize(ids).split()
        assert cfg["min_length"] < len(tokens) < cfg["max_length"]
        assert evaluate_tokens(tokens) == value
        assert evaluate_source(lra_source(tokens)) == value  # the LRA-format string agrees
        depth, args = _depth_and_args(tokens)
        # as LRA: the root is at depth 1 and only nodes below max_depth are operators
        assert depth <= cfg.get("max_depth", 10) - 1 and 2 <= args <= cfg.get("max_args", 10)
        assert tokens[-1] == "]" and tokens[0].startswith("[")


def test_generator_reproducible_and_varied():
    a = lo.generate_listops(np.random.default_rng([1, 2]), min_length=10, max_length=100)
    b = lo.generate_listops(np.random.default_rng([1, 2]), min_length=10, max_length=100)
    c = lo.generate_listops(np.random.default_rng([1, 3]), min_length=10, max_length=100)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])
    values = [lo.generate_listops(np.random.default_rng([9, i]), min_length=10, max_length=100)[1] for i in range(200)]
    assert set(values) == set(range(10))  # every class occurs


def test_evaluator_by_hand():
    assert evaluate_tokens("[MAX 2 9 [MIN 4 7 ] 0 ]".split()) == 9
    assert evaluate_tokens("[MED 1 2 3 4 ]".split()) == 2  # (2 + 3) // 2, as int(np.median)
    assert evaluate_tokens("[MED 9 1 5 ]".split()) == 5
    assert evaluate_tokens("[SM 9 9 [SM 5 6 ] ]".split()) == (9 + 9 + 1) % 10
    assert evaluate_source("( ( ( ( [MAX 2 ) 9 ) ( ( [MIN 4 ) 7 ) ] ) ) ] )") == 9
    assert evaluate_tokens(["7"]) == 7
    for bad, msg in [("[MAX 1 2", "never closed"), ("[MAX 1 ] ]", "after the expression ended"),
                     ("[MAX ]", "no arguments"), ("1 2", "after the expression ended"), ("", "empty"),
                     ("[MAX 12 ]", "unknown token")]:
        with pytest.raises(ListOpsSyntaxError, match=msg):
            evaluate_tokens(bad.split())


def test_lra_source_format():
    assert lra_source("[MAX 2 9 ]".split()) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert lra_source("[SM 1 [MIN 3 4 ] ]".split()) == "( ( ( [SM 1 ) ( ( ( [MIN 3 ) 4 ) ] ) ) ] )"


def test_files_roundtrip_and_bracket_kept(tmp_path):
    samples = write_listops_files(tmp_path, n={"train": 5, "val": 3, "test": 3})
    for split, name in lo.FILES.items():
        seqs, y = lo.read_listops_tsv(tmp_path / name)
        assert y.tolist() == [v for _, v in samples[split]]
        for i, (tokens, value) in enumerate(samples[split]):
            assert lo.detokenize(seqs[i]).split() == tokens  # exact, `]` included, nothing cut
            assert evaluate_tokens(lo.detokenize(seqs[i]).split()) == value
            assert int((seqs[i] == lo.CLOSE_ID).sum()) == sum(t.startswith("[") for t in tokens)


def test_vocabulary():
    assert lo.VOCAB_SIZE == 16 and lo.PAD_ID == 0
    assert set(lo.TOKEN_TO_ID.values()) == set(range(1, 16))
    assert "]" in lo.TOKEN_TO_ID
