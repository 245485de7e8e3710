"""Flask-Limiter with one limit shared by every gunicorn worker: storage ipchannel://, no Redis.

With ``memory://`` each of gunicorn's 4 workers counts on its own, so "5 per minute" lets 20
through; with ``ipchannel://flask-limits`` the workers share one count, kept by whichever worker
hosts the channel (and replicated in every worker: the count survives its host's death).

    cd examples/flask_limits
    gunicorn -c gunicorn.conf.py app:app
    for i in $(seq 8); do curl -s --unix-socket /tmp/flask-limits.sock http://localhost/limited; done
    LIMITS_STORAGE=memory:// gunicorn -c gunicorn.conf.py app:app     # to compare: 4 x 5 pass
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import ipchannel.contrib.limits  # noqa: F401 - registers the storage scheme ipchannel://

app = Flask(__name__)
limiter = Limiter(
    lambda: request.headers.get("X-Api-Key") or get_remote_address(),  # one limit per client key
    app=app,
    storage_uri=os.environ.get("LIMITS_STORAGE", "ipchannel://flask-limits"),
    strategy="moving-window",  # any 60 s, not the clock's minutes: no reset at :00
)


@app.get("/limited")
@limiter.limit("5 per minute")
def limited() -> Response:
    """Answer at most 5 times a minute per client key, whichever worker takes the request."""
    return jsonify(pid=os.getpid())


@app.errorhandler(429)
def too_many(error: Exception) -> tuple[Response, int]:
    """Say which worker refused, as JSON."""
    return jsonify(pid=os.getpid(), error=str(error)), 429
