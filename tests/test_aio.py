"""ipchannel.aio with real processes: awaited requests, streams, shared-dict writes, a heartbeat.

Each failover test runs twice. Timed: the heartbeat (``_heartbeat``), a task that sleeps
1 ms at a time on the test's event loop, records how late each wake-up is and how much of
that this process can have caused (its CPU time meanwhile), printed beside the issue's 5 ms
with the raw lateness and an empty loop's in another process (the VM alone makes an empty loop
6-18 ms late at times); asserted: 20 ms, a gross stall. Watched: every call on the loop
thread that can block it (``_blocking``) fails the test, whatever it costs in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import _heartbeat
import _peers
import pytest
from _blocking import BlockingCalls
from _heartbeat import SWITCH_INTERVAL, Heartbeat, Witness
from conftest import SPAWN, Peers

import ipchannel
import ipchannel.aio
from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

PACE = 0.002  # each load task's pause between requests: a busy worker, not one that saturates the GIL


@pytest.fixture
def quick_gil_handoff() -> Iterator[None]:
    """Run the test with a 1 ms GIL switch interval, as docs/howto/asyncio.rst advises for an asyncio server.

    With the default 5 ms, a thread that wants the GIL waits up to 5 ms for it, and then any
    waiting thread may take it: the loop thread was late by more in 2 of 12 runs here.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def frozen_gc() -> Iterator[None]:
    """Move every object alive now (the test runner's: pytest, plugins, modules) out of the collector's reach.

    A full collection walks all of them (about 60 ms in this process on the test machine)
    holding the GIL, in whichever thread triggered it: it stalls any event loop, with or
    without ipchannel. ``gc.freeze()`` is what latency-sensitive servers do after start-up;
    collections of what the test itself allocates still run and are reported.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` on the loop (never blocking it) until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


def run(coro: Awaitable[None], timeout: float = 30.0) -> None:
    """Run a test coroutine on a fresh event loop (its selector watchable: _blocking), with a deadline."""
    _heartbeat.run(coro, timeout)


@pytest.fixture
def witness() -> Iterator[Witness]:
    """An empty event loop's heartbeat in another process, beside the test: the machine's own lateness."""
    seen = Witness()
    try:
        yield seen
    finally:
        seen.kill()


def entered(runtime_dir: Path, pid: int) -> int:
    """How many "hold" requests the host ``pid`` has started on (``_peers.on_request``)."""
    path = runtime_dir / f"entered-{pid}"
    return len(path.read_bytes()) if path.exists() else 0


def aio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ipchannel-aio")]


# -- the API with real peers -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_requests_publish_and_streams_reach_spawned_peers(peers: Peers) -> None:
    a, b = peers.start_requests(2)
    for peer in (a, b):
        peer.call("request", message="hello")
        peer.call("subscribe")
    host = peers.host([a, b])

    async def main() -> None:
        async with AsyncRequestChannel("test", _peers.on_request) as channel:
            assert (await channel.request({"n": 1}))["pid"] == host.pid
            replies = await asyncio.gather(*(channel.request({"n": i}) for i in range(20)))
            assert [r["message"] for r in replies] == [{"n": i} for i in range(20)]  # in order, all
            assert len(aio_threads()) == 8  # the default workers, started at the first call
            async with channel.messages() as stream, channel.messages() as second:
                await channel.publish("from the loop")
                await asyncio.to_thread(a.call, "publish", message="from a peer")
                assert [await stream.__anext__() for _ in range(2)] == ["from the loop", "from a peer"]
                assert [await second.__anext__() for _ in range(2)] == ["from the loop", "from a peer"]
            with pytest.raises(ipchannel.RemoteError, match="refused 3"):
                await channel.request({"op": "raise", "value": 3})
        assert aio_threads() == []  # joined by aclose()
        with pytest.raises(ipchannel.ChannelClosed, match="AsyncRequestChannel 'test' is closed"):
            await channel.request("late")

    run(main())
    for peer in (a, b):
        assert peer.call("received")["received"] == ["from the loop", "from a peer"]


@pytest.mark.timeout(60)
def test_async_for_ends_when_the_channel_closes(runtime_dir: Path) -> None:
    async def main() -> None:
        channel = AsyncRequestChannel("test", None, runtime_dir=runtime_dir)
        got: list[Any] = []
        stream = channel.messages()

        async def read() -> None:
            async for message in stream:
                got.append(message)  # noqa: PERF401 - the test watches it grow

        reader = asyncio.create_task(read())
        await until(lambda: channel.sync.subscribed_generation is not None, 10, "subscribed")
        await channel.publish(1)
        await channel.publish(2)
        await until(lambda: len(got) == 2, 10, "the messages")
        await channel.aclose()
        await asyncio.wait_for(reader, 5)  # the async for ended by itself
        assert got == [1, 2]

    run(main())


@pytest.mark.timeout(60)
def test_shared_dict_writes_are_awaited_reads_are_local(peers: Peers) -> None:
    (peer,) = peers.start_dicts(1)
    peer.call("incr", key="hits", times=3)

    async def main() -> None:
        hits = AsyncSharedDict("test")
        with pytest.raises(ipchannel.ChannelError, match="not open yet"):
            hits.get("hits")
        async with hits:
            assert hits["hits"] == 3  # the snapshot, read locally
            assert await hits.incr("hits") == 4
            assert hits["hits"] == 4  # read your writes
            await hits.set("mode", "fast")
            await hits.update({"a": 1}, b=2)
            assert await hits.setdefault("a", 9) == 1
            assert await hits.pop("b") == 2
            assert await hits.pop("b", None) is None
            with pytest.raises(KeyError):
                await hits.delete("missing")
            assert dict(hits) == hits.copy() == {"hits": 4, "mode": "fast", "a": 1}
            assert "mode" in hits
            assert len(hits) == 3
        with pytest.raises(ipchannel.ChannelClosed, match="AsyncSharedDict 'test' is closed"):
            hits.get("hits")

    run(main())
    assert peer.call("incr", key="hits", times=1)["results"] == [5]  # the peer shared our write


# -- the heartbeat during failover ------------------------------------------------------------

CHECKS = ["lateness", "blocking calls"]  # each failover test runs twice: timed, then watched for waits


def watch(check: str) -> contextlib.AbstractContextManager[BlockingCalls | None]:
    """On the running loop's thread: record the calls that can block it, if ``check`` asks for that."""
    if check == "blocking calls":
        return BlockingCalls(_heartbeat.selector_of(asyncio.get_running_loop()))
    return contextlib.nullcontext()


def verdict(check: str, what: str, beat: Heartbeat, calls: BlockingCalls | None, machine: str) -> None:
    """Fail on any call that could block the loop, or (timed) on a stall this process caused."""
    if check == "blocking calls":
        assert calls is not None
        assert calls.found == [], f"{what}: the loop thread made calls that can block:\n" + "\n".join(
            calls.found[:20]
        )
        print(f"\n{what}: no call that can block the loop, in {len(beat.ticks)} ticks")
        return
    print(f"\nheartbeat, {what}: {beat.summary()}")
    print(f"  {machine}")
    beat.check()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("taker", ["a peer", "this process"])
@pytest.mark.usefixtures("frozen_gc", "quick_gil_handoff")
def test_the_loop_stays_on_time_while_the_host_is_killed(
    peers: Peers, runtime_dir: Path, taker: str, check: str, witness: Witness
) -> None:
    started = peers.start_requests(2 if taker == "a peer" else 1)
    for peer in started:
        peer.call("request", message="hello")
    host = peers.host(started)
    (runtime_dir / f"hold-{host.pid}").touch()  # requests it gets now stay in flight until it dies
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncRequestChannel(
            "test", _peers.on_request, may_host=taker == "this process"
        ) as channel:
            for _ in range(20):  # warm up: workers started, connections open
                await channel.request("warm")
            with watch(check) as calls:
                beat = Heartbeat()
                beat.start()
                await requests_through_the_kill(channel, beat)
            outcome["calls"] = calls

    async def requests_through_the_kill(channel: AsyncRequestChannel, beat: Heartbeat) -> None:
        held = [asyncio.create_task(channel.request({"op": "hold"}, timeout=20)) for _ in range(4)]
        stop = asyncio.Event()
        answered: list[tuple[float, int]] = []

        async def load() -> None:
            while not stop.is_set():
                reply = await channel.request("load", timeout=20)
                answered.append((time.monotonic(), reply["pid"]))
                await asyncio.sleep(PACE)

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        await until(lambda: entered(runtime_dir, host.pid) == 4, 10, "4 requests held by the host")
        await until(lambda: len(answered) >= 50, 10, "load before the kill")
        os.kill(host.pid, signal.SIGKILL)  # reaped after the measurement: join() would block the loop
        killed = beat.event = time.monotonic()
        replies = await asyncio.gather(*held)  # resent to the new host, answered there
        recovered = time.monotonic()
        await until(
            lambda: time.monotonic() > killed + 1 and sum(1 for t, _ in answered if t > killed) >= 200,
            20,
            "a second of load after the kill",
        )
        stop.set()
        await asyncio.gather(*loaders)
        await beat.stop()
        outcome.update(
            held=replies,
            after={pid for t, pid in answered if t > recovered},
            beat=beat,
            around=beat.worst(killed - 0.05, killed + 1.0),
            is_host=channel.channel.is_host,
        )

    run(main(), timeout=60)
    machine = witness.finish()
    host.kill()
    new_hosts = {reply["pid"] for reply in outcome["held"]} | outcome["after"]
    assert len(new_hosts) == 1, new_hosts
    assert host.pid not in new_hosts
    assert outcome["is_host"] == (taker == "this process")
    around = f"{outcome['around'] * 1000:.2f} ms"
    verdict(
        check,
        f"{taker} takes over (raw within 1 s of the kill {around})",
        outcome["beat"],
        outcome["calls"],
        machine,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("taker", ["a peer", "this process"])
@pytest.mark.usefixtures("frozen_gc", "quick_gil_handoff")
def test_shared_dict_counts_every_returned_write_once_across_the_host_kill(
    peers: Peers, taker: str, check: str, witness: Witness
) -> None:
    dict_peers = peers.start_dicts(2 if taker == "a peer" else 1)  # alone, this process must take over
    dict_peers[0].call("set_then_get", key="n", value=0)
    host = peers.host(dict_peers)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncSharedDict("test", timeout=10) as shared:
            shared.channel.may_host = taker == "this process"  # the public switch, as for a Channel
            with watch(check) as calls:
                beat = Heartbeat()
                beat.start()
                await increments_through_the_kill(shared, beat)
            outcome["calls"] = calls
            if taker == "this process":  # a newcomer's write while this process hosts (blocks: not timed)
                outcome["next"] = peers.start_dicts(1)[0].call("incr", key="n", times=1)["results"]

    async def increments_through_the_kill(shared: AsyncSharedDict, beat: Heartbeat) -> None:
        stop = asyncio.Event()
        returned: list[float] = []

        async def count() -> None:
            while not stop.is_set():
                await shared.incr("n")
                returned.append(time.monotonic())
                await asyncio.sleep(PACE)

        counters = [asyncio.create_task(count()) for _ in range(4)]
        await until(lambda: len(returned) >= 100, 10, "increments before the kill")
        os.kill(host.pid, signal.SIGKILL)
        killed = beat.event = time.monotonic()
        await until(
            lambda: time.monotonic() > killed + 1 and sum(1 for t in returned if t > killed) >= 100,
            20,
            "a second of increments after the kill",
        )
        stop.set()
        await asyncio.gather(*counters)
        await beat.stop()
        hosts = shared.channel.is_host
        outcome.update(returned=len(returned), read=shared["n"], beat=beat, hosts=hosts)

    run(main(), timeout=60)
    machine = witness.finish()
    host.kill()
    assert outcome["hosts"] == (taker == "this process")
    assert outcome["read"] == outcome["returned"]  # every returned incr counted once, read locally
    if taker == "a peer":
        survivor = next(p for p in dict_peers if p is not host)
        outcome["next"] = survivor.call("incr", key="n", times=1)["results"]
    assert outcome["next"] == [outcome["returned"] + 1]  # the counter lives on in the new host
    verdict(check, f"shared dict failover, {taker} takes over", outcome["beat"], outcome["calls"], machine)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stall", ["work on the loop", "a thread holding the GIL"])
def test_the_heartbeat_blames_this_process_for_what_it_did(stall: str) -> None:
    """The measurement the bound rests on: CPU this process spends delaying its loop counts in full.

    The thread takes the GIL while the loop waits in its selector, so the loop's wait for the
    GIL falls inside its sleep: only the other thread's CPU time accounts for it. (A blocking
    call spends no CPU: the blocking-call watch catches it, see the next test.)
    """
    outcome: dict[str, Heartbeat] = {}

    start = time.thread_time()  # CPU time: a busy machine descheduling us must not shrink the stall
    sum(range(1_000_000))
    count = int(1_000_000 * 0.03 / (time.thread_time() - start))  # about 30 ms of CPU, on any machine

    def hold_the_gil(selector: _heartbeat.WatchedSelector) -> None:
        while not selector.selecting:
            time.sleep(0.0001)
        sum(range(count))  # one C call: no switch interval interrupts it

    async def main() -> None:
        beat = Heartbeat()
        beat.start()
        await asyncio.sleep(0.05)
        if stall == "work on the loop":
            sum(range(count))
        else:
            selector = _heartbeat.selector_of(asyncio.get_running_loop())
            thread = threading.Thread(target=hold_the_gil, args=(selector,))
            thread.start()
            await until(lambda: not thread.is_alive(), 10, "the GIL-holding thread ended")
        await asyncio.sleep(0.05)
        await beat.stop()
        outcome["beat"] = beat

    run(main())
    beat = outcome["beat"]
    assert beat.worst_own() > 0.015, beat.summary()  # each stall lasts about 30 ms
    assert "(bound 5 ms: MISSED)" in beat.summary()


@pytest.mark.timeout(30)
def test_the_blocking_call_watch_sees_waits_and_passes_what_cannot_wait() -> None:
    """The other half of the evidence: each kind of wait is seen on the loop thread, and nothing else."""
    found: list[list[str]] = []

    async def main() -> None:
        left, right = socket.socketpair()
        held = threading.Lock()
        held.acquire()
        try:
            with BlockingCalls(_heartbeat.selector_of(asyncio.get_running_loop())) as calls:
                await asyncio.sleep(0.002)  # the loop's own wait
                left.settimeout(0.0)
                with contextlib.suppress(BlockingIOError):
                    left.recv(1)  # cannot wait
                threading.Lock().acquire()  # free: cannot wait
                found.append(list(calls.found))
                time.sleep(0.001)  # noqa: ASYNC251 - the waits under test
                right.sendall(b"x")  # a blocking socket, though it does not wait this time
                held.acquire(timeout=0.001)
                threading.Event().wait(0.001)
                select.poll().poll(1)
            found.append(list(calls.found))
        finally:
            held.release()
            left.close()
            right.close()

    run(main())
    assert found[0] == []
    kinds = [entry.split(" in ", 1)[0] for entry in found[1]]
    assert kinds == ["sleep", "socket.sendall", "lock.acquire", "lock.acquire", "poll.poll"], found[1]
    assert "test_aio.py" in found[1][0]  # where it was called from


# -- cancellation and timeouts ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancelled_requests_leak_no_thread_and_leave_the_channel_working(
    peers: Peers, runtime_dir: Path
) -> None:
    (host,) = peers.start_requests(1)
    host.call("request", message="hello")
    hold = runtime_dir / f"hold-{host.pid}"
    hold.touch()

    async def main() -> None:
        async with AsyncRequestChannel("test", _peers.on_request, workers=1, may_host=False) as channel:
            sent = asyncio.create_task(channel.request({"op": "hold"}, timeout=20))
            await until(lambda: entered(runtime_dir, host.pid) == 1, 10, "the first request held")
            queued = asyncio.create_task(channel.request({"op": "hold"}, timeout=20))  # no free worker
            await asyncio.sleep(0.05)
            for task in (sent, queued):
                task.cancel()
            for task in (sent, queued):
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 1)  # at once, though the worker is still busy
            start = time.monotonic()
            with pytest.raises(ipchannel.ChannelTimeout, match="worker thread was busy"):
                await channel.request("meanwhile", timeout=0.2)  # the worker is still in the cancelled call
            assert time.monotonic() - start < 1.0  # the timeout counts from the await, waiting included
            hold.unlink()
            assert (await channel.request("after", timeout=10))["message"] == "after"
            assert entered(runtime_dir, host.pid) == 1  # the queued one was never sent
            assert len(aio_threads()) == 1

    run(main())
    assert aio_threads() == []


@pytest.mark.timeout(60)
def test_a_cancelled_shared_dict_write_happens_at_most_once(peers: Peers) -> None:
    (peer,) = peers.start_dicts(1)
    peer.call("set_then_get", key="n", value=0)

    async def main() -> None:
        async with AsyncSharedDict("test") as shared:
            writes = [asyncio.create_task(shared.incr("n")) for _ in range(8)]
            await asyncio.sleep(0)
            for task in writes:
                task.cancel()
            results = await asyncio.gather(*writes, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            value = await shared.incr("n")
            assert 1 <= value <= 9
            # read-your-writes; a cancelled write still on its way in a worker thread may land later
            assert shared["n"] >= value

    run(main())
    final = peer.call("incr", key="n", times=1)["results"][0]
    assert 2 <= final <= 10  # each cancelled write happened at most once; the last one once


# -- arguments, close, exports, fork ------------------------------------------------------------


async def _coroutine_handler(message: object) -> object:
    return message


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": "8"}, TypeError, "workers must be an int"),
        ({"workers": True}, TypeError, "workers must be an int"),
        ({"workers": 0}, ValueError, "workers must be between 1 and 256"),
        ({"on_request": _coroutine_handler}, TypeError, "on_request runs in a thread of ipchannel"),
        ({"on_request": 3}, TypeError, "on_request must be a callable"),
        ({"name": ".hidden"}, ValueError, "name"),
        ({"max_message_size": 0}, ValueError, "max_message_size"),
        ({"codec": 3}, TypeError, "codec"),
    ],
)
def test_channel_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {"name": "test", "on_request": None, **kwargs}
    with pytest.raises(error, match=match):
        AsyncRequestChannel(args.pop("name"), args.pop("on_request"), **args)


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 1.5}, TypeError, "workers must be an int"),
        ({"workers": 257}, ValueError, "workers must be between 1 and 256"),
        ({"timeout": -1}, ValueError, "timeout must be a number of seconds >= 0"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
        ({"runtime_dir": 3}, TypeError, "runtime_dir must be a str or os.PathLike"),
        ({"authkey": "secret"}, TypeError, "authkey must be bytes"),
        ({"codec": 3}, TypeError, "codec"),
    ],
)
def test_shared_dict_arguments_are_checked_before_it_opens(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AsyncSharedDict("test", **kwargs)
    with pytest.raises(ValueError, match="name"):
        AsyncSharedDict("a/b")


@pytest.mark.usefixtures("runtime_dir")
def test_stream_arguments_are_checked() -> None:
    channel = AsyncRequestChannel("test", None)
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        channel.messages(max_pending=0)
    with pytest.raises(TypeError, match="max_pending must be an int"):
        channel.messages(max_pending=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        channel.messages(timeout=-1)
    channel.close()


@pytest.mark.usefixtures("runtime_dir")
def test_a_slow_reader_keeps_the_newest_messages() -> None:
    async def main() -> None:
        async with (
            AsyncRequestChannel("test", None) as channel,
            channel.messages(max_pending=3) as stream,
        ):
            for i in range(5):
                await channel.publish(i)
            await until(lambda: stream.dropped == 2, 5, "two dropped")
            assert [await stream.__anext__() for _ in range(3)] == [2, 3, 4]

    run(main())


def test_the_public_door() -> None:
    assert ipchannel.aio.__all__ == sorted(ipchannel.aio.__all__)
    assert ipchannel.aio.__all__ == ["AsyncRequestChannel", "AsyncSharedDict", "MessageStream"]
    assert AsyncRequestChannel.__module__ == "ipchannel.aio"
    assert AsyncSharedDict.__module__ == "ipchannel.aio"


@pytest.mark.timeout(60)
def test_a_forked_child_gets_workers_and_streams_of_its_own(runtime_dir: Path) -> None:
    parent_conn, child_conn = SPAWN.Pipe()
    args = (child_conn, "test", str(runtime_dir))
    proc = SPAWN.Process(target=_peers.aio_fork_main, args=args, daemon=True)
    proc.start()
    child_conn.close()
    try:
        assert parent_conn.poll(40), "no report from the forking process"
        report = parent_conn.recv()
        pid = report["pid"]
        assert report["status"] == 0, report["child"]
        child = report["child"]["child"]
        assert child["reply"] == {"pid": pid, "message": {"from": "child"}}  # the parent still hosts
        assert child["heard"] == "child"  # its own stream, on its own loop
        assert (report["before"]["value"], child["value"], report["after"]["value"]) == (1, 2, 3)
        assert child["read"] == 2
        assert len(child["workers"]) == 3
        assert not set(child["workers"]) & set(report["before"]["workers"])  # new threads, not the parent's
        assert report["after"]["heard"] == "parent again"
        parent_conn.send("close")
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        with contextlib.suppress(OSError):
            parent_conn.close()
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        proc.close()


def _subscribed(name: str) -> bool:
    return any(t.name == f"ipchannel-subscriber:{name}" and t.is_alive() for t in threading.enumerate())


@pytest.mark.usefixtures("runtime_dir")
def test_closing_the_last_stream_ends_the_subscription_and_a_new_stream_subscribes_again() -> None:
    async def main() -> None:
        async with AsyncRequestChannel("test", None) as channel:
            first, second = channel.messages(), channel.messages()
            async with second:
                async with first:
                    await channel.publish(1)
                    assert await first.__anext__() == 1
                await channel.publish(2)
                assert [await second.__anext__() for _ in range(2)] == [1, 2]
                assert _subscribed("test")  # one stream is still open
            await until(lambda: not _subscribed("test"), 5, "the subscription ended with the last stream")
            async with channel.messages() as again:
                await channel.publish(3)
                assert await again.__anext__() == 3

    run(main())
