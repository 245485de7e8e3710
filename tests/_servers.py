"""Real etcd and Redis servers for tests: start, SIGKILL, restart on the same port and data.

Each server is one process started in its own session, listening on 127.0.0.1
only, on free ports picked by binding to port 0. Its output goes to a log file
in the test's directory; a server that does not become healthy in time is
killed, and the RuntimeError raised carries the log's tail.

Test modules import what they need::

    from _servers import start_etcd, start_redis
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from _certs import Pki

_INSTALL_HINTS = {
    "etcd": "sudo apt-get install etcd-server",
    "redis-server": "sudo apt-get install redis-server",
}
_POLL_INTERVAL = 0.02
_LOG_TAIL_BYTES = 4000
_START_ATTEMPTS = 3  # fresh ports again if another process took a picked port first
# No proxy, whatever the environment says: the servers are on loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require_binary(name: str) -> str:
    """The path of the executable ``name``; skip the test if it is missing (fail it under CI=true)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is not None:
        return path
    hint = _INSTALL_HINTS.get(name, f"install {name}")
    message = f"{name} is not installed (`{hint}`)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must run these tests")
    pytest.skip(message)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (all sockets are held until all are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _tail(path: Path, size: int = _LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class EngineServer:
    """One server process: ``url`` to reach it, ``kill``/``restart`` to fault it, ``stop`` to end it.

    Subclasses give the command line (``_command``) and the health probe
    (``_healthy``); ports and the data directory are fixed at construction, so
    a restarted server has the same address and the same data.
    """

    name = "server"
    url: str

    def __init__(self, binary: str, tmp_dir: Path, ports: list[int], timeout: float) -> None:
        self.binary = binary
        self.tmp_dir = tmp_dir
        self.ports = ports
        self.timeout = timeout
        self.data_dir = tmp_dir / f"{self.name}-data"
        self.log_path = tmp_dir / f"{self.name}.log"
        self.startup_seconds = 0.0  # how long the last start or restart took to become healthy
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The pid of the current process (the last one started, even if since killed)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the current process is running (not killed, not exited)."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _healthy(self) -> bool:
        raise NotImplementedError

    def _start(self) -> None:
        """Start the process and wait until it is healthy; on any failure kill it and raise RuntimeError."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # etcd warns about wider modes
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name} starting: {shlex.join(self._command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
            )
        try:
            self._wait_healthy(self._proc, started + self.timeout)
        except BaseException:  # unhealthy, or KeyboardInterrupt: leave no process behind
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_healthy(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll the health probe until it succeeds; RuntimeError with the log's tail if it never does."""
        while not self._healthy():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {proc.returncode} before becoming healthy;"
                    f" {self.log_path} ends with:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} (pid {proc.pid}) not healthy within {self.timeout} s;"
                    f" {self.log_path} ends with:\n{_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the process and reap it; does nothing if it is already gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self) -> None:
        """Start again on the same port(s) and data directory (killing first if running); wait for health."""
        self.kill()
        self._start()

    def stop(self) -> None:
        """Kill and reap the process; idempotent, for teardown."""
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        pid = self._proc.pid if self._proc is not None else None
        return f"<{type(self).__name__} {self.url} pid={pid} {state}>"


class EtcdServer(EngineServer):
    """A one-member etcd cluster; ``ports`` are (client, peer).

    The election timeout is short (500 ms) so that etcd grants a 1 s lease as 1 s
    (its minimum lease TTL is 1.5 election timeouts, rounded up to a second).
    """

    name = "etcd"

    def __init__(
        self,
        binary: str,
        tmp_dir: Path,
        ports: list[int],
        timeout: float,
        *,
        pki: Pki | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        super().__init__(binary, tmp_dir, ports, timeout)
        self.client_port, self.peer_port = ports
        self.pki, self.flags = pki, flags
        scheme = "http" if pki is None else "https"
        self.client_url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.url = f"etcd://127.0.0.1:{self.client_port}"
        if pki is not None:  # what a client needs: our CA, and a certificate it signed
            files = {"cacert": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
            self.url = f"etcds://127.0.0.1:{self.client_port}?{urllib.parse.urlencode(files)}"

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name", "t",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}",
            "--heartbeat-interval", "100",
            "--election-timeout", "500",
            "--logger", "zap",  # the default (capnslog) prints a deprecation warning
            "--log-level", "error",
            *self._tls_flags(),
            *self.flags,
        ]  # fmt: skip

    def _tls_flags(self) -> list[str]:
        """With a ``pki``: HTTPS for clients, each required to show a certificate our CA signed."""
        if self.pki is None:
            return []
        return [
            "--client-cert-auth",
            "--trusted-ca-file", self.pki.ca,
            "--cert-file", self.pki.server_cert,
            "--key-file", self.pki.server_key,
        ]  # fmt: skip

    def _health_context(self) -> ssl.SSLContext | None:
        if self.pki is None:
            return None
        context = ssl.create_default_context(cafile=self.pki.ca)
        context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return context

    def _env(self) -> dict[str, str]:
        # ETCD_* variables would be read as flags too (and conflict with ours).
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}

    def enable_auth(self, root_password: str) -> None:
        """Turn on etcd's authentication, with the user ``root`` (role ``root``) and this password."""
        assert self.pki is None  # plain HTTP here: what a test of credentials alone needs
        for path, body in (
            ("auth/role/add", {"name": "root"}),
            ("auth/user/add", {"name": "root", "password": root_password}),
            ("auth/user/grant", {"user": "root", "role": "root"}),
            ("auth/enable", {}),
        ):
            request = urllib.request.Request(  # noqa: S310 - our own server, on loopback
                f"{self.client_url}/v3/{path}", data=json.dumps(body).encode(), method="POST"
            )
            with _HTTP.open(request, timeout=5) as resp:
                resp.read()

    def age_data(self, prefix: str = "/ipchannel") -> None:
        """Make its data (under ``prefix``) look older than a new claim waits for, as if up a while.

        A claim that makes a channel's epoch on data younger than a ttl holds off (it cannot tell
        a fresh etcd from one reset under a live host: ``EtcdEngine._age``), so each test's first
        host would wait out a ttl. ``born`` without ``young`` is data older than ``YOUNG``.
        """
        born = base64.b64encode(f"{prefix}/.data/born".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - our own server, on loopback
            f"{self.client_url}/v3/kv/put",
            data=json.dumps({"key": born, "value": base64.b64encode(b"1").decode()}).encode(),
            method="POST",
        )
        opener = _HTTP if self.pki is None else _https_opener(self._health_context())
        with opener.open(request, timeout=5) as resp:
            resp.read()

    def under_prefix(self, prefix: str) -> EtcdServer:
        """This server, as a test's own: its ``url`` names the key prefix ``prefix``, data aged.

        For a server shared by a module's tests (``shared_etcd``): each test's channels live
        under a prefix no other test uses, as on a server of their own that has been up a while.
        """
        assert self.pki is None, self  # plain HTTP only
        assert self.alive, self  # a test that faults a server starts its own
        view = copy.copy(self)
        view.url = f"{self.url}{prefix}"
        view.age_data(prefix)
        return view

    def _healthy(self) -> bool:
        try:
            opener = _HTTP if self.pki is None else _https_opener(self._health_context())
            with opener.open(f"{self.client_url}/health", timeout=0.5) as resp:
                body = json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError):  # refused, reset, timeout, 503, not JSON
            return False
        return isinstance(body, dict) and body.get("health") == "true"


class RedisServer(EngineServer):
    """A Redis server with an fsync-always AOF in ``data_dir`` (data survives SIGKILL and restart)."""

    name = "redis"

    def __init__(
        self,
        binary: str,
        tmp_dir: Path,
        ports: list[int],
        timeout: float,
        *,
        notifications: bool,
        bind: str = "127.0.0.1",
        pki: Pki | None = None,
    ) -> None:
        super().__init__(binary, tmp_dir, ports, timeout)
        self.port = ports[0]
        self.notifications = notifications
        self.bind = bind
        self.pki = pki
        self.url = f"redis://{bind}:{self.port}/0"
        if pki is not None:  # TLS only, and a client certificate the CA signed (tls-auth-clients)
            files = {"ssl_ca_certs": pki.ca, "ssl_certfile": pki.client_cert, "ssl_keyfile": pki.client_key}
            self.url = f"rediss://{bind}:{self.port}/0?{urllib.parse.urlencode(files)}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.bind,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--notify-keyspace-events", "KA" if self.notifications else "",
            # on another address it would refuse its own machine's clients without a password
            "--protected-mode", "yes" if self.bind == "127.0.0.1" else "no",
            *self._tls_flags(),
        ]  # fmt: skip

    def _tls_flags(self) -> list[str]:
        if self.pki is None:
            return []
        return [
            "--port", "0",  # no plain TCP port (the last --port wins)
            "--tls-port", str(self.port),
            "--tls-cert-file", self.pki.server_cert,
            "--tls-key-file", self.pki.server_key,
            "--tls-ca-cert-file", self.pki.ca,
        ]  # fmt: skip

    def emptied(self) -> RedisServer:
        """Return this server with no data (FLUSHALL), as a new one but up for longer.

        For a server shared by a module's tests (``shared_redis``): a claim on a server up for
        less than a ttl holds off (``RedisEngine._hold``), so a new server per test cost each
        test's first host up to a ttl.
        """
        assert self.pki is None, self  # plain TCP only
        assert self.alive, self  # a test that faults a server starts its own
        with socket.create_connection((self.bind, self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") and (chunk := sock.recv(256)):
                reply += chunk
        assert reply == b"+OK\r\n", reply
        return self

    def _healthy(self) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection((self.bind, self.port), timeout=0.5))
                if self.pki is not None:
                    context = ssl.create_default_context(cafile=self.pki.ca)
                    context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname=self.bind))
                sock.sendall(b"PING\r\n")
                reply = b""
                while b"\r\n" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"+PONG")  # -LOADING while the AOF is replayed


def _start_fresh(make: Callable[[list[int]], EngineServer], n_ports: int) -> EngineServer:
    """Start ``make(ports)`` on fresh ports, retrying with others if one was taken in the meantime."""
    for attempt in range(_START_ATTEMPTS):
        server = make(free_ports(n_ports))
        try:
            server._start()  # noqa: SLF001
        except RuntimeError:
            if attempt + 1 < _START_ATTEMPTS and "address already in use" in _tail(server.log_path).lower():
                continue
            raise
        return server
    raise AssertionError("unreachable")  # pragma: no cover


def start_etcd(
    tmp_dir: Path,
    timeout: float = 20.0,
    pki: Pki | None = None,
    flags: tuple[str, ...] = (),
    *,
    aged: bool = False,
) -> EngineServer:
    """Start a one-member etcd on free loopback ports, data in ``tmp_dir``; return it once healthy.

    With ``pki`` (``_certs.make_pki``) it serves HTTPS with its server certificate and asks every
    client for a certificate the CA signed (``--client-cert-auth``); its ``url`` names the client's.
    ``flags`` are added to etcd's command line. ``aged``: its data looks old (``age_data``), so the
    first claim does not hold off; the tests of engine resets leave it fresh.
    """
    binary = require_binary("etcd")
    server = _start_fresh(lambda ports: EtcdServer(binary, tmp_dir, ports, timeout, pki=pki, flags=flags), 2)
    if aged:
        assert isinstance(server, EtcdServer)
        try:
            server.age_data()
        except BaseException:
            server.stop()
            raise
    return server


def _https_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def start_redis(
    tmp_dir: Path,
    *,
    notifications: bool = True,
    timeout: float = 10.0,
    bind: str = "127.0.0.1",
    pki: Pki | None = None,
) -> EngineServer:
    """Start Redis on a free port of ``bind`` (default loopback), AOF in ``tmp_dir``; return it once healthy.

    With ``notifications`` keyspace events ``KA`` are published; without, none. With ``pki``
    (``_certs.make_pki``) it speaks TLS only and asks each client for a certificate the CA signed.
    """
    binary = require_binary("redis-server")
    return _start_fresh(
        lambda ports: RedisServer(
            binary, tmp_dir, ports, timeout, notifications=notifications, bind=bind, pki=pki
        ),
        1,
    )


def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis for a module's tests (a module-scoped fixture's body); each test takes it ``emptied()``.

    Started before the first test's leak baseline (a fixture of a wider scope), stopped after
    the last; a test that kills or restarts its server, or needs other options, starts its own.
    """
    server = start_redis(tmp_path_factory.mktemp("redis"))
    assert isinstance(server, RedisServer)
    try:
        yield server
    finally:
        server.stop()


def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd for a module's tests (a module-scoped fixture's body); each test takes ``under_prefix``.

    As ``shared_redis``: started before the first test's leak baseline, stopped after the last.
    """
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    assert isinstance(server, EtcdServer)
    try:
        yield server
    finally:
        server.stop()
