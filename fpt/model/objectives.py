"""Output types: what the head's numbers mean, the loss, the metrics, and which way is better.

A task declares its output type in ``TaskSpec.output``; :func:`make_objective` turns it into an
:class:`Objective` that the training loop, ``fpt predict``, sweeps and reports call into. The
model itself only sees shapes: its head emits ``[B, num_labels, num_classes]`` numbers.

* ``classification`` (:class:`Classification`): ``num_labels`` labels per sample, each one of
  ``num_classes`` classes. Cross-entropy; metrics ``accuracy`` (per label), ``exact_accuracy``
  (every label of a sample right) and ``loss``. Higher accuracy is better.
* ``regression`` (:class:`Regression`): ``num_labels`` real-valued targets per sample
  (``num_classes`` is 1: one number per target). Targets are standardised with the training
  split's mean and std per target (the task provides them, ``task.target_statistics()``); the head
  predicts standardised values and the loss is their mean squared error. Metrics are in the
  targets' **original units**: ``rmse`` and ``mae`` over every target of every sample, and
  ``loss`` (the standardised MSE). Lower RMSE is better. Batches carry ``y`` as ``float [B, K]``
  (or ``[B]`` for one target) in original units.

* ``forecast`` (:class:`Forecast`, the ``forecast`` task): ``num_labels = horizon`` future values of one
  channel of one window (channel independence). The head's outputs are on the window's scale (after
  instance normalisation); ``y`` carries the map back (its layout: ``horizon`` z-scored targets, the
  window's location, its scale, the channel index). Loss and headline ``mse`` (with ``mae``) on the
  z-scored scale, as the forecasting literature reports; ``mse_original`` / ``mae_original`` in the
  series' units (the training rows' per-channel std). Lower MSE is better.

Every objective has ``metric`` (the headline: ``results.json`` ``test.<metric>`` and
``val.best``) and ``higher_is_better`` (model selection: ``fpt sweep`` picks the lr with the best
mean validation value in this direction).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics

OUTPUT_TYPES = ("classification", "regression", "forecast")


def _mean_metric() -> torchmetrics.MeanMetric:
    """A mean without the per-update NaN check, which reads the device (a host sync per batch).

    With ``nan_strategy="disable"`` torchmetrics (1.9) ignores ``update``'s ``weight``; weight a batch's
    value by repeating it (:func:`_per_sample`) instead."""
    try:
        return torchmetrics.MeanMetric(nan_strategy="disable")
    except ValueError:  # torchmetrics before "disable" existed
        return torchmetrics.MeanMetric(nan_strategy="ignore")


def _per_sample(value: torch.Tensor, n: int) -> torch.Tensor:
    """A batch's mean repeated once per sample: a plain mean of these is the sample-weighted mean."""
    return value.detach().reshape(()).expand(n)


def better(value: float, than: float | None, higher_is_better: bool, loss: float | None = None,
           than_loss: float | None = None) -> bool:
    """Is validation ``value`` better than ``than``? An equal value is better when its loss is lower (``loss`` /
    ``than_loss``, given): small validation sets tie often (10 cases give accuracies in steps of 10%), and the
    lower loss is then the better-fitted model, not the earlier. Used by a run's best point, best.safetensors
    (fpt.training.callbacks.BestValidationWeights) and, over seeds' means, a sweep's choice."""
    if math.isnan(value):
        return False
    if than is None or (isinstance(than, float) and math.isnan(than)):
        return True
    if value == than:
        return loss is not None and than_loss is not None and loss < than_loss
    return value > than if higher_is_better else value < than


class Objective:
    """Loss, metrics and predictions of one output type (subclasses below)."""

    kind: str = ""
    metric: str = ""  # the headline metric's name
    higher_is_better: bool = True

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> torch.nn.ModuleDict:
        """Fresh metric states for one evaluation split (register them on the module that evaluates)."""
        raise NotImplementedError

    def update(self, metrics: torch.nn.ModuleDict, output: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, metrics: torch.nn.ModuleDict) -> dict[str, torch.Tensor]:
        """The split's values (reduced across processes by torchmetrics), then the states are reset."""
        values = {name: m.compute() for name, m in metrics.items()}
        for m in metrics.values():
            m.reset()
        return values

    def train_values(self, output: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """What to log per training step besides the loss (tensors or torchmetrics objects)."""
        return {}

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Predictions in the task's terms: class ids ``[B, labels]`` or values ``[B, targets]``."""
        raise NotImplementedError

    def better(self, value: float, than: float | None, loss: float | None = None,
               than_loss: float | None = None) -> bool:
        """Is ``value`` better than ``than`` in this metric's direction (:func:`better`)?"""
        return better(value, than, self.higher_is_better, loss, than_loss)

    def describe(self) -> dict[str, Any]:
        """For results.json: ``{"kind", "metric", "higher_is_better", ...}``."""
        return {"kind": self.kind, "metric": self.metric, "higher_is_better": self.higher_is_better}


class Classification(Objective):
    kind = "classification"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def _accuracy(self) -> torchmetrics.Metric:
        # validate_args=False: the argument checks call torch.unique and read it on the host every batch
        return torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="micro", validate_args=False)

    def loss(self, output, y):
        y = y.reshape(output.shape[0], -1)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), y.reshape(-1))

    def metrics(self):
        return torch.nn.ModuleDict({"accuracy": self._accuracy(), "exact_accuracy": _mean_metric(),
                                    "loss": _mean_metric()})

    def update(self, metrics, output, y, loss):
        y = y.reshape(output.shape[0], -1)
        pred = output.argmax(-1)
        metrics["accuracy"].update(pred.reshape(-1), y.reshape(-1))
        metrics["exact_accuracy"].update((pred == y).all(1).float())
        metrics["loss"].update(_per_sample(loss, y.shape[0]))

    def train_metric(self) -> torchmetrics.Metric:
        """The per-step training accuracy metric (a module: register it so it follows the device)."""
        return self._accuracy()

    def predict(self, output):
        return output.argmax(-1)


class Regression(Objective):
    kind = "regression"
    metric = "rmse"
    higher_is_better = False

    def __init__(self, num_targets: int, mean, std):
        self.num_targets = int(num_targets)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.num_targets or std.numel() != self.num_targets:
            raise ValueError(f"regression: {self.num_targets} targets but target statistics of "
                             f"{mean.numel()} means / {std.numel()} stds")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"regression: target statistics must be finite with std > 0, got mean {mean.tolist()}, "
                             f"std {std.tolist()}")
        self.mean, self.std = mean, std

    def _targets(self, output, y):
        return y.reshape(output.shape[0], self.num_targets).to(torch.float32)

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean.to(y.device)) / self.std.to(y.device)

    def predict(self, output):
        """Head outputs ``[B, K, 1]`` (standardised) -> values in original units ``[B, K]``."""
        z = output.reshape(output.shape[0], self.num_targets).float()
        return z * self.std.to(z.device) + self.mean.to(z.device)

    def loss(self, output, y):
        z = output.reshape(output.shape[0], self.num_targets).float()
        return F.mse_loss(z, self.standardise(self._targets(output, y)))

    def metrics(self):
        return torch.nn.ModuleDict({"rmse": torchmetrics.MeanSquaredError(squared=False),
                                    "mae": torchmetrics.MeanAbsoluteError(), "loss": _mean_metric()})

    def update(self, metrics, output, y, loss):
        y = self._targets(output, y)
        pred = self.predict(output)
        metrics["rmse"].update(pred.reshape(-1), y.reshape(-1))  # over every target of every sample
        metrics["mae"].update(pred.reshape(-1), y.reshape(-1))
        metrics["loss"].update(_per_sample(loss, y.shape[0]))

    def train_values(self, output, y):
        with torch.no_grad():
            err = self.predict(output.detach()) - self._targets(output, y)
            return {"rmse": err.pow(2).mean().sqrt()}

    def describe(self):
        return {**super().describe(), "target_mean": [float(v) for v in self.mean],
                "target_std": [float(v) for v in self.std],
                "note": "targets standardised with the training split's mean and std; rmse and mae in original units"}


class Forecast(Objective):
    kind = "forecast"
    metric = "mse"
    higher_is_better = False

    def __init__(self, horizon: int, mean, std):
        self.horizon = int(horizon)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)  # per channel, original units
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if not (torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError(f"forecast: channel statistics must be finite with std > 0, got std {self.std.tolist()}")

    def split(self, output: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z-scored prediction ``[B, H]``, z-scored target ``[B, H]``, channel ``[B]``) from the head's outputs
        and ``y``'s layout (targets, loc, scale, channel)."""
        y = y.reshape(output.shape[0], self.horizon + 3).to(torch.float32)
        loc, scale = y[:, self.horizon:self.horizon + 1], y[:, self.horizon + 1:self.horizon + 2]
        pred = output.reshape(output.shape[0], self.horizon).float() * scale + loc
        return pred, y[:, : self.horizon], y[:, self.horizon + 2].long()

    def loss(self, output, y):
        pred, target, _ = self.split(output, y)
        return F.mse_loss(pred, target)

    def metrics(self):
        return torch.nn.ModuleDict({"mse": torchmetrics.MeanSquaredError(), "mae": torchmetrics.MeanAbsoluteError(),
                                    "mse_original": torchmetrics.MeanSquaredError(),
                                    "mae_original": torchmetrics.MeanAbsoluteError(), "loss": _mean_metric()})

    def update(self, metrics, output, y, loss):
        pred, target, channel = self.split(output, y)
        metrics["mse"].update(pred.reshape(-1), target.reshape(-1))  # every window, step and channel
        metrics["mae"].update(pred.reshape(-1), target.reshape(-1))
        std = self.std.to(pred.device)[channel].unsqueeze(1)
        metrics["mse_original"].update((pred * std).reshape(-1), (target * std).reshape(-1))
        metrics["mae_original"].update((pred * std).reshape(-1), (target * std).reshape(-1))
        metrics["loss"].update(_per_sample(loss, pred.shape[0]))

    def predict(self, output):
        raise ValueError("a forecast's outputs are on each window's own scale: use fpt.tasks.forecast.forecast_file "
                         "(fpt predict), which maps them back")

    def describe(self):
        return {**super().describe(), "channel_mean": [float(v) for v in self.mean],
                "channel_std": [float(v) for v in self.std],
                "note": "mse and mae on the z-scored scale (training rows' statistics), as published; *_original in the "
                        "series' units; every test window counted (no drop_last)"}


def make_objective(spec, task=None) -> Objective:
    """The objective of a task: ``spec.output`` decides; regression reads ``task.target_statistics()``."""
    output = getattr(spec, "output", "classification")
    if output == "classification":
        return Classification(spec.num_classes)
    if output == "regression":
        if task is None:
            raise ValueError("a regression task must provide target_statistics() (the training targets' mean and "
                             "std, per target)")
        mean, std = task.target_statistics()
        return Regression(spec.num_labels, mean, std)
    if output == "forecast":
        if task is None or not hasattr(task, "channel_statistics"):
            raise ValueError("a forecast task must provide channel_statistics() (the training rows' mean and std)")
        mean, std = task.channel_statistics()
        return Forecast(spec.num_labels, mean, std)
    raise ValueError(f"unknown output type {output!r}; known: {', '.join(OUTPUT_TYPES)}")


def headline(results: dict[str, Any]) -> tuple[str, bool]:
    """(metric, higher_is_better) of a finished run's results.json; runs from before output types: accuracy."""
    val = results.get("val") or {}
    objective = results.get("objective") or {}
    return (str(objective.get("metric") or val.get("metric") or "accuracy"),
            bool(objective.get("higher_is_better", val.get("higher_is_better", True))))


def val_score(results: dict[str, Any]) -> float | None:
    """The best validation value of a run: ``val.best_accuracy`` for accuracy (older runs have only that),
    else ``val.best`` (e.g. the lowest RMSE)."""
    val = results.get("val") or {}
    metric, _ = headline(results)
    value = val.get("best_accuracy") if metric == "accuracy" and val.get("best_accuracy") is not None \
        else val.get("best")
    return None if value is None else float(value)


def test_score(results: dict[str, Any], at: str = "best") -> float | None:
    """The run's headline test value: ``at="best"``, with the weights of the best validation
    (``at_best_val.test.<metric>``; how Rothermel et al. 2021 select and evaluate; runs from before
    it was kept: the final one), or ``at="final"``, with the final weights (``test.<metric>``)."""
    if at not in ("best", "final"):
        raise ValueError(f"at must be 'best' or 'final', got {at!r}")
    metric, _ = headline(results)
    if at == "best":
        value = ((results.get("at_best_val") or {}).get("test") or {}).get(metric)
        if value is not None:
            return float(value)
    value = (results.get("test") or {}).get(metric)
    return None if value is None else float(value)
