"""django-ratelimit on SharedDictCache: the django_ratelimit example under gunicorn -w 4, and its check."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from _http import EXAMPLES, Gunicorn, UnixHTTPConnection
from conftest import wait_until
from django_ratelimit.core import EXPIRATION_FUDGE, _get_window  # the window the test must fit in

from ipchannel import SharedDict
from ipchannel.contrib import _cacheops  # noqa: F401 - registers the cache's operations for our replica

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EXAMPLE = EXAMPLES / "django_ratelimit"
LOCATION = "django-ratelimit-example"  # the example's cache
LIMIT, PERIOD = 5, 60  # the example's rate, "5/m"


@pytest.fixture
def gunicorn(runtime_dir: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(
        "django_ratelimit", "ratelimitproject.wsgi", "gunicorn.conf.py", runtime_dir, bind="RATELIMIT_BIND"
    )
    try:
        yield server
    finally:
        server.kill_all()


def _hello(address: str, client: str) -> tuple[int, dict[str, Any]]:
    """GET /hello as the client at address ``client`` (the proxy's X-Real-IP header); status and body."""
    conn = UnixHTTPConnection(address, timeout=30)
    try:
        conn.request("GET", "/hello", headers={"X-Real-IP": client})
        response = conn.getresponse()
        body = response.read()
        assert response.getheader("Content-Type") == "application/json", (response.status, body[:300])
        return response.status, json.loads(body)
    finally:
        conn.close()


def _client_with_a_long_window(used: set[str], seconds: float) -> str:
    """A client address whose rate-limit window (django-ratelimit's own: jittered by the address)
    has at least ``seconds`` left, so that the 20 requests of a run all fall in one window."""
    for n in range(1, 255):
        client = f"203.0.113.{n}"
        if client not in used and _get_window(client, PERIOD) - time.time() >= seconds:
            used.add(client)
            return client
    raise AssertionError("no address of 203.0.113.0/24 has a window this long now")


def _concurrently(gunicorn: Gunicorn, client: str) -> tuple[list[int], float]:
    """Send 20 requests as ``client`` from 8 threads at once; return the statuses, in the order they
    came back, and when the first came back (after django-ratelimit's ``add`` for this window)."""
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: (*_hello(gunicorn.address, client), time.time()), range(20)))
    replies.sort(key=lambda reply: reply[2])
    return [status for status, _, _ in replies], replies[0][2]


def _one_by_one_killing_the_host(gunicorn: Gunicorn, client: str, after: int) -> tuple[list[int], float, int]:
    """Send 20 requests as ``client``; SIGKILL the hosting worker after request number ``after``.

    Return the statuses, when the first came back, and the pid killed.
    """
    statuses: list[int] = []
    killed, first = 0, 0.0
    for i in range(1, 21):
        status, body = _hello(gunicorn.address, client)
        statuses.append(status)
        first = first or time.time()
        if i == after:
            killed = body["host"]
            assert killed in gunicorn.workers()
            os.kill(killed, signal.SIGKILL)
    return statuses, first, killed


@pytest.mark.timeout(120)
def test_five_of_twenty_requests_pass_across_four_workers_and_a_sigkilled_host(
    gunicorn: Gunicorn, runtime_dir: Path
) -> None:
    # Every worker opens the cache (its replica) first: a write held by the host alone dies with
    # it, as documented; in an app every worker serves requests. This client's count is not checked.
    answered: set[int] = set()

    def every_worker_opened_it() -> bool:
        answered.add(_hello(gunicorn.address, "198.51.100.1")[1]["worker"])
        return answered >= set(gunicorn.workers())

    wait_until(every_worker_opened_it, timeout=30, interval=0)
    expected = [200] * LIMIT + [429] * (20 - LIMIT)
    used: set[str] = set()
    runs: dict[str, tuple[float, float, int]] = {}  # client -> its add made between, and requests

    client = _client_with_a_long_window(used, 40)  # 1: 8 clients at once, through 4 workers
    start = time.time()
    statuses, first = _concurrently(gunicorn, client)
    assert _get_window(client, PERIOD) > time.time(), "the window ended during the run"
    assert sorted(statuses) == expected, (client, statuses)  # incr atomic across the workers
    runs[client] = (start, first, 20)

    client = _client_with_a_long_window(used, 40)  # 2: the host SIGKILLed with 3 requests counted
    start = time.time()
    statuses, first, killed = _one_by_one_killing_the_host(gunicorn, client, after=3)
    assert _get_window(client, PERIOD) > time.time(), "the window ended during the run"
    assert statuses == expected, (client, statuses)
    status, body = _hello(gunicorn.address, client)  # one more: refused, and another worker hosts
    assert (status, body["host"] == killed) == (429, False)
    runs[client] = (start, first, 21)
    wait_until(lambda: len(gunicorn.workers()) == 4 and killed not in gunicorn.workers(), timeout=10)

    # The counters in the cache: one per request (1 by add, the rest by incr, none lost or applied
    # twice), each expiring when its add said (period + django-ratelimit's fudge after it): every
    # incr, in any worker, before and after the failover, kept the expiry.
    shared = SharedDict(LOCATION, codec="pickle", runtime_dir=runtime_dir)
    try:
        entries = [e for k, e in shared.copy().items() if str(k).startswith(":1:rl:")]
    finally:
        shared.close()
    window = PERIOD + EXPIRATION_FUDGE
    for client, (start, first, requests) in runs.items():
        found = [
            pickle.loads(pickled)  # noqa: S301 - the example's own cache
            for expires, pickled in entries
            if expires is not None and start + window <= expires <= first + window
        ]
        assert found == [requests], (client, entries)


#: ``manage.py check`` of the example without its SILENCED_SYSTEM_CHECKS
_UNSILENCED_CHECK = """
import os
os.environ["DJANGO_SETTINGS_MODULE"] = "ratelimitproject.settings"
import django
from django.conf import settings
from django.core.management import call_command
django.setup()
settings.SILENCED_SYSTEM_CHECKS = []
call_command("check")
"""


def _in_example(runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
    return subprocess.run(
        [sys.executable, *args], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.timeout(60)
def test_the_example_silences_the_w001_check_and_without_that_django_ratelimit_warns(
    runtime_dir: Path,
) -> None:
    silenced = _in_example(runtime_dir, "manage.py", "check")
    assert silenced.returncode == 0, silenced.stderr
    assert silenced.stdout.strip() == "System check identified no issues (1 silenced).", silenced
    unsilenced = _in_example(runtime_dir, "-c", _UNSILENCED_CHECK)
    assert unsilenced.returncode == 0, unsilenced.stderr  # a warning: the check passes
    warning = (
        "?: (django_ratelimit.W001) cache backend ipchannel.contrib.django.SharedDictCache "
        "is not officially supported"
    )
    assert warning in unsilenced.stderr, unsilenced
