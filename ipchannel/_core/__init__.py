"""Channel and its parts: the connector, the hosting term, the monitor, the socket, the server.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
