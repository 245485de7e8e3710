"""gunicorn settings for the Prometheus example: 4 sync workers on a Unix socket.

gunicorn -c gunicorn.conf.py app:app

With ipchannel (the default) nothing else is needed. Under prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR`` set), its documentation asks for an empty directory at
every start and for ``mark_process_dead`` when a worker exits: ``child_exit`` below.
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("METRICS_BIND", "unix:/tmp/prometheus-metrics.sock")
workers = 4
worker_class = "sync"
graceful_timeout = 10
max_requests = int(os.environ.get("METRICS_MAX_REQUESTS", "0"))  # recycled workers keep counting
max_requests_jitter = 0


def child_exit(server: Any, worker: Any) -> None:
    """Multiprocess mode only: drop the dead worker's live* gauge files (the docs' hook)."""
    del server
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415 - only this mode needs it

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
