"""_local: see docs/architecture.md."""
