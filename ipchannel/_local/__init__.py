"""The backend on one machine: the flock election, the files of the runtime directory, Unix sockets.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
