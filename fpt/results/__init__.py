"""What finished runs say: predictions (predict), published numbers (reference, ts_reference), reports and figures.

No Lightning. Layers: docs/architecture.md.
"""
