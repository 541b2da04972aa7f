"""--init statistics: the pretrained weights' per-tensor mean and std, nothing else (fpt/backbones/statistics.py)."""

from __future__ import annotations

import pytest
import torch

from fpt.backbones import load_backbone


def test_statistics_init_keeps_each_tensors_mean_and_std_only(pretrained_dirs):
    path = pretrained_dirs["gpt2"]
    pretrained = dict(load_backbone(path, init="pretrained").model.named_parameters())
    stats = load_backbone(path, init="statistics", seed=3)
    again = load_backbone(path, init="statistics", seed=3)
    other = load_backbone(path, init="statistics", seed=4)
    assert stats.init == "statistics" and stats.weights_fingerprint == again.weights_fingerprint  # seeded
    assert stats.weights_fingerprint not in (other.weights_fingerprint, load_backbone(path).weights_fingerprint)
    for name, p in stats.model.named_parameters():
        p = p.detach()
        w = pretrained[name].detach()
        if w.numel() < 100 or float(w.std()) == 0.0:
            continue
        assert not torch.equal(p, w), name  # which weight goes where is gone ...
        assert float(p.mean()) == pytest.approx(float(w.mean()), abs=4 * float(w.std()) / w.numel() ** 0.5 + 1e-6)
        assert float(p.std()) == pytest.approx(float(w.std()), rel=0.15), name  # ... its scale is kept


def test_statistics_init_trains_and_is_its_own_setting(tmp_path, pretrained_dirs):
    from fpt.results import reference
    from fpt.config import build_config
    from fpt.training.fitting import fit

    r = fit(build_config({"task": "bit-xor", "backbone": pretrained_dirs["llama"], "init": "statistics", "steps": 2,
                          "eval_every": 2, "device": "cpu", "run_dir": str(tmp_path / "run")}), enable_progress_bar=False)
    assert r["init"] == "statistics" and reference.setting_of(r) == "frozen-statistics"
    assert reference.compare(r).reference is None  # no published number sourced
    from fpt.runs.checkpoint import load_run

    load_run(tmp_path / "run")  # the frozen weights are rebuilt from the seed: the fingerprint matches
    threads = torch.get_num_threads()
    try:  # ... with any thread count (a run with --num-threads 1, its report with all cores)
        torch.set_num_threads(1 if threads > 1 else 2)
        load_run(tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="no pretrained weights"):
        load_backbone("lstm", init="statistics")
