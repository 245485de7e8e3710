# ruff: noqa: INP001 - run by gunicorn from this directory, not imported as a package
"""gunicorn settings for the tutorial: 4 sync workers on a Unix socket."""

from __future__ import annotations

import os

bind = os.environ.get("TUTORIAL_BIND", "unix:/tmp/tutorial.sock")
workers = 4
worker_class = "sync"
