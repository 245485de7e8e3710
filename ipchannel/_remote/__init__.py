"""The backend across machines: an etcd or Redis coordinator, TCP with the authkey, TLS.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
