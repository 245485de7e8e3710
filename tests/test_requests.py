"""Framing and RequestChannel: request/reply and publish/subscribe across real processes and host kills."""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import pickle
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

import _peers
import pytest
from conftest import Peer, Peers, freeze, reap, spawned, wait_until

import ipchannel
from ipchannel._framing import FrameReader
from ipchannel._requests.wire import REPLY, REQUEST, build_frame, parse_frame

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


# -- framing --------------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


@pytest.mark.parametrize("payload", [b"", b"x", b"hello" * 1000, bytes(range(256)) * 4096])
def test_frames_round_trip(pair: tuple[socket.socket, socket.socket], payload: bytes) -> None:
    a, b = pair
    sender = threading.Thread(target=ipchannel.send_message, args=(a, payload))  # larger than the buffer
    sender.start()
    assert ipchannel.recv_message(b) == payload
    sender.join(10)


def test_frame_over_the_limit_is_a_protocol_error_before_allocating(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(struct.pack("!I", 0xFFFFFFFF))
    with pytest.raises(ipchannel.ProtocolError, match="larger than the limit of 1024"):
        ipchannel.recv_message(b, max_size=1024)
    assert issubclass(ipchannel.ProtocolError, ipchannel.ChannelError)


def test_truncated_frame_is_a_protocol_error_and_clean_eof_is_eoferror(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    ipchannel.send_message(a, b"whole")
    a.sendall(struct.pack("!I", 10) + b"half")
    a.shutdown(socket.SHUT_WR)
    assert ipchannel.recv_message(b) == b"whole"
    with pytest.raises(ipchannel.ProtocolError, match="4 bytes into a 10-byte read"):
        ipchannel.recv_message(b)
    c, d = socket.socketpair()
    with c, d:
        c.close()
        with pytest.raises(EOFError):
            ipchannel.recv_message(d)


class _FailsMidFrame:
    """A socket written in Python (as ChannelSocket is) that fails once a large frame has begun."""

    def __init__(self) -> None:
        self.data = struct.pack("!I", 1_000_000) + b"x" * 100  # large: read straight into its place

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        del flags  # this frame keeps ``buffer`` alive in the traceback, as ChannelSocket's does
        if not self.data:
            raise ConnectionResetError("the host died mid-frame")
        view = memoryview(buffer)
        count = min(len(self.data), nbytes or len(view), len(view))
        view[:count], self.data = self.data[:count], self.data[count:]
        return count


@pytest.mark.parametrize("read", [lambda sock: FrameReader(sock).read(), ipchannel.recv_message])
def test_an_error_reading_a_large_frame_is_raised_as_it_is(read: Any) -> None:
    # Not BufferError (the receive buffer could not be trimmed): a subscriber thread reading a large
    # frame when its host died ended for good, instead of subscribing to the next host.
    with pytest.raises(ConnectionResetError, match="mid-frame"):
        read(_FailsMidFrame())


def test_remote_error_pickles() -> None:
    exc = ipchannel.RemoteError("c", "ValueError", "bad", "Traceback ...", 42)
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert vars(copy) == vars(exc)
    assert str(copy) == "ValueError: bad (raised by the handler of channel 'c' in host pid 42)"


# -- RequestChannel in this process -------------------------------------------------------------------


@pytest.mark.usefixtures("runtime_dir")
def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="on_request must be a callable"):
        ipchannel.RequestChannel("x", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown codec 'yaml'"):
        ipchannel.RequestChannel("x", _peers.on_request, codec="yaml")
    with pytest.raises(TypeError, match="codec must be"):
        ipchannel.RequestChannel("x", _peers.on_request, codec=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_message_size must be a positive number"):
        ipchannel.RequestChannel("x", _peers.on_request, max_message_size=0)
    with pytest.raises(TypeError, match="max_message_size must be an int"):
        ipchannel.RequestChannel("x", _peers.on_request, max_message_size="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"runtime_dir must be a str or os\.PathLike path"):
        ipchannel.RequestChannel("x", _peers.on_request, runtime_dir=42)  # type: ignore[arg-type]
    with ipchannel.RequestChannel("x", _peers.on_request) as rc:
        with pytest.raises(TypeError, match="callback must be callable"):
            rc.subscribe(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=">= 0"):
            rc.request("m", timeout=-1)
        with pytest.raises(TypeError, match="not JSON serializable") as info:
            rc.request(object())
        assert "RequestChannel 'x': the 'json' codec cannot encode a object message" in str(info.value)
        assert "codec='pickle'" in str(info.value)
        with pytest.raises(TypeError, match=r"RequestChannel 'x': the 'json' codec cannot encode a set"):
            rc.publish({1, 2})
        assert rc.request("still usable")["message"] == "still usable"
    with ipchannel.RequestChannel("y", _peers.on_request, max_message_size=100) as rc:
        with pytest.raises(ValueError, match="over this channel's max_message_size"):
            rc.request("m" * 200)
        assert rc.request("small")["message"] == "small"


@pytest.mark.usefixtures("runtime_dir")
def test_a_request_connection_per_concurrent_caller_reused() -> None:
    with ipchannel.RequestChannel("x", _peers.on_request) as rc:
        rc.request("first")
        (first,) = rc.channel._connector.sockets  # noqa: SLF001 - white box: the connections this process opened
        for i in range(20):
            assert rc.request(i)["message"] == i
        assert list(rc.channel._connector.sockets) == [first]  # noqa: SLF001 - sequential calls share it
        start, wrong = threading.Barrier(4), list[int]()

        def caller() -> None:
            start.wait(10)
            wrong.extend(i for i in range(50) if rc.request(i)["message"] != i)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not wrong
        assert first in rc.channel._connector.sockets  # noqa: SLF001
        assert len(rc.channel._connector.sockets) <= 4  # noqa: SLF001 - at most one per concurrent caller


@pytest.mark.usefixtures("runtime_dir")
def test_closed_channel_raises_channel_closed() -> None:
    rc = ipchannel.RequestChannel("x", _peers.on_request)
    assert rc.request(1)["pid"] == os.getpid()
    rc.close()
    rc.close()
    message = "RequestChannel 'x' is closed; create a new RequestChannel to use it again"
    with pytest.raises(ipchannel.ChannelClosed, match=message):
        rc.request(1)
    with pytest.raises(ipchannel.ChannelClosed, match=message):
        rc.publish(1)
    with pytest.raises(ipchannel.ChannelClosed, match=message):
        rc.subscribe(print)


def test_request_timeout_names_the_channel_and_the_wait(peers: Peers, runtime_dir: Path) -> None:
    (host,) = peers.start_requests(1)
    assert host.call("request", message={"op": "echo"})["reply"]["pid"] == host.pid
    (runtime_dir / f"hold-{host.pid}").touch()
    with ipchannel.RequestChannel("test", _peers.on_request) as rc:
        with pytest.raises(ipchannel.ChannelTimeout) as info:
            rc.request({"op": "hold"}, timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert "'test'" in str(info.value)
        assert 0.3 <= info.value.waited < 2
        (runtime_dir / f"hold-{host.pid}").unlink()
        assert rc.request("after")["message"] == "after"  # the channel is still usable


# -- real processes ------------------------------------------------------------------------------------


def test_request_reply_between_four_processes(peers: Peers) -> None:
    group = peers.start_requests(4)
    first = group[0].call("request", message="hello")
    host = first["reply"]["pid"]
    assert host == group[0].pid
    for p in group:
        reply = p.call("request", message={"from": p.pid})["reply"]
        assert reply == {"pid": host, "message": {"from": p.pid}}


def test_eight_threads_have_requests_in_flight_at_once(peers: Peers) -> None:
    host, client = peers.start_requests(2)
    host.call("request", message="elect me")
    # the handler returns only once 8 requests are inside it together (serialised: a broken barrier)
    replies = client.call("concurrent_requests", timeout=30, messages=[{"op": "barrier"}] * 8)["replies"]
    assert [r.get("pid") for r in replies] == [host.pid] * 8, replies


def test_remote_exception_reaches_the_caller_and_the_host_keeps_serving(peers: Peers) -> None:
    host, client = peers.start_requests(2)
    host.call("request", message="elect me")
    result = client.try_call("request", message={"op": "raise", "value": 7})
    assert result["error"] == "RemoteError"
    assert (
        f"ValueError: refused 7 (raised by the handler of channel 'test' in host pid {host.pid})"
        in (result["message"])
    )
    assert client.call("request", message="next")["reply"]["pid"] == host.pid
    with ipchannel.RequestChannel("test", _peers.on_request) as rc:
        with pytest.raises(ipchannel.RemoteError) as info:
            rc.request({"op": "raise", "value": "x"})
        assert info.value.type_name == "ValueError"
        assert "Traceback (most recent call last)" in info.value.traceback
        assert "refused 'x'" in info.value.traceback


@pytest.mark.timeout(60)
def test_sigkill_host_with_fifty_requests_in_flight_every_one_answered(
    peers: Peers, runtime_dir: Path
) -> None:
    host, *clients = peers.start_requests(4)
    host.call("request", message="elect me")
    (runtime_dir / f"hold-{host.pid}").touch()  # the first host sits on every request it gets
    counts = [17, 17, 16]
    for client, n in zip(clients, counts, strict=True):
        messages = [{"op": "hold", "n": i, "client": client.pid} for i in range(n)]
        client._conn.send(("concurrent_requests", {"messages": messages, "timeout": 20.0}))  # noqa: SLF001
    entered = runtime_dir / f"entered-{host.pid}"
    wait_until(lambda: entered.exists() and len(entered.read_bytes()) == sum(counts), timeout=15)
    host.kill()
    answers = [client._recv(30.0) for client in clients]  # noqa: SLF001
    for client, n, answer in zip(clients, counts, answers, strict=True):
        assert answer["ok"], answer
        replies = answer["replies"]
        assert len(replies) == n
        assert all("error" not in r for r in replies), replies
        assert {r["message"]["n"] for r in replies} == set(range(n))
        assert {r["message"]["client"] for r in replies} == {client.pid}
        assert {r["pid"] for r in replies} <= {c.pid for c in clients}  # answered by the new host
    assert len({r["pid"] for a in answers for r in a["replies"]}) == 1


def _fill_until_the_connection_ends(reader: FrameReader) -> None:
    for _ in range(100):
        reader.fill()


@pytest.mark.timeout(60)
def test_a_frame_reader_whose_host_dies_mid_frame_raises_host_changed_then_reads_the_next_host(
    peers: Peers,
) -> None:
    host, survivor = peers.start_requests(2)
    host.call("request", message="elect me")
    survivor.call("request", message="a client, ready to take over")
    with ipchannel.RequestChannel("test", _peers.on_request, may_host=False) as rc:
        sock = rc.channel.connect(timeout=5)
        reader = FrameReader(sock)
        ask = build_frame(REQUEST, 1, json.dumps({"op": "big", "size": 4 << 20}).encode())
        sock.sendall(ask)
        reader.fill()  # the head of a 4 MiB answer: the host blocks in its send of the rest
        host.kill()
        assert reader.next_frame() is None
        # a large frame is received straight into the reader's buffer; the dead host's last bytes,
        # then the reconnection (before the fix: BufferError, the buffer resized while exported)
        with pytest.raises(ipchannel.HostChanged):
            _fill_until_the_connection_ends(reader)
        reader.clear()
        sock.sendall(ask)
        kind, ident, payload = parse_frame(reader.read())
        assert (kind, ident) == (REPLY, 1)
        assert json.loads(payload) == {"pid": survivor.pid, "blob": "x" * (4 << 20)}
        sock.close()


@pytest.mark.timeout(180)
def test_hosts_killed_while_multi_mib_answers_and_messages_are_on_their_way(peers: Peers) -> None:
    for peer in peers.start_requests(3):  # the first hosts, the others join: one of them hosts next
        peer.call("request", message="join")
    size, errors, answered, heard = 4 << 20, list[str](), list[int](), list[int]()  # heard: lengths
    stop = threading.Event()

    def requester() -> None:
        while not stop.is_set():
            try:
                answered.append(rc.request({"op": "big", "size": size}, timeout=30)["pid"])
            except Exception as exc:  # noqa: BLE001 - reported below (before the fix: BufferError)
                errors.append(repr(exc))

    def publisher() -> None:
        while not stop.is_set():
            try:
                rc.publish("y" * size, timeout=30)
            except Exception as exc:  # noqa: BLE001 - as above
                errors.append(repr(exc))

    def served(pid: int, heard_at_least: int) -> bool:
        return answered.count(pid) > 2 and len(heard) >= heard_at_least

    with ipchannel.RequestChannel("test", _peers.on_request, may_host=False) as rc:
        # before the fix the subscriber thread died of the BufferError: an unhandled thread exception
        rc.subscribe(lambda message: heard.append(len(message)))
        threads = [threading.Thread(target=f) for f in (requester, requester, requester, publisher)]
        for t in threads:
            t.start()
        try:
            for kill in range(9):
                host = peers.host([p for p in peers.started if p.alive])
                # the host answers and fans out, several of each; more are on their way when it dies
                wait_until(functools.partial(served, host.pid, len(heard) + 3), timeout=30)
                if kill < 8:
                    host.kill()
                    peers.start_requests(1)[0].call("request", message="join", timeout=30)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    assert errors == []
    assert set(heard) == {size}


def _received(peer: Peer) -> list[Any]:
    received: list[Any] = peer.call("received")["received"]
    return received


def _received_exactly(peer: Peer, expected: list[Any]) -> bool:
    return _received(peer) == expected


def test_publish_reaches_every_subscriber_and_again_after_the_host_dies(peers: Peers) -> None:
    host, *subscribers, publisher = peers.start_requests(5)
    host.call("request", message="elect me")
    for p in [*subscribers, publisher]:
        p.call("subscribe")
    publisher.call("publish", message="one")
    for p in [*subscribers, publisher]:  # the publisher's own subscription included
        wait_until(functools.partial(_received_exactly, p, ["one"]))
    host.kill()
    publisher.call("publish", message="two")  # at once: subscribers may not have re-subscribed yet
    publisher.call("publish", message="three")
    for p in [*subscribers, publisher]:  # once each, in order, none lost in the failover window
        wait_until(functools.partial(_received_exactly, p, ["one", "two", "three"]), timeout=5)


def test_a_message_over_a_subscribers_own_limit_is_skipped_and_reported(peers: Peers) -> None:
    # A subscriber with a smaller max_message_size than the publisher's dropped its subscription on that
    # message, subscribed again, had it replayed, and so on: thousands of times a second, the host's CPU
    # taken, nothing delivered again, nothing reported.
    (host,) = peers.start_requests(1, max_message_size=2_000_000)
    host.call("subscribe")
    (small,) = peers.start_requests(1, max_message_size=100_000)
    small.call("subscribe")
    for message in ["before", "x" * 1_000_000, "after"]:
        host.call("publish", message=message)

    def received() -> tuple[list[Any], list[Any]]:
        got = small.call("received")
        return got["received"], got["missed"]

    wait_until(lambda: received() == (["before", "after"], [1]))
    host.call("publish", message="again")
    wait_until(lambda: received() == (["before", "after", "again"], [1]))


def test_custom_codec(peers: Peers) -> None:
    host, client = peers.start_requests(2, codec="reversing")
    assert host.call("request", message="abc")["reply"].startswith("{")  # str() of the reply dict
    reply = client.call("request", message="hello")["reply"]
    assert reply == str({"pid": host.pid, "message": "hello"})


def test_oversized_and_garbage_frames_do_not_disturb_other_clients(peers: Peers, runtime_dir: Path) -> None:
    host, client = peers.start_requests(2)
    host.call("request", message="elect me")
    path = str(runtime_dir / "test.sock")
    hostile = [
        struct.pack("!I", 0xFFFFFFF0) + b"x" * 100,  # 4 GiB announced: refused before allocating
        struct.pack("!I", 3) + b"abc",  # shorter than an envelope
        struct.pack("!I", 9) + struct.pack("!BQ", 200, 1),  # unknown frame kind
        os.urandom(4096),  # noise
        struct.pack("!I", 1000) + b"truncated",  # then the connection closes mid-frame
    ]
    for garbage in hostile:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with raw:
            raw.connect(path)
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            raw.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # a reset is a refusal too
                while raw.recv(4096):  # the host closes the connection; nothing useful comes back
                    pass
        assert client.call("request", message="fine")["reply"] == {"pid": host.pid, "message": "fine"}
    assert host.call("info")["is_host"]


def test_publish_with_no_possible_host_times_out(peers: Peers) -> None:
    (holder,) = peers.start(1)  # a Channel peer hosts, leaks its lock to a sleeper, and dies
    holder.call("connect")
    sleeper = holder.call("leak_lock")["sleeper"]
    holder.kill()
    try:
        with ipchannel.RequestChannel("test", _peers.on_request) as rc:
            start = time.monotonic()
            with pytest.raises(ipchannel.ChannelTimeout) as info:
                rc.publish("nobody hears this", timeout=0.3)
            assert 0.3 <= time.monotonic() - start < 3
            assert "'test'" in str(info.value)
    finally:
        reap(sleeper, timeout=0)


@pytest.mark.timeout(60)
def test_forked_child_uses_the_request_channel_while_a_parent_thread_waits_in_a_request(
    runtime_dir: Path,
) -> None:
    with spawned(_peers.request_fork_main, "forked", str(runtime_dir)) as (proc, conn):
        events = [conn.recv() for _ in range(2) if conn.poll(30)]
        pid = proc.pid
    by_kind = {e["event"]: e for e in events}
    assert "error" not in by_kind, by_kind
    child, parent = by_kind["child"], by_kind["parent"]
    assert child["reply"] == {"pid": pid, "message": {"child": child["pid"]}}  # served by the parent
    assert child["is_host"] is False
    assert child["resumed"]  # the child's subscription came back by itself, before any call
    assert child["heard_parent"]
    assert "from child" in child["got"]  # the child's subscription was started afresh in the child
    assert parent["status"] == 0
    assert parent["held"] == [{"pid": pid, "message": {"op": "hold"}}]  # the parent's waiter finished
    # the child published through the host as a publisher of its own: not taken for the parent's
    # message of the same number (both were the second of their process)
    assert parent["got"] == ["parent before fork", "parent after fork", "from child"]
    assert parent["reply"] == {"pid": pid, "message": "parent after"}  # parent's connection intact
    assert parent["is_host"] is True


@pytest.mark.timeout(60)
def test_a_publish_resent_after_the_host_died_unacknowledged_is_delivered_once(
    peers: Peers, tmp_path: Path
) -> None:
    host, subscriber, publisher = peers.start_requests(3)
    host.call("request", message="elect me")
    subscriber.call("subscribe")
    flag = tmp_path / "paused"
    host.call("pause_at", point="requests.fanned_out", marker="slow", flag=str(flag))
    publisher.start_call("publish", message="slow")
    wait_until(flag.exists)  # fanned out to every subscriber, not acknowledged
    wait_until(functools.partial(_received_exactly, subscriber, ["slow"]))
    host.kill()
    publisher.finish_call()  # resent to the new host, which fans it out again
    publisher.call("publish", message="after")
    wait_until(lambda: "after" in _received(subscriber), timeout=5)
    assert _received(subscriber) == ["slow", "after"]  # before the fix: ['slow', 'slow', 'after']


@pytest.mark.timeout(60)
def test_a_first_subscription_whose_host_dies_before_acknowledging_goes_to_the_next_host(
    peers: Peers, tmp_path: Path
) -> None:
    host, survivor = peers.start_requests(2)
    host.call("request", message="elect me")
    survivor.call("request", message="a client, ready to take over")
    freeze(host.pid)
    (newcomer,) = peers.start_requests(1)
    log = tmp_path / "newcomer.log"
    newcomer.call("log_to", path=str(log))
    newcomer.start_call("subscribe")
    try:
        wait_until(lambda: log.exists() and "subscription sent" in log.read_text(), timeout=10)
    finally:
        host.kill()
    newcomer.finish_call()  # before the fix: HostChanged out of subscribe()
    survivor.call("publish", message="next")
    wait_until(functools.partial(_received_exactly, newcomer, ["next"]))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("runtime_dir")
def test_an_on_request_that_returns_a_deferred_is_answered_when_it_is_settled() -> None:
    from ipchannel._requests.host import Deferred  # noqa: PLC0415 - the host side's own API

    settlers: list[threading.Thread] = []

    def on_request(message: Any) -> Any:
        answer = Deferred()
        if message == "now":
            answer.resolve("settled before on_request returned")
        elif message == "fail":
            try:
                int("nope")  # fails, as a handler's code would
            except ValueError as exc:
                answer.fail(exc)
        else:  # settled by another thread, while the handler thread goes back to reading
            settlers.append(threading.Thread(target=answer.resolve, args=({"later": message},)))
            settlers[-1].start()
        return answer

    with ipchannel.RequestChannel("deferred", on_request) as rc:
        assert rc.request("now") == "settled before on_request returned"
        assert rc.request("x") == {"later": "x"}
        with pytest.raises(ipchannel.RemoteError, match="ValueError: invalid literal"):
            rc.request("fail")
        assert rc.request("y") == {"later": "y"}  # the same connection, still in step
    for settler in settlers:
        settler.join(5)


@pytest.mark.usefixtures("runtime_dir")
def test_unsubscribing_the_last_callback_ends_the_subscription() -> None:
    with ipchannel.RequestChannel("test", None) as channel:
        before: list[Any] = []
        after: list[Any] = []
        channel.subscribe(before.append)
        channel.publish("x")
        wait_until(lambda: before == ["x"])
        assert channel.unsubscribe(before.append) is True
        assert channel.unsubscribe(before.append) is False  # not subscribed (any more)
        wait_until(lambda: not any(t.name == "ipchannel-subscriber:test" for t in threading.enumerate()))
        channel.publish("gone")  # nobody in this process listens
        channel.subscribe(after.append)  # a new subscription: from now on
        channel.publish("y")
        wait_until(lambda: after == ["y"])
        assert before == ["x"]


@pytest.mark.usefixtures("runtime_dir")
def test_subscribing_and_unsubscribing_over_and_over_keeps_nothing_of_the_ended_subscriptions() -> None:
    # Each ended subscription's thread was kept until close (a stream opened per web request...).
    with ipchannel.RequestChannel("test", None) as channel:
        for i in range(50):
            got: list[Any] = []
            channel.subscribe(got.append)
            channel.publish(i)
            wait_until(functools.partial(operator.eq, got, [i]))
            channel.unsubscribe(got.append)
        wait_until(lambda: not any(t.name == "ipchannel-subscriber:test" for t in threading.enumerate()))
        channel.subscribe(print)
        channel.unsubscribe(print)
        assert len(channel._subscriber._ending) <= 2  # noqa: SLF001 - what a long-lived process keeps
