"""Model selection on validation: the best point of a run and the best setting of a sweep, with ties
(frequent on small validation sets: 10 cases give accuracies in steps of 10%) broken by the lower loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fpt.training.best import BestValidationWeights
from fpt.model.objectives import Classification, Regression


def test_an_equal_value_is_better_only_with_a_lower_loss():
    acc = Classification(2)
    assert acc.better(0.9, 0.8) and not acc.better(0.8, 0.9)
    assert acc.better(0.9, 0.9, loss=0.1, than_loss=0.3)  # same accuracy, better fitted
    assert not acc.better(0.9, 0.9, loss=0.3, than_loss=0.1)
    assert not acc.better(0.9, 0.9)  # no losses: the earlier point stays
    assert acc.better(0.5, None) and not acc.better(float("nan"), 0.5)
    rmse = Regression(1, [0.0], [1.0])
    assert rmse.better(0.1, 0.2) and not rmse.better(0.2, 0.1)
    assert rmse.better(0.2, 0.2, loss=0.01, than_loss=0.02)


class _Model:
    def __init__(self):
        self.w = torch.zeros(1)

    def trainable_state_dict(self):
        return {"w": self.w.clone()}


def test_best_weights_move_to_a_tying_validation_with_a_lower_loss(tmp_path):
    best = BestValidationWeights(tmp_path / "best.safetensors")
    module = SimpleNamespace(model=_Model())
    # (step, val accuracy, val loss): 100% first at step 25, again at step 50 with a lower loss,
    # then at step 75 with a higher loss
    for step, acc, loss in ((25, 1.0, 0.5), (50, 1.0, 0.1), (75, 1.0, 0.3), (100, 0.9, 0.05)):
        module.model.w = torch.full((1,), float(step))
        trainer = SimpleNamespace(sanity_checking=False, global_step=step, is_global_zero=False,
                                  callback_metrics={"val/accuracy": torch.tensor(acc), "val/loss": torch.tensor(loss)})
        best.on_validation_end(trainer, module)
    assert best.best_step == 50 and best.best_loss == pytest.approx(0.1)
    assert float(best._weights["w"]) == 50.0  # the weights of that step
    state = best.state_dict()
    again = BestValidationWeights(tmp_path / "best.safetensors")
    again.load_state_dict(state)
    assert (again.best_step, again.best_value) == (50, 1.0) and again.best_loss == pytest.approx(0.1)


def test_the_time_series_report_chooses_the_learning_rate_as_the_sweep_does():
    """Two learning rates with the same validation accuracy (GunPoint: 100% on 30 cases): the report's
    time-series table marks the one with the lower validation loss, the setting sweep.md chose."""
    from pathlib import Path

    from fpt.results.timeseries_report import timeseries_table

    def run(lr, val_loss, test):
        return {"task": "timeseries", "data": {"problem": "GunPoint"}, "backbone": "smollm2-135m", "init": "random",
                "freeze": "fpt", "lr": lr, "seed": 0, "steps": 125, "objective": {"metric": "accuracy",
                "higher_is_better": True}, "val": {"best_accuracy": 1.0, "best_loss": val_loss},
                "test": {"accuracy": test}, "at_best_val": {"test": {"accuracy": test}}}

    results = {Path("a"): run(3e-4, 0.20, 0.900), Path("b"): run(1e-3, 0.05, 0.907)}
    table = timeseries_table(list(results), results)
    assert [(g["lr"], g["chosen"]) for g in table] == [(3e-4, False), (1e-3, True)]
    results[Path("a")]["val"]["best_loss"] = 0.01  # now the lower loss is 3e-4's
    assert [(g["lr"], g["chosen"]) for g in timeseries_table(list(results), results)] == [(3e-4, True), (1e-3, False)]
