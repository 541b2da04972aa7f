"""A finished run as a backbone: ``load_backbone("run:PATH/TO/RUN_DIR")``.

The paper's "bit-memory-pretrained" initialisation: train the whole transformer on Bit Memory
(``--freeze full``), then use that transformer, frozen, on other tasks::

    fpt fit --config bit-memory-small --init random --freeze full --run-dir runs/bm-full
    fpt fit --config bit-xor-small --backbone run:runs/bm-full --run-dir runs/xor-bm-init

A run's ``model.safetensors`` holds only its trained parameters plus the identity of the backbone
it was built on. To use it as a backbone, that backbone is rebuilt exactly as the run built it
(name, init, seed, layers, width: read from the run's ``config.yaml``) and every trained backbone
parameter of the run is loaded on top (``backbone.*`` tensors; the run's own input layer, head and
FPT position table are task-specific and left out). Under ``--freeze full`` that is every backbone
weight except the unused token table; under ``--freeze fpt`` only the layer norms (and GPT-2's
position table).

The result records where it came from: its identity (stored in every checkpoint that uses it, and
in ``results.json`` as ``backbone_identity``) carries ``source_run``, ``source_task``,
``source_freeze``, ``source_fingerprint`` (the source run's backbone as built) and, as
``fingerprint``, the fingerprint of the weights *after* loading, so a checkpoint trained on top of
one bit-memory run is never loaded onto another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from fpt.backbones.backbone import Backbone, BuildOptions

RUN_PREFIX = "run:"


def run_dir_of(name: str) -> Path:
    path = name[len(RUN_PREFIX):]
    if not path:
        raise ValueError("--backbone run:PATH needs the path of a finished run directory after 'run:'")
    return Path(path)


def load_run_source(name: str, options: BuildOptions, create: Callable[[str, BuildOptions], Backbone]):
    """The registry's loader for ``run:DIR``: the backbone of the finished run in ``name`` ("run:PATH"), with
    that run's trained weights. ``create`` is the registry's factory, handed in (this module is one of its
    loaders, so it does not import it), which builds the source run's backbone; the seed, LSTM width and LSTM
    kind are the source run's own."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fpt.config.files import finish_advice, load_config

    init, layers, attn_implementation = options.init, options.layers, options.attn_implementation
    trust_remote_code, dropout = options.trust_remote_code, options.dropout

    run_dir = run_dir_of(name)
    if init != "pretrained":
        raise ValueError(
            f"--backbone {name} loads the trained weights of that run; --init {init} does not apply "
            "(leave --init at pretrained)"
        )
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"--backbone {name}: {run_dir} is not a run directory (no config.yaml)")
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"--backbone {name}: {weights} does not exist; the run has not finished: "
                                f"{finish_advice(run_dir)}")
    source = load_config(run_dir / "config.yaml")
    source_layers = source.layers

    def build(depth: int | None) -> Backbone:  # the source run's backbone, as it was built, ``depth`` blocks deep
        # the source run's own options, but this run's depth, attention kernel, remote-code consent and dropout
        return create(source.backbone, BuildOptions.from_config(
            source, layers=depth, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code or source.trust_remote_code, dropout=dropout))

    backbone = build(source.layers)
    source_identity = backbone.identity()
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for broken files
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from None
    # The rebuilt backbone must be the one the run trained on (the same keys fpt.runs.checkpoint.check_identity
    # compares; not imported from there: fpt/runs/ is a layer above this one).
    diffs = [f"{k}: run {metadata.get(k)!r} vs rebuilt {source_identity.get(k)!r}"
             for k in ("backbone", "arch", "init", "layers", "hidden_size", "fingerprint")
             if metadata.get(k) != source_identity.get(k)]
    if diffs:
        raise ValueError(f"--backbone {name}: the run's backbone cannot be rebuilt as it was trained ("
                         + "; ".join(diffs) + "); was its source model changed since?")
    prefix = "backbone."
    trained = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not trained:
        raise ValueError(
            f"--backbone {name}: that run trained no backbone weight (freeze {source.freeze!r}); its backbone is "
            f"just {source.backbone!r} ({source.init}). Train the source with --freeze full (or fpt) to use it here."
        )
    own = backbone.state_dict()
    if layers is not None and layers != backbone.num_layers:
        if layers > backbone.num_layers:
            raise ValueError(f"--layers {layers} is more than the run {run_dir} has ({backbone.num_layers} blocks)")
        # Keep the first `layers` blocks: rebuild the source backbone that deep and drop later blocks' weights.
        backbone = build(layers)
        own = backbone.state_dict()
        trained = {k: v for k, v in trained.items() if k in own}
    unexpected = sorted(set(trained) - set(own))
    if unexpected:
        raise ValueError(f"{weights}: backbone tensors this backbone does not have: {unexpected[:5]}")
    for key, tensor in trained.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ValueError(f"{weights}: {key} has shape {tuple(tensor.shape)}, the backbone needs {tuple(own[key].shape)}")
    with torch.no_grad():
        backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in trained.items()}, strict=False)
    backbone.name = name
    backbone.weights_fingerprint = backbone._fingerprint()
    backbone.source = {
        "source_run": str(run_dir),
        "source_task": source.task,
        "source_backbone": source.backbone,
        "source_init": source.init,
        "source_freeze": source.freeze if isinstance(source.freeze, str) else "+".join(source.freeze),
        "source_layers": str(source_layers if source_layers is not None else backbone.num_layers),
        "source_fingerprint": source_identity["fingerprint"],
        "loaded_tensors": str(len(trained)),
    }
    return backbone
