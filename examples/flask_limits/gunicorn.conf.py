"""gunicorn settings for the Flask-Limiter example: 4 sync workers, the app imported once (--preload).

The master imports app.py, which makes the Limiter and its storage; the storage opens its shared
dict at its first use, never in the master here: ``post_fork`` opens it in each worker as it
starts, so every worker holds the counts from then on (a count only one worker held would die with
that worker).

    gunicorn -c gunicorn.conf.py app:app
"""

from __future__ import annotations

import os

bind = os.environ.get("LIMITS_BIND", "unix:/tmp/flask-limits.sock")
workers = 4
worker_class = "sync"
preload_app = True
graceful_timeout = 10


def post_fork(server: object, worker: object) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Open the limits' shared dict in the new worker (``check()`` opens it)."""
    from app import limiter  # noqa: PLC0415 - the app the master preloaded

    limiter.storage.check()
