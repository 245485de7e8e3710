"""A raw socket's request loop that survives its host's death: send again on HostChanged (docs: failover)."""
# ruff: noqa: ANN001, D103, INP001, S603, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ipchannel import Channel, HostChanged, recv_message, send_message

ROLE = sys.argv[1] if len(sys.argv) > 1 else "main"  # "host": the process that dies mid-request


def handler(conn) -> None:
    request = recv_message(conn)
    if ROLE == "host":
        os.kill(os.getpid(), signal.SIGKILL)  # the host dies with the request unanswered
    send_message(conn, b"done: " + request)


def ask(sock, request: bytes) -> bytes:
    while True:
        send_message(sock, request)
        try:
            return recv_message(sock)
        except HostChanged:
            print("HostChanged: the new host never saw the request, send it again")
            continue


channel = Channel("failover", handler)
if ROLE == "host":
    channel.connect(timeout=5)  # the first process to connect hosts
    print("hosting", flush=True)
    sys.stdin.read()  # until its handler kills it (or the main process is gone: end of input)
else:
    host = subprocess.Popen(
        [sys.executable, __file__, "host"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert host.stdin is not None
    assert host.stdout is not None
    assert host.stdout.readline() == "hosting\n"
    sock = channel.connect(timeout=5)
    print("the other process hosts:", channel.host_pid == host.pid, "generation", channel.generation)
    print(ask(sock, b"charge order 17"))
    print("this process hosts now:", channel.is_host, "generation", channel.generation)
    host.wait()
    host.stdin.close()
    host.stdout.close()
    channel.close()
