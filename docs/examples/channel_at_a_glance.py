"""Channel's attributes, each as it reads before, during and after use (docs: reference/api)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import os

from ipchannel import Channel, open_channel


def handler(conn):  # runs in a server thread of the host process, once per connection
    conn.sendall(conn.recv(1024))


channel = Channel("glance", handler, runtime_dir=None, auto_reconnect=True, authkey=None, may_host=True)
print(channel.name, channel.state, channel.connected)  # glance initiated False: nothing opened yet

sock = channel.connect(timeout=5.0)  # float seconds; None waits forever
print(channel.state, channel.connected)  # connected True: a live host is known
print(channel.is_host, channel.host_pid == os.getpid())  # True True: this process hosts the server
print(channel.generation)  # 1 for the first host, +1 for each new one
print(channel.auto_reconnect)  # True; settable
sock.close()
channel.close()  # idempotent; also `with Channel(...) as channel:`
print(channel.state)  # closed

with open_channel(handler) as default:  # open_channel(name, handler) too
    print(default.name)  # ipchannel
