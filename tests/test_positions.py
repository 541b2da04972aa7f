"""Growing GPT-2's position table (``position_rows``): longer sequences feed whole, the model's rows kept."""

from __future__ import annotations

import pytest
import torch

from fpt.backbones import load_backbone


def _gpt2(**options):
    return load_backbone("gpt2", init="random", layers=1, **options)


def test_grown_table_keeps_the_models_rows_and_draws_the_rest_seeded():
    plain, grown = _gpt2(), _gpt2(position_rows=2048)
    old, new = plain.model.wpe.weight.detach(), grown.model.wpe.weight.detach()
    assert new.shape == (2048, 768) and grown.max_positions == 2048 and grown.model.config.n_positions == 2048
    assert torch.equal(new[:1024], old)  # the same seed builds the same model; its rows are kept exactly
    assert abs(float(new[1024:].std()) / float(old.std()) - 1) < 0.05  # new rows at the table's scale
    assert bool(new[1024:].ne(0).all())  # no new row starts at exactly zero (the SmolLM2 zero-input hazard)
    again = _gpt2(position_rows=2048).model.wpe.weight.detach()
    assert torch.equal(again, new)  # seeded: the same rows every time
    other = _gpt2(position_rows=2048, seed=1).model.wpe.weight.detach()
    assert not torch.equal(other[1024:], new[1024:])
    assert "grown from 1024 to 2048" in grown.build["positions"]
    assert grown.weights_fingerprint != plain.weights_fingerprint


def test_fpt_feeds_a_1500_token_sequence_only_with_a_grown_table():
    from fpt.model import FPT, ModelConfig
    from fpt.tasks.base import TaskSpec

    spec = TaskSpec(input_type="discrete", input_dim=17, max_tokens=1500, num_classes=10)
    with pytest.raises(ValueError, match=r"accepts at most 1024.*--position-rows 2048"):
        FPT(_gpt2(), spec, ModelConfig())
    model = FPT(_gpt2(position_rows=2048), spec, ModelConfig())
    tokens = torch.randint(0, 17, (2, 1500))
    logits = model(tokens)
    assert logits.shape[0] == 2 and logits.shape[-1] == 10 and torch.isfinite(logits).all()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("wpe.weight") for n in trainable)  # the grown table trains as positions under fpt


def test_position_rows_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="must be above the 1024 rows"):
        _gpt2(position_rows=512)
    with pytest.raises(ValueError, match="supports for gpt2 only.*'lstm'"):
        load_backbone("lstm", init="random", position_rows=2048)


def test_the_report_states_a_grown_table_as_a_difference():
    from fpt.results.reference import REFERENCES, differences

    ref = next(r for r in REFERENCES if r.task == "listops" and r.source == "rothermel2021")
    results = {"task": "listops", "backbone": "gpt2", "init": "pretrained", "freeze": "fpt", "position_rows": 2048,
               "task_options": {"source": "files"}}
    assert any("grown to 2048 rows" in d for d in differences(results, ref))
    assert not any("grown" in d for d in differences({**results, "position_rows": None}, ref))


@pytest.mark.usefixtures("offline_data")
def test_the_gpt2_listops_preset_feeds_sequences_over_1024_tokens_whole(tmp_path):
    import json

    from fpt.cli.main import main
    from fpt.data.fixtures import write_listops_files
    from fpt.results.reference import variant_of

    written = write_listops_files(tmp_path / "lra", n={"train": 4, "val": 2, "test": 3}, min_length=1100,
                                  max_length=1300)
    assert max(len(t) for t, _ in written["test"]) > 1024
    run = tmp_path / "run"
    code = main(["fit", "--config", "listops", "--init", "random", "--layers", "1", "--steps", "1",
                 "--batch-size", "2", "--eval-every", "1", "--data-dir", str(tmp_path / "lra"), "--run-dir", str(run)])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["position_rows"] == 2048 and not (results.get("data") or {}).get("dropped_too_long")
    assert variant_of(results) == "listops-fixed"  # every test sequence: the variant Rothermel et al.'s 46.1 is on
