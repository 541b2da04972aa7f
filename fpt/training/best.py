"""best.safetensors: the weights at the best validation point, kept while training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from fpt.runs.checkpoint import save_trained
from fpt.model.objectives import better


# -- best-validation weights ----------------------------------------------------------------
BEST_WEIGHTS = "best.safetensors"


# Best-validation weights: keep the trained parameters of the best validation, test them at the end.
#
# :class:`BestValidationWeights` is a self-contained Lightning callback. After every validation
# whose headline value (accuracy; RMSE for regression, lower) beats every earlier one, or equals the
# best with a lower validation loss (small validation sets tie often), it copies the trained
# parameters (input layer, head, norms, positions: ~100 KB for FPT; everything for ``--freeze full``)
# to CPU memory on every process and, on rank 0, writes them to
# ``RUN_DIR/best.safetensors`` (the ``model.safetensors`` format, with ``best_step`` and
# ``val_<metric>`` in its metadata; written atomically). Its best value and step live in the
# resume checkpoint, so a resumed run keeps the best it had.
#
# After training and the usual test at the final weights, :meth:`BestValidationWeights.test_at_best`
# loads the best weights, runs the test splits again, and restores the final weights; results.json
# gets both (``test`` at the final step, ``at_best_val`` at the best validation, which is how
# Rothermel et al. 2021 select and evaluate). Not under ``--strategy fsdp`` (sharded parameters):
# there ``at_best_val`` says so.
class BestValidationWeights(Callback):
    """Keeps the trained parameters of the best validation and tests them at the end (see above)."""

    def __init__(self, path: str | Path, metric: str = "val/accuracy", higher_is_better: bool = True,
                 enabled: bool = True):
        self.path = Path(path)
        self.metric = metric  # the objective's headline validation metric (accuracy, or rmse for regression)
        self.higher_is_better = higher_is_better
        self.enabled = enabled
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_loss: float | None = None  # breaks ties of the metric: the lower validation loss wins
        self._weights: dict[str, torch.Tensor] | None = None  # CPU copy on every process

    # -- resume state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value", state_dict.get("best_accuracy"))
        self.best_step = state_dict.get("best_step")
        self.best_loss = state_dict.get("best_loss")
        self._weights = None  # read back from best.safetensors when needed

    # -- during training -------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        value, step = float(value), int(trainer.global_step)  # the same global value on every rank
        loss = trainer.callback_metrics.get("val/loss")
        loss = float(loss) if loss is not None else None
        if math.isnan(value):
            return
        if not better(value, self.best_value, self.higher_is_better, loss, self.best_loss):
            return  # an equal value wins only with a lower validation loss (as FPTModule's val.best)
        self.best_value, self.best_step, self.best_loss = value, step, loss
        self._weights = {n: t.detach().to("cpu", copy=True) for n, t in pl_module.model.trainable_state_dict().items()}
        if trainer.is_global_zero:
            save_trained(pl_module.model, self.path, extra={"best_step": str(step), self._value_key: repr(value)},
                         trained=self._weights, step=step)

    @property
    def _value_key(self) -> str:
        return "val_" + self.metric.split("/", 1)[-1]  # val_accuracy, val_rmse

    # -- after training --------------------------------------------------------------------------
    def _best_weights(self) -> dict[str, torch.Tensor] | None:
        if self._weights is None and self.best_step is not None and self.path.exists():
            from safetensors.torch import load_file

            self._weights = load_file(str(self.path))
        return self._weights

    def test_at_best(self, trainer, module, final_metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Test metrics at the best validation (``{"step", "val_<metric>", "weights", <test split>: {...}}``)."""
        if not self.enabled:
            return {"unavailable": "not kept under --strategy fsdp (sharded parameters)"}
        if self.best_step is None:
            return {"unavailable": "no validation ran (steps < eval_every)"}
        out: dict[str, Any] = {"step": self.best_step, self._value_key: self.best_value, "weights": self.path.name}
        if self.best_step == int(trainer.global_step):  # the final weights are the best ones
            out.update({k: dict(v) for k, v in final_metrics.items()})
            return out
        weights = self._best_weights()
        if weights is None:
            return {"unavailable": f"{self.path} is missing", "step": self.best_step, self._value_key: self.best_value}
        model = module.model
        final = {n: t.detach().clone() for n, t in model.trainable_state_dict().items()}
        if set(weights) != set(final):
            raise ValueError(f"{self.path}: its tensors do not match this model's trained parameters")
        model.load_state_dict({k: v.to(final[k].device, final[k].dtype) for k, v in weights.items()}, strict=False)
        module.eval_tag = "best/"
        try:
            results = trainer.test(module, verbose=False)
        finally:
            module.eval_tag = ""
            model.load_state_dict(final, strict=False)
        for key, value in {k: v for d in results for k, v in d.items()}.items():
            if key.startswith("best/"):
                split, name = key[len("best/"):].split("/", 1)
                out.setdefault(split, {})[name] = float(value)
        return out
