"""Child-process side of the tests: top-level functions, importable under the spawn start method.

A peer runs ``peer_main``: it owns one Channel and obeys commands sent over a
Pipe, answering each with a dict. The handler used by every peer is
``echo_handler``: it answers each line with ``"<host pid> <line>"``, so a
client can tell which process served it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import ipchannel

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


def echo_handler(conn: socket.socket) -> None:
    """Answer each newline-terminated line with '<pid> <line>'."""
    buf = b""
    while True:
        data = conn.recv(4096)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"bye":  # the handler ends the conversation itself
                return
            conn.sendall(f"{os.getpid()} ".encode() + line + b"\n")


def read_line(sock: socket.socket) -> bytes:
    """Read one newline-terminated line (the echo replies are small: byte at a time is fine)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return buf
        buf += chunk
    return buf


def request(sock: socket.socket, text: str, deadline: float) -> tuple[str, int]:
    """Send a line, return (reply, resends); resend on HostChanged as the README tells users to."""
    resends = 0
    while True:
        sock.sendall(text.encode() + b"\n")
        try:
            reply = read_line(sock)
        except ipchannel.HostChanged:
            resends += 1
            if time.monotonic() > deadline:
                raise
            continue
        return reply.decode().rstrip("\n"), resends


class _Peer:
    def __init__(self, name: str, runtime_dir: str) -> None:
        self.channel = ipchannel.Channel(name, echo_handler, runtime_dir=runtime_dir)
        self.sock: ipchannel.ChannelSocket | None = None

    def info(self) -> dict[str, Any]:
        ch = self.channel
        return {
            "pid": os.getpid(),
            "state": ch.state,
            "is_host": ch.is_host,
            "host_pid": ch.host_pid,
            "generation": ch.generation,
            "sock_id": id(self.sock) if self.sock is not None else None,
            "fileno": self.sock.fileno() if self.sock is not None else None,
        }

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "connect":
            self.sock = self.channel.connect(timeout=args.get("timeout", 5.0))
            return self.info()
        if cmd == "request":
            assert self.sock is not None
            deadline = time.monotonic() + args.get("timeout", 5.0)
            start = time.perf_counter()
            reply, resends = request(self.sock, args["text"], deadline)
            return {**self.info(), "reply": reply, "resends": resends, "seconds": time.perf_counter() - start}
        if cmd == "send_then_recv_error":
            # send a request, then report what recv raises (used with auto_reconnect=False)
            assert self.sock is not None
            try:
                self.sock.sendall(args["text"].encode() + b"\n")
                return {"data": read_line(self.sock).decode()}
            except OSError as exc:
                return {"error": type(exc).__name__}
        if cmd == "set_auto_reconnect":
            self.channel.auto_reconnect = args["value"]
            return self.info()
        if cmd == "info":
            return self.info()
        if cmd == "close":
            self.channel.close()
            return self.info()
        raise ValueError(f"unknown command {cmd!r}")


def peer_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Entry point of a peer process."""
    # The test kills peers with SIGKILL; SIGTERM would run no atexit either, so make it exit cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    peer = _Peer(name, runtime_dir)
    conn.send({"ready": os.getpid()})
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            break
        if cmd == "exit":
            peer.channel.close()
            conn.send({"exited": True})
            break
        try:
            conn.send({"ok": True, **peer.do(cmd, args)})
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
            conn.send({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    with contextlib.suppress(OSError):
        conn.close()
