"""The command line: ``python -m ipchannel`` (status, demo).

The layers and what each module holds: docs/explanation/architecture.rst.
"""
