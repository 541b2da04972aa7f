"""Training with Lightning: the module, the trainer, callbacks, fit and test, results.json, DDP/FSDP.

This file imports nothing, so that fpt.training.distributed stays light. Layers: docs/architecture.md.
"""
