"""gunicorn settings for the Prometheus example: 4 sync workers on a Unix socket.

gunicorn -c gunicorn.conf.py app:app

With ipchannel (the default), ``post_worker_init`` joins each worker before it serves
(``prometheus.start()``): it is in every scrape from its first request on, and one recycled
right after booting loses nothing, also on Python 3.12. Under prometheus_client's multiprocess
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


def post_worker_init(worker: Any) -> None:
    """With ipchannel: open the metrics' dict before this worker serves (see the module)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from ipchannel import ChannelError  # noqa: PLC0415
        from ipchannel.contrib import prometheus  # noqa: PLC0415 - the app enabled it

        try:
            prometheus.start()
        except ChannelError as exc:  # raising here would make gunicorn stop every worker
            worker.log.warning("metrics: not joined at start (the first change joins): %s", exc)
