"""The run config: RunConfig and its fields (run), YAML files and presets (files), the protocols (protocols).

Pure Python: no torch. Layers: docs/architecture.md.
"""
