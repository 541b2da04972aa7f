"""Words every layer shares: file writes (io), messages (text), option declarations (options), CPU threads (cpu).

Nothing here imports from the rest of fpt. Layers: docs/architecture.md.
"""
