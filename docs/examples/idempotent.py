"""An idempotent on_request: a request sent again (at-least-once) is applied once (docs: howto/messages)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, PLW0603, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import uuid

from ipchannel import RequestChannel

balance = 0  # the host's state


def apply(change):
    global balance
    balance += change
    return balance


done = {}  # request id -> reply, in the host


def on_request(message):
    if message["id"] not in done:
        done[message["id"]] = apply(message["change"])
    return done[message["id"]]


channel = RequestChannel("account", on_request)
deposit = {"id": str(uuid.uuid4()), "change": 10}
print(channel.request(deposit, timeout=5))  # 10
print(channel.request(deposit, timeout=5))  # 10 again: the same id, as after a failover, applied once
print(channel.request({"id": str(uuid.uuid4()), "change": 5}, timeout=5))  # 15
channel.close()
