"""Flask-Limiter under gunicorn -w 4 --preload and slowapi under uvicorn --workers 4, on ipchannel://.

"5 per minute" must mean 5 over all workers: of 20 requests, exactly 5 pass and 15 get 429, also
when the worker hosting the limits' shared dict is SIGKILLed between two requests. One server per
module fixture; each test uses its own client key (the X-Api-Key header), so they do not interfere.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from _http import Gunicorn, UnixHTTPConnection, Uvicorn
from conftest import wait_until

from ipchannel._backends import local_status

if TYPE_CHECKING:
    from collections.abc import Iterator


def _get(address: str, url: str, key: str) -> tuple[int, dict[str, Any]] | None:
    """GET with the client key; None if no answer came (a worker killed or not yet accepting)."""
    conn = UnixHTTPConnection(address, 10)
    try:
        conn.request("GET", url, headers={"X-Api-Key": key})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _requests(address: str, url: str, key: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """``count`` requests from 4 client threads at once, so that several workers answer."""

    def one(_: int) -> tuple[int, dict[str, Any]]:
        answer: tuple[int, dict[str, Any]] = wait_until(lambda: _get(address, url, key), timeout=30)
        return answer  # an unanswered request (a worker starting, or killed) is sent again

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def _twenty_with_a_kill(  # noqa: PLR0917 - a test helper
    address: str, url: str, key: str, runtime_dir: Path, channel: str, workers: list[int], kill: bool
) -> list[tuple[int, dict[str, Any]]]:
    answers = _requests(address, url, key, 3)
    if kill:
        (status,) = local_status(runtime_dir, channel)
        assert status.host_pid in workers, (status.host_pid, workers)  # a worker hosts, not the master
        os.kill(status.host_pid, signal.SIGKILL)
    return answers + _requests(address, url, key, 17)


def _check(answers: list[tuple[int, dict[str, Any]]]) -> None:
    codes = [code for code, _ in answers]
    assert (codes.count(200), codes.count(429)) == (5, 15), [(code, body["pid"]) for code, body in answers]
    assert len({body["pid"] for _, body in answers}) >= 2  # several workers answered: the count is shared


_SERVERS: set[int] = set()  # the masters of this module's servers, which outlive each test


def _outside_servers() -> set[int]:
    """Our descendants, less the servers' (a master replaces a killed worker: not a test's leak)."""
    inside = {pid for master in _SERVERS if psutil.pid_exists(master) for pid in _tree(master)}
    return {p.pid for p in psutil.Process().children(recursive=True)} - inside


def _tree(pid: int) -> set[int]:
    try:
        return {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's check, for servers that live as long as the module: no other process is left."""
    before = _outside_servers()
    yield
    wait_until(lambda: not _outside_servers() - before, timeout=15)


@pytest.fixture(scope="module")
def module_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ipc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gunicorn(module_dir: Path) -> Iterator[Gunicorn]:
    server = Gunicorn("flask_limits", "app:app", "gunicorn.conf.py", module_dir, bind="LIMITS_BIND")
    _SERVERS.add(server.master.pid)
    try:
        yield server
    finally:
        server.kill_all()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kill", [False, True], ids=["steady", "host-killed"])
def test_flask_limiter_under_gunicorn_allows_5_of_20(
    gunicorn: Gunicorn, module_dir: Path, kill: bool
) -> None:
    answers = _twenty_with_a_kill(
        gunicorn.address, "/limited", f"flask-{kill}", module_dir, "flask-limits", gunicorn.workers(), kill
    )
    _check(answers)


@pytest.fixture(scope="module")
def uvicorn(module_dir: Path) -> Iterator[Uvicorn]:
    server = Uvicorn("slowapi_limits", module_dir / "uvicorn")
    _SERVERS.add(server.master.pid)
    try:
        yield server
    finally:
        server.kill_all()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("url", "channel", "kill"),
    [
        ("/limited", "slowapi-limits", False),
        ("/limited", "slowapi-limits", True),
        ("/aio", "slowapi-aio-limits", True),
    ],
    ids=["slowapi-steady", "slowapi-host-killed", "aio-host-killed"],
)
def test_slowapi_under_uvicorn_allows_5_of_20(uvicorn: Uvicorn, url: str, channel: str, kill: bool) -> None:
    uvicorn.ready()
    answers = _twenty_with_a_kill(
        uvicorn.address,
        url,
        f"{url}-{kill}",
        Path(uvicorn.log.parent / "uvicorn"),
        channel,
        uvicorn.workers(),
        kill,
    )
    _check(answers)
