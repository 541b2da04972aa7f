"""A run on disk: its directory and lock (rundir), checkpoints and weights (checkpoint), what stops it (health).

No Lightning: a finished run loads from here. Layers: docs/architecture.md.
"""
