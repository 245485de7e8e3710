"""_seams: see docs/architecture.md."""
