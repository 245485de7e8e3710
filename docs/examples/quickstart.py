"""The 10-line example of the README and the docs' front page: a raw socket to whichever process hosts."""
# ruff: noqa: ANN001, ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

from ipchannel import Channel


def handler(conn):  # runs in a server thread of the host process
    while data := conn.recv(1024):
        conn.sendall(data.upper())


channel = Channel("shout", handler)
sock = channel.connect(timeout=5)  # a real socket.socket, connected to the host
sock.sendall(b"hello")
print(sock.recv(1024))  # b'HELLO'
channel.close()
