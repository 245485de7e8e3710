"""The django_cache example with --preload: the master imports the app once, then forks the workers.

Nothing to add for the cache: it opens on first use (in a worker, here); a cache used at import
time would be hosted by the master, and after fork each worker gets a replica of its own.

gunicorn -c gunicorn_preload.conf.py cacheproject.wsgi
"""

from __future__ import annotations

import os

preload_app = True
bind = os.environ.get("CACHE_BIND", "unix:/tmp/django-cache.sock")
workers = 4
graceful_timeout = 10
