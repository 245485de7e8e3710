"""HTTP over a Unix socket, and a real gunicorn serving an example there: for the server tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from conftest import reap, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` to a server listening on the Unix socket ``path``."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def get_json(address: str, url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET ``url`` from the server on the Unix socket ``address``; return the status and JSON body."""
    conn = UnixHTTPConnection(address, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class Gunicorn:
    """A real gunicorn master serving ``app`` of ``examples/EXAMPLE`` on a Unix socket, with 4 workers.

    The example reads its bind address from the environment variable ``bind``; ``env`` adds more.
    """

    def __init__(
        self,
        example: str,
        app: str,
        config: str,
        runtime_dir: Path,
        *,
        bind: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.address = str(runtime_dir.parent / f"{runtime_dir.name}-http.sock")
        environ = {
            **os.environ,
            "IPCHANNEL_DIR": str(runtime_dir),
            bind: f"unix:{self.address}",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", config, app],
            cwd=EXAMPLES / example,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a test may kill master and workers at once
        )
        self.master = psutil.Process(self.process.pid)
        self.seen: set[int] = set()  # every worker pid we saw, to check they are all gone at the end
        wait_until(lambda: len(self.workers()) == 4 and Path(self.address).exists(), timeout=30)

    def workers(self) -> list[int]:
        pids = [p.pid for p in self.master.children()]
        self.seen.update(pids)
        return pids

    def stop(self) -> str:
        """SIGTERM the master, wait for it to exit; return its stderr."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        return err

    def kill_all(self) -> None:
        """SIGKILL whatever is left, all at once (a master killed alone would start new workers); reap it."""
        if self.process.poll() is None:  # not reaped: its process group is still this gunicorn's
            self.workers()  # the current ones too
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in [*self.seen, self.process.pid]:
            reap(pid, timeout=1)
        self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        Path(self.address).unlink(missing_ok=True)


class Uvicorn:
    """A real ``uvicorn app:app --workers 4`` serving ``examples/EXAMPLE`` on a Unix socket (log: a file)."""

    def __init__(self, example: str, runtime_dir: Path) -> None:
        self.address = str(runtime_dir.parent / f"{runtime_dir.name}-http.sock")
        self.log = runtime_dir.parent / f"{runtime_dir.name}-uvicorn.log"
        env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
        command = [sys.executable, "-m", "uvicorn", "app:app", "--workers", "4", "--uds", self.address]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=EXAMPLES / example, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        self.master = psutil.Process(self.process.pid)
        self.seen: set[int] = set()  # every worker pid we saw, to check they are all gone at the end
        self.ready()

    def ready(self) -> None:
        """Wait until 4 workers run and each finished its lifespan's start (the app opened what it opens).

        A SharedDict write held by the host alone dies with it; the first requests after a
        start, or after uvicorn replaced a killed worker, could meet a worker not open yet.
        """
        wait_until(lambda: len(self.workers()) == 4 and Path(self.address).exists(), timeout=30)
        wait_until(lambda: self.output().count("Application startup complete.") >= len(self.seen), timeout=30)

    def workers(self) -> list[int]:
        pids = []
        for child in self.master.children():
            try:
                if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        self.seen.update(pids)
        return pids

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM the master (it stops its workers, which close their channels); return its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def kill_all(self) -> None:
        """SIGKILL the master first (it would replace killed workers), then every worker; reap them all."""
        if self.process.poll() is None:
            self.workers()  # the current ones too
            self.process.kill()
        for pid in [self.process.pid, *self.seen]:
            reap(pid, timeout=0)
        self.process.wait(5)
        Path(self.address).unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
