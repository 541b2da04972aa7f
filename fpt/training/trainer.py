"""The Lightning Trainer a run gets: device, precision, strategy, callbacks, quiet logs."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fpt.training.callbacks import (
    AtomicCheckpointIO,
    ChanceWarning,
    FlushLogsOnCheckpoint,
    PhaseTracker,
    Progress,
    ResumableCSVLogger,
    ResumeCheckpoint,
    progress_bar,
)
from fpt.training.stopping import GracefulStop
from fpt.config.run import RunConfig
from fpt.training.distributed import make_strategy
from fpt.model import fastpath
from fpt.model.step import resolve_precision
from fpt.training.module import FPTModule


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(accelerator, precision) for Lightning."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu (or auto)")
    accelerator = fastpath.accelerator_for(config.device)
    if accelerator == "cpu" and config.strategy == "fsdp":  # checked again in make_strategy; here before anything
        raise ValueError("--strategy fsdp shards the backbone across CUDA devices; on CPUs use --strategy ddp (or auto)")
    if accelerator == "cpu" and config.precision in ("16-mixed", "16"):
        # Lightning would run bf16 autocast instead (fp16 autocast is CUDA's), and the run would record 16-mixed
        raise ValueError(f"--precision {config.precision} is fp16 autocast, which runs on CUDA only; on a CPU use "
                         "--precision bf16-mixed (bf16 autocast) or 32-true (the default there)")
    return accelerator, resolve_precision(config.precision, accelerator)


# -- the two entry points -----------------------------------------------------------------------
def _trainer(config: RunConfig, run_dir: Path, enable_progress_bar: bool | None = None,
             resumed_step: int | None = None, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    accelerator, precision = resolve_device(config)
    callbacks: list[Callback] = [Progress(), *(extra_callbacks or [])]
    if enable_progress_bar is None:
        enable_progress_bar = os.isatty(2)
    if enable_progress_bar:
        # The bar reads its metrics on the host; on a GPU, refreshing every step would sync every step.
        callbacks.append(progress_bar(1 if accelerator == "cpu" else min(50, config.eval_every)))
    # checkpoints/last.ckpt after each validation and the final step (fpt.training.callbacks.ResumeCheckpoint says why
    # not ModelCheckpoint); last, so that it includes every callback's state after a validation.
    callbacks += [ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt", config.eval_every),
                  FlushLogsOnCheckpoint()]  # metrics.csv rows up to a checkpoint survive a kill right after it
    loggers: list = [ResumableCSVLogger(str(run_dir), keep_before_step=resumed_step)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    except ImportError:
        pass
    return L.Trainer(
        accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=make_strategy(config, accelerator), precision=precision, max_steps=config.steps,
        max_epochs=-1, check_val_every_n_epoch=None,
        # val_check_interval counts batches, not optimizer steps: with accumulation, A batches per step
        val_check_interval=config.eval_every * config.accumulate_grad_batches,
        accumulate_grad_batches=config.accumulate_grad_batches,
        plugins=[AtomicCheckpointIO()],  # checkpoints: temp file + fsync + rename, read with weights_only=True
        num_sanity_val_steps=0, callbacks=callbacks, logger=loggers, log_every_n_steps=min(50, config.eval_every),
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, default_root_dir=str(run_dir),
        deterministic=False, use_distributed_sampler=False, enable_checkpointing=False,
    )


def _quiet_lightning():
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*infinite.*")
    # _log_eval logs values torchmetrics already reduced across ranks; Lightning cannot tell.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level in distributed.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__`.*")
    # Lightning 2.6 calls a deprecated torch pytree API internally; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # On a machine with SLURM installed, Lightning suggests srun to every run; fpt's SLURM use is docs/distributed.md.
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system but is not used.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


def _health_callbacks(config: RunConfig, module: FPTModule, last: Path) -> tuple[GracefulStop, PhaseTracker,
                                                                               ChanceWarning | None]:
    """The callbacks that watch a run: signals (checkpoint, then stop), the phase for messages, chance level."""
    chance = None
    if config.chance_warning_evals > 0 and module.objective.kind == "classification":
        spec = module.task.spec
        chance = ChanceWarning(spec.num_classes, len(module.task.val()) * spec.num_labels, config.chance_warning_evals,
                               hints={"lr": config.lr, "layers": module.model.backbone.num_layers})
    return GracefulStop(last, config.eval_every), PhaseTracker(), chance
