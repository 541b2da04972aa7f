"""Sweeps: experiment files, the plan, running it (locally or on SLURM), the summary and the status.

Layers: docs/architecture.md.
"""
