"""Message boundaries on a raw channel socket: send_message and recv_message (docs: howto/messages)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import contextlib

from ipchannel import Channel, recv_message, send_message


def handler(conn):  # the host answers each frame with the same bytes, upper-cased
    with contextlib.suppress(EOFError):  # EOFError: the client closed between two frames
        while True:
            send_message(conn, recv_message(conn).upper())


channel = Channel("framing", handler)
sock = channel.connect(timeout=5)

send_message(sock, b"payload")  # 4-byte big-endian length, then the bytes
data = recv_message(sock)  # max_size=64 MiB by default
print(data)  # b'PAYLOAD'
channel.close()
