"""_remote: see docs/architecture.md."""
