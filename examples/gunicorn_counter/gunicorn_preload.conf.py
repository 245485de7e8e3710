"""The counter example with --preload: the master imports app.py once, then forks the workers.

Nothing to add for ipchannel: creating a RequestChannel opens nothing, and after a
fork ipchannel resets what the child inherited. Whatever connects at import time
(here the SharedDict ``stats``) is hosted by the master, which then serves the
workers; a RequestChannel that first connects in a worker is hosted by a worker.

    gunicorn -c gunicorn_preload.conf.py app:app
"""

from __future__ import annotations

import os

preload_app = True
bind = os.environ.get("COUNTER_BIND", "unix:/tmp/gunicorn-counter.sock")
workers = 4
graceful_timeout = 10
