"""The model: FPT around a backbone (network), objectives, the training step, the CPU/GPU fast path, the feature cache.

No Lightning. Layers: docs/architecture.md. This file only exports.
"""

from fpt.model.network import FPT, ModelConfig  # noqa: F401

