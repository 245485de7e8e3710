"""The counter example with --preload: the master imports app.py once, then forks the workers.

Nothing to add for ipchannel: creating a RequestChannel opens nothing, and after a
fork ipchannel resets what the child inherited. Just do not make a request at
import time, or the master itself would be elected host.

    gunicorn -c gunicorn_preload.conf.py app:app
"""

from __future__ import annotations

import os

preload_app = True
bind = os.environ.get("COUNTER_BIND", "unix:/tmp/gunicorn-counter.sock")
workers = 4
graceful_timeout = 10
