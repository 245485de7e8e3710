"""gunicorn settings for the counter example: 4 sync workers on a Unix socket.

gunicorn -c gunicorn.conf.py app:app
"""

from __future__ import annotations

import os

bind = os.environ.get("COUNTER_BIND", "unix:/tmp/gunicorn-counter.sock")
workers = 4
worker_class = "sync"
graceful_timeout = 10  # a hosting worker hands over within this on SIGTERM or recycling
max_requests = 0  # recycling (say 1000, with max_requests_jitter) is fine: a host hands over as it exits
