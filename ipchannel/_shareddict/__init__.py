"""SharedDict: a replicated dict with local reads, its members, and its journal.

The layers and what each module holds: docs/explanation/architecture.rst.
"""
