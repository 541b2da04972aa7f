"""What finished runs say: predictions (predict), published numbers (reference, ts_reference), reports and figures,
statistics over runs (statistics: what a study's answer needs).

No Lightning. Layers: docs/architecture.md.
"""
