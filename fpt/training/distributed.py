"""Several processes: Lightning DDP (or FSDP) launched by ``torchrun`` or SLURM's ``srun``.

* ``devices`` processes per node x ``num_nodes`` nodes; each process trains on ``batch_size / world``
  samples of every global batch (``StreamBatchSampler``), so the result matches one process with
  the same global batch.
* DDP all-reduces gradients only of parameters that require them (the trained ~0.1%), with
  ``find_unused_parameters=False``; frozen weights are rebuilt identically on every rank and left
  out of DDP's start-up broadcast, and so are the buffers (``FPTModule.setup``), so DDP syncs none.
* Checkpoints, ``model.safetensors``, ``results.json`` and the logs are written by rank 0;
  validation and test metrics are torchmetrics states reduced across ranks when computed.
* ``strategy: fsdp`` shards the backbone's weights across GPUs, for backbones too large for one
  (see docs/distributed.md for its caveats). Untested in CI.
"""

from __future__ import annotations

import os

from fpt.config.run import RunConfig


def global_rank_from_env() -> int:
    """This process's rank before Lightning has started (torchrun: RANK; SLURM: SLURM_PROCID)."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


def _fsdp_wrap_policy(module, recurse: bool, nonwrapped_numel: int) -> bool:
    """Wrap each transformer block (GPT2Block, LlamaDecoderLayer, GPTNeoXLayer, ...) in its own FSDP unit."""
    if recurse:
        return True
    return type(module).__name__.endswith(("DecoderLayer", "Block", "Layer")) and nonwrapped_numel > 0


def make_strategy(config: RunConfig, accelerator: str):
    """Lightning strategy for ``config.strategy`` (auto: one process, or DDP when there are several)."""
    world = config.devices * config.num_nodes
    if config.strategy == "fsdp":
        if accelerator != "gpu":
            raise ValueError("strategy fsdp needs CUDA devices; use strategy ddp on CPUs")
        from lightning.pytorch.strategies import FSDPStrategy

        # use_orig_params: a block mixes frozen (attention, MLP) and trained (norm) parameters.
        return FSDPStrategy(auto_wrap_policy=_fsdp_wrap_policy, use_orig_params=True, state_dict_type="full")
    if config.strategy == "ddp" or (config.strategy == "auto" and world > 1):
        from lightning.pytorch.strategies import DDPStrategy

        # (Buffers need no flag: the model's are all on the ignore list, so none is broadcast per step.)
        return DDPStrategy(find_unused_parameters=False,
                           process_group_backend="nccl" if accelerator == "gpu" else "gloo")
    return "auto"


def local_processes(config: RunConfig) -> int:
    """Processes sharing this machine's CPU cores."""
    if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return config.devices


def shutdown_process_group(wait_for_peers: bool = True) -> None:
    """End a torchrun/SLURM process group cleanly before the interpreter exits.

    Lightning leaves the group it created open. A rank that exits while its peers still write
    their files tears down gloo's connections under them, and an open group at interpreter exit
    can abort the process ("terminate called without an active exception"). After a successful
    command every rank waits for the others, then the group is destroyed; after a failure there
    is no wait (a peer may never arrive), only the destroy.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_peers:
            dist.barrier()
    finally:
        dist.destroy_process_group()
