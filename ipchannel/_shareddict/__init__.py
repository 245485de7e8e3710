"""_shareddict: see docs/architecture.md."""
