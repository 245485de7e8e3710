"""Who gets in: the authkey handshake (uid refusal and directory checks are in test_channel.py)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from typing import TYPE_CHECKING

import _peers
import pytest
from conftest import wait_until

import ipchannel
from ipchannel import _auth

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import Peers

KEY = b"k" * 32


@pytest.fixture
def keyed_host(runtime_dir: Path) -> Iterator[ipchannel.RequestChannel]:  # noqa: ARG001 - IPCHANNEL_DIR
    """This process hosts a RequestChannel that requires KEY (so its log is ours to read)."""
    with ipchannel.RequestChannel("test", _peers.on_request, authkey=KEY) as channel:
        assert channel.request("elect me")["pid"] == os.getpid()
        assert channel.channel.is_host
        yield channel


def test_processes_sharing_the_key_talk(keyed_host: ipchannel.RequestChannel, peers: Peers) -> None:
    (peer,) = peers.start_requests(1, authkey=KEY)
    assert peer.call("request", message="hi")["reply"] == {"pid": os.getpid(), "message": "hi"}
    assert keyed_host.request("still")["message"] == "still"


def test_a_wrong_key_is_refused_on_both_sides(
    keyed_host: ipchannel.RequestChannel, peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    wrong, keyless = peers.start_requests(1, authkey=b"another key") + peers.start_requests(1)
    reply = wrong.try_call("request", message="let me in")
    assert reply["error"] == "AuthenticationError", reply
    assert "the host refused our authkey" in reply["message"]
    refusal = "refused a connection: channel 'test': authentication failed: the client answered"
    wait_until(lambda: refusal in caplog.text)  # the host logs it just after telling the client
    reply = keyless.try_call("request", message="let me in")
    assert reply["error"] == "AuthenticationError", reply
    assert "the host requires an authkey and this channel has none" in reply["message"]
    assert keyed_host.request("after")["message"] == "after"  # the host keeps serving


def test_a_keyed_client_refuses_a_host_without_a_key(peers: Peers, runtime_dir: Path) -> None:
    (host,) = peers.start_requests(1)
    host.call("request", message="elect me")
    with ipchannel.RequestChannel("test", None, authkey=KEY, runtime_dir=runtime_dir) as channel:
        with pytest.raises(ipchannel.AuthenticationError, match="does not ask for one") as info:
            channel.request("x")
        assert isinstance(info.value, PermissionError)


def test_raw_and_silent_clients_never_reach_the_handler(
    keyed_host: ipchannel.RequestChannel,
    runtime_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ipchannel")
    monkeypatch.setattr(_auth, "HANDSHAKE_TIMEOUT", 0.3)
    path = str(runtime_dir / "test.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(path)
        assert _peers.recv_exactly(raw, 48).startswith(b"#IPCHANNEL-AUTH#")  # the challenge, a nonce
        raw.sendall(b"x" * 64)  # a wrong answer
        assert _peers.recv_exactly(raw, 16) == b"#IPCHANNEL-FAIL#"
        assert raw.recv(1) == b""  # and the host hangs up
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(path)
        started = time.monotonic()
        wait_until(lambda: "no answer to the challenge within" in caplog.text, timeout=5)
        assert time.monotonic() - started < 3
    assert keyed_host.request("fine")["message"] == "fine"  # others were served meanwhile


@pytest.mark.usefixtures("keyed_host")
def test_socket_is_0600_and_directory_0700(runtime_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(runtime_dir / "test.sock").st_mode) == 0o600
    created = runtime_dir / "fresh"
    with ipchannel.Channel("x", _peers.echo_handler, runtime_dir=created) as channel:
        channel.connect().close()
        assert stat.S_IMODE(os.stat(created).st_mode) == 0o700


def test_bad_authkeys() -> None:
    with pytest.raises(TypeError, match="authkey must be bytes"):
        ipchannel.Channel("x", _peers.echo_handler, authkey="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        ipchannel.Channel("x", _peers.echo_handler, authkey=b"")
