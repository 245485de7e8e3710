"""RequestChannel: request/reply and publish/subscribe over a Channel's sockets.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
