"""_requests: see docs/architecture.md."""
