"""The command line: fpt fit / test / predict / list (main), fpt sweep / report / plot (experiments).

Layers: docs/architecture.md.
"""
