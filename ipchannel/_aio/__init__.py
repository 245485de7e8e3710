"""_aio: see docs/architecture.md."""
