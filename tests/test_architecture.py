"""The architecture of docs/explanation/architecture.rst, checked where a test can check it.

The import layering is lint-imports' (pyproject.toml); here: the failover path stays in
four modules above the leaves (traced on a real SIGKILL), modules and classes stay small,
and every public object reaches the election in one hop (``.channel``).
"""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _peers import read_line
from conftest import Peers, freeze, wait_until

import ipchannel
from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict

if TYPE_CHECKING:
    from types import FrameType

PACKAGE = Path(ipchannel.__file__).parent
#: The leaves and the seams: helpers every layer may use, which decide nothing of a failover
#: (``_core/sockets.py``: the channel's set of sockets, which it tells of a lost host;
#: ``_core/reconnect.py``: a thread's bound on its wait for the next host).
LEAVES = (
    "_seams/",
    "_platform/",
    "_timing.py",
    "_auth.py",
    "_errors.py",
    "_wakeup.py",
    "_framing.py",
    "_core/sockets.py",
    "_core/reconnect.py",
)


@pytest.mark.timeout(60)
def test_the_failover_path_runs_in_four_modules_above_the_leaves(peers: Peers) -> None:
    host, standby = peers.start(2)
    host.call("connect")
    standby.call("connect")
    wait_until(lambda: standby.call("info")["standby"], timeout=10)
    with ipchannel.Channel("test", lambda _conn: None, may_host=False) as channel:
        sock = channel.connect(timeout=10)
        sock.sendall(b"hi\n")
        assert read_line(sock) == f"{host.pid} hi\n".encode()
        called: list[tuple[str, str]] = []

        def profile(frame: FrameType, event: str, _arg: object) -> None:
            name = frame.f_code.co_filename
            if event == "call" and name.startswith(str(PACKAGE)):
                called.append((Path(name).relative_to(PACKAGE).as_posix(), frame.f_code.co_name))

        def resume_once_waiting() -> None:  # the standby takes over only once this client waits for it
            wait_until(lambda: ("_local/standby.py", "await_hello") in called, timeout=20)
            os.kill(standby.pid, signal.SIGCONT)

        freeze(standby.pid)  # frozen: it cannot host before the client is at its door
        resumer = threading.Thread(target=resume_once_waiting)
        resumer.start()
        host.kill()
        sys.setprofile(profile)  # this thread only: the recv below recovers in it
        try:
            with pytest.raises(ipchannel.HostChanged):
                sock.recv(64)
        finally:
            sys.setprofile(None)
            resumer.join(30)
            os.kill(standby.pid, signal.SIGCONT)
    modules = {module for module, _ in called if not module.startswith(LEAVES)}
    assert modules == {"_core/socket.py", "_core/connect.py", "_local/coordinator.py", "_local/standby.py"}, (
        called
    )
    assert ("_local/coordinator.py", "assess") in called  # the host's state: asked of the coordinator


def test_no_module_over_400_lines_and_no_class_over_300() -> None:
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        classes = [node for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ClassDef)]
        too_long.extend(
            f"{path.relative_to(PACKAGE)}:{node.lineno} class {node.name}: {size} lines"
            for node in classes
            if (size := (node.end_lineno or node.lineno) - node.lineno + 1) > 300
        )
    assert too_long == []


@pytest.mark.timeout(60)
def test_every_public_object_reaches_the_election_in_one_hop(runtime_dir: Path) -> None:  # noqa: ARG001 - IPCHANNEL_DIR
    with ipchannel.Channel("hop", lambda _conn: None) as channel:
        assert channel.channel is channel
        job = ipchannel.run_on_host(channel, lambda: None, every=60)
        assert job.channel is channel
        job.stop()
    with ipchannel.RequestChannel("hop-requests", None) as requests:
        assert isinstance(requests.channel, ipchannel.Channel)
    with ipchannel.SharedDict("hop-dict") as shared:
        assert isinstance(shared.channel, ipchannel.Channel)
        assert shared.channel.is_host

    async def main() -> None:
        async with AsyncRequestChannel("hop-aio", None) as aio_requests:
            assert isinstance(aio_requests.channel, ipchannel.Channel)
        async with AsyncSharedDict("hop-aio-dict") as aio_dict:
            assert isinstance(aio_dict.channel, ipchannel.Channel)

    asyncio.run(main())
