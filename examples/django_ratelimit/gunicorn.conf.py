"""gunicorn settings for the django_ratelimit example: 4 sync workers on a Unix socket.

gunicorn -c gunicorn.conf.py ratelimitproject.wsgi
"""

from __future__ import annotations

import os

bind = os.environ.get("RATELIMIT_BIND", "unix:/tmp/django-ratelimit.sock")
workers = 4
worker_class = "sync"
graceful_timeout = 10  # a hosting worker hands the cache over within this on SIGTERM or recycling
