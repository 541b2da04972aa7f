"""Backbones: load or build the network that FPT keeps (mostly) frozen.

One factory, ``load_backbone(name, init=..., layers=...)``, for every source; which loader a name goes
to is decided by the registry (``registry.py``; ``fpt list`` prints it): ``smollm2-135m`` (the offline
default, ``smollm2.py``), ``minilm-l6`` (``minilm.py``), ``lstm`` (``lstm.py``), ``run:DIR``
(``runs.py``), ``FILE.gguf`` (``smollm2.py``), anything else a Hugging Face id or local directory
(``hf.py``). What trains in each family: ``freeze.py``. This file only exports.
"""

from fpt.backbones.backbone import OFFLINE_DEFAULT, Backbone, BuildOptions, Init  # noqa: F401
from fpt.backbones.freeze import ARCHITECTURES, SUPPORTED_ARCHITECTURES, has_learned_positions  # noqa: F401
from fpt.backbones.hf import build_hf, hf_config, prepare_config, wrap_hf  # noqa: F401
from fpt.backbones.lstm import LSTMBackbone  # noqa: F401
from fpt.backbones.names import HUB_EXAMPLES  # noqa: F401
from fpt.backbones.registry import (  # noqa: F401
    BackboneSource,
    builtin_backbones,
    create_backbone,
    list_backbones,
    load_backbone,
    register_backbone,
)

BUILTIN_BACKBONES = builtin_backbones()  # name -> description of the built-in names (smollm2-135m, minilm-l6, lstm)
