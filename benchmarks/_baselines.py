"""What a user would pick instead of SharedDict: a redis-server of our own, and diskcache.

redis-server is the distribution's binary, started here on a Unix socket in a temporary
directory with persistence off (or its append-only file on, for the journal's benchmarks), and
killed by pid and reaped on the way out. diskcache (a
SQLite-backed dict in a directory, shared by processes) comes with the ``bench`` extra. Either
one missing is a skip with a printed note, never a failure: CI's smoke run may have neither.

redis-py parses replies with hiredis (C) once hiredis is installed, for every connection that
does not name its parser. So each redis-py client here names it (``redis_client``): "plain" is
redis-py's own parser in Python, what it uses without hiredis (``_RESP2Parser``, which a RESP3
connection, redis-py 8's default, turns into ``_RESP3Parser``); "hiredis" is hiredis's, a row
of its own beside plain, skipped with a note where hiredis is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

BENCH_EXTRA = "pip install 'ipchannel[bench]'"
REDIS_START = 10.0  # seconds redis-server has to answer PING


def _redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )


def redis_missing() -> str | None:
    """Why the Redis baseline cannot run here (a skip note), or None."""
    if _redis_binary() is None:
        return "redis baseline skipped: redis-server is not installed (sudo apt-get install redis-server)"
    if find_spec("redis") is None:
        return f"redis baseline skipped: redis-py is not installed ({BENCH_EXTRA})"
    return None


def hiredis_missing() -> str | None:
    """Why the redis-py + hiredis rows cannot run here (a skip note), or None."""
    if find_spec("hiredis") is None:
        return f"redis-py + hiredis rows skipped: hiredis is not installed ({BENCH_EXTRA})"
    return None


#: redis-py's reply parsers, as named in the rows: its own in Python, and hiredis's
PLAIN, HIREDIS = "plain", "hiredis"
WHO = {PLAIN: "redis-py", HIREDIS: "redis-py + hiredis"}


def redis_parsers() -> list[str]:
    """The parsers to measure here: plain always (if redis-py is installed), hiredis if installed."""
    return [PLAIN] if hiredis_missing() else [PLAIN, HIREDIS]


def parsers_note(*, hiredis: bool = True) -> str:
    """The note of a table with redis-py rows: which parser each row's connections use.

    ``hiredis``: the table has hiredis rows too (where hiredis is installed).
    """
    plain = "redis-py rows: its parser in Python, as without hiredis (_RESP3Parser on RESP3, or _RESP2Parser)"
    if not hiredis or hiredis_missing():
        return plain
    return f"{plain}; + hiredis rows: hiredis {version('hiredis')}"


def parser_class(parser: str, *, asyncio: bool = False) -> type:
    """redis-py's class of ``parser`` (PLAIN, HIREDIS), for its sync or its asyncio connections."""
    from redis import _parsers  # noqa: PLC0415 - an optional extra; where redis-py 5+ keeps its parsers

    if parser not in WHO:
        raise ValueError(f"parser must be one of {sorted(WHO)}, not {parser!r}")
    if asyncio:
        return _parsers._AsyncHiredisParser if parser == HIREDIS else _parsers._AsyncRESP2Parser  # noqa: SLF001
    return _parsers._HiredisParser if parser == HIREDIS else _parsers._RESP2Parser  # noqa: SLF001


def redis_client(path: str, parser: str, *, asyncio: bool = False) -> Any:
    """A redis-py client on the Unix socket ``path`` whose connections parse with ``parser`` (PLAIN, HIREDIS).

    ``asyncio``: a ``redis.asyncio`` client (make it inside the event loop that uses it).
    """
    import redis  # noqa: PLC0415 - an optional extra
    import redis.asyncio  # noqa: PLC0415

    chosen = parser_class(parser, asyncio=asyncio)
    if asyncio:
        return redis.asyncio.Redis.from_url(f"unix://{path}", parser_class=chosen)
    return redis.Redis.from_url(f"unix://{path}", parser_class=chosen)


def diskcache_missing() -> str | None:
    """Why the diskcache baseline cannot run here (a skip note), or None."""
    if find_spec("diskcache") is None:
        return f"diskcache baseline skipped: diskcache is not installed ({BENCH_EXTRA})"
    return None


def diskcache_version() -> str:
    return f"diskcache {version('diskcache')} (SQLite, default settings: WAL, synchronous=NORMAL)"


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server of ours: its pid, Unix socket, and version line for the notes."""

    pid: int
    path: str
    version: str


#: ``appendfsync`` of a redis-server with its append-only file on (None: persistence off)
POLICIES = ("always", "everysec", "no")


@contextlib.contextmanager
def redis_server(tmp: str, appendfsync: str | None = None) -> Iterator[RedisServer]:
    """Start redis-server on a Unix socket in ``tmp``; yield once it answers PING; kill and reap it after.

    ``appendfsync`` None: persistence off. One of POLICIES: the append-only file on, in ``tmp``,
    synced as that policy says (as ``--appendonly yes --appendfsync POLICY``).
    """
    binary = _redis_binary()
    assert binary is not None
    with _running(binary, tmp, appendfsync) as (proc, path, log):
        _wait_for_ping(proc, path, log)
        yield RedisServer(proc.pid, path, _version_line(binary, appendfsync))


def redis_reload(tmp: str, key: str | None) -> tuple[int, bytes | None]:
    """Start redis-server with its append-only file on, on the files already in ``tmp``; kill it after.

    Return the nanoseconds from just before its start to the first ``GET key`` answered (with a
    value, unless ``key`` is None: then any answer, as on an empty directory), and that value.
    Asked again at once while the socket is absent or the server answers LOADING.
    """
    import redis  # noqa: PLC0415 - an optional extra
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    binary = _redis_binary()
    assert binary is not None
    start = time.monotonic_ns()
    with _running(binary, tmp, "no") as (proc, path, log):
        client = redis.Redis(unix_socket_path=path, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + REDIS_START * 6  # a large file loads for a while
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError):  # no socket yet, or LOADING
                    value: bytes | None = client.get(key or "absent")  # type: ignore[assignment]
                    if key is None or value is not None:
                        return time.monotonic_ns() - start, value
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {proc.returncode}: {log.read_text()[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer GET within {REDIS_START * 6:g} s")
                time.sleep(0.0002)
        finally:
            client.close()


@contextlib.contextmanager
def _running(
    binary: str, tmp: str, appendfsync: str | None
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Run redis-server in ``tmp`` (see ``redis_server``); yield (process, socket, log); kill and reap it."""
    path = os.path.join(tmp, "redis.sock")
    args = ["--port", "0", "--unixsocket", path, "--unixsocketperm", "700", "--save", ""]
    if appendfsync is None:
        args += ["--appendonly", "no"]
    else:
        args += ["--appendonly", "yes", "--appendfsync", appendfsync]
    args += ["--dir", tmp]
    log = Path(tmp, "redis-server.log")
    previous = signal.signal(signal.SIGTERM, _exit)  # `kill`, `timeout`: leave through the finally below
    with log.open("ab") as out:
        # its own session: a Ctrl-C in the terminal reaches only us, and the finally stops the server
        proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, path, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        signal.signal(signal.SIGTERM, previous)


def _wait_for_ping(proc: subprocess.Popen[bytes], path: str, log: Path) -> None:
    """Poll PING until it answers; raise if the server exits or REDIS_START passes first."""
    import redis  # noqa: PLC0415 - an optional extra

    client = redis.Redis(unix_socket_path=path, socket_timeout=1)
    deadline = time.monotonic() + REDIS_START
    try:
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within {REDIS_START:g} s")
            time.sleep(0.005)
    finally:
        client.close()


def _version_line(binary: str, appendfsync: str | None = None) -> str:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    server = next((p[2:] for p in out.split() if p.startswith("v=")), "?")
    persistence = "persistence off" if appendfsync is None else f"appendonly yes, appendfsync {appendfsync}"
    return f"redis-server {server} on a Unix socket, {persistence}; redis-py {version('redis')}"


def _exit(signum: int, frame: object) -> None:
    """SIGTERM: leave by SystemExit, so that every ``finally`` runs (the server is killed and reaped)."""
    del frame
    raise SystemExit(128 + signum)
