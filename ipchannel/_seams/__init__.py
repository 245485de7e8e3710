"""The seams between the core and its backends: Coordinator, Transport, Listener, Session, the host record.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
