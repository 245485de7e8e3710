"""SharedDict's write path: what a write costs in frames and decoding, and what that must not break."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest
from conftest import freeze, wait_until

import ipchannel

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Peers


def _count_deliveries(shared: ipchannel.SharedDict) -> list[bytes]:
    """Record every published message this process's subscription delivers (wraps its inbox)."""
    inbox = shared._requests._subscriber.inbox  # noqa: SLF001 - what the subscription hands over
    delivered: list[bytes] = []
    deliver = inbox.deliver

    def counting(payload: bytes) -> None:
        delivered.append(payload)
        deliver(payload)

    inbox.deliver = counting  # type: ignore[method-assign]
    return delivered


@pytest.mark.usefixtures("runtime_dir")
def test_the_host_applies_its_batches_to_its_own_replica_without_a_frame_to_itself() -> None:
    with ipchannel.SharedDict("own") as shared:
        assert shared.channel.is_host
        delivered = _count_deliveries(shared)
        for i in range(20):
            shared["k"] = i
            assert shared.incr("n") == i + 1
        assert shared.copy() == {"k": 19, "n": 20}
        assert shared.position[1] >= 40
        assert delivered == []  # each batch was taken here as it was fanned out: nothing decoded


@pytest.mark.usefixtures("runtime_dir")
def test_a_mutable_value_read_in_the_host_is_not_the_hosts_state(peers: Peers) -> None:
    # The host's replica takes batches as they are fanned out only if they hold no mutable
    # object (else its own copy comes on the subscription, or from the writer's own value):
    # a reader changing a value it read must not change the host's state.
    with ipchannel.SharedDict("test") as shared:
        assert shared.channel.is_host
        shared["k"] = [1, {"a": 2}]
        read: Any = shared["k"]
        read.append("changed here only")
        read[1]["a"] = "changed"
        (other,) = peers.start_dicts(1, name="test")
        assert other.call("copy")["items"] == [("k", [1, {"a": 2}])]  # the host's snapshot is unchanged


@pytest.mark.usefixtures("runtime_dir")
def test_a_writers_own_batches_come_in_its_answers_not_on_its_subscription(peers: Peers) -> None:
    (host,) = peers.start_dicts(1, name="test")
    with ipchannel.SharedDict("test") as shared:
        assert not shared.channel.is_host
        delivered = _count_deliveries(shared)
        for i in range(20):
            shared["k"] = i
            assert shared.incr("n") == i + 1
        assert shared.copy() == {"k": 19, "n": 20}
        assert delivered == []  # applied from the answers: no frame on the stream, no wake-up
        position = host.call("wait_position", position=list(shared.position))["position"]
        assert tuple(position) == shared.position
        assert host.call("copy")["items"] == [("k", 19), ("n", 20)]


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("runtime_dir")
def test_answers_and_the_stream_in_any_order_leave_every_replica_equal(peers: Peers) -> None:
    # Threads of this process write while another process does: batches of our writes alone
    # come in answers (which two threads may read in either order), the others on the stream.
    host, other = peers.start_dicts(2, name="test")
    with ipchannel.SharedDict("test") as shared:
        resyncs: list[None] = []
        resync = shared._resync  # noqa: SLF001 - counted: a gap filled by answers needs no snapshot

        def counting() -> None:
            resyncs.append(None)
            resync()

        shared._resync = counting  # type: ignore[assignment] # noqa: SLF001
        other.call("count", key="theirs", threads=2)
        errors: list[BaseException] = []

        def write(thread: int) -> None:
            try:
                for i in range(300):
                    shared.incr("ours")
                    shared[f"t{thread}"] = i
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stopped = other.call("stop_count", timeout=40)
        assert errors == []
        assert stopped["errors"] == []
        final = shared.incr("ours")  # after every write of the other process was answered
        assert final == 4 * 300 + 1
        for peer in (host, other):
            assert (
                tuple(peer.call("wait_position", position=list(shared.position))["position"])
                >= shared.position
            )
        wait_until(lambda: shared.get("theirs") == stopped["returned"], timeout=10)
        mine = sorted(shared.copy().items())
        for peer in (host, other):
            theirs = peer.call("copy")
            if tuple(theirs["position"]) == shared.position:
                assert theirs["items"] == mine
        assert len(resyncs) <= 1, f"{len(resyncs)} resyncs: gaps the answers should have filled"


@pytest.mark.timeout(90)
def test_a_lone_write_that_timed_out_here_but_was_applied_reaches_this_replica(
    peers: Peers, runtime_dir: Path
) -> None:
    # A write whose request times out here (the host waits for a stopped member before it
    # answers) is still applied by the host, and every other replica gets it on the stream.
    # A batch of this process's writes alone is no longer sent on this process's stream: its
    # answer is the only way here, and it is never read. Nothing else brings it while nobody
    # else writes: this replica keeps the old value, unlike every other one.
    host, stopped = peers.start_dicts(2, name="test", max_lag=4.0)
    with ipchannel.SharedDict("test", timeout=1.0) as shared:
        assert not shared.channel.is_host
        shared["k"] = "old"
        members = runtime_dir / ".test.members"
        mine = f"pid {stopped.pid}@"
        wait_until(lambda: any(m.startswith(mine) for m in json.loads(members.read_text())["members"]))
        stopped.call("wait_position", position=list(shared.position))
        freeze(stopped.pid)  # the host waits for it (max_lag) before it answers a write
        try:
            with pytest.raises(ipchannel.ChannelTimeout):
                shared["k"] = "new"
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        assert wait_until(lambda: host.call("copy")["items"] == [("k", "new")], timeout=20)
        assert wait_until(lambda: stopped.call("copy")["items"] == [("k", "new")], timeout=20)
        # every other replica has it: this one must too, without another write
        assert wait_until(lambda: shared.get("k") == "new", timeout=10), shared.get("k")
