"""The run config: RunConfig and its fields (run), YAML files and presets (files), the protocols (protocols).

Pure Python: no torch. Layers: docs/architecture.md. This file only exports.
"""

from fpt.config.files import build_config, load_config, merge, read_yaml  # noqa: F401
from fpt.config.run import RunConfig  # noqa: F401

