"""gunicorn settings for the counter example: 4 sync workers on a Unix socket.

gunicorn -c gunicorn.conf.py app:app
"""

from __future__ import annotations

import os

bind = os.environ.get("COUNTER_BIND", "unix:/tmp/gunicorn-counter.sock")
workers = 4
worker_class = "sync"
graceful_timeout = 10  # a hosting worker hands over within this on SIGTERM or recycling
# Recycling workers is fine: a hosting worker hands hosting over as it exits (its state goes with it).
max_requests = int(os.environ.get("COUNTER_MAX_REQUESTS", "0"))
