"""SharedDict's write path: what a write costs in frames and decoding, and what that must not break."""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest
from conftest import freeze, is_member, wait_until

import ipchannel
from ipchannel import _hooks

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
def test_a_mutable_value_still_comes_to_the_hosts_replica_as_its_own_copy(peers: Peers) -> None:
    # The host's replica takes batches as they are fanned out only if they hold no mutable
    # object: a reader changing a value it read must not change the host's state.
    with ipchannel.SharedDict("test") as shared:
        assert shared.channel.is_host
        delivered = _count_deliveries(shared)
        shared["k"] = [1, {"a": 2}]
        read: Any = shared["k"]
        read.append("changed here only")
        read[1]["a"] = "changed"
        # it comes on the subscription, decoded: a copy of its own (the write may have returned
        # first, applied here from its answer, when the replica was just behind it)
        wait_until(lambda: delivered, timeout=5)
        (other,) = peers.start_dicts(1, name="test")
        assert other.call("copy")["items"] == [("k", [1, {"a": 2}])]  # the host's snapshot is unchanged


@pytest.mark.timeout(90)
def test_a_lone_write_that_timed_out_here_but_was_applied_reaches_this_replica(
    peers: Peers, runtime_dir: Path
) -> None:
    # A write whose request times out here (the host waits for a stopped member before it
    # answers) is still applied by the host, and every other replica gets it on the stream.
    # With a batch of this process's writes alone sent to it only in its answer (a7ca0e0, taken
    # out), that answer was the only way here, and it was never read: this replica kept the old
    # value, unlike every other one, until someone wrote again.
    host, stopped = peers.start_dicts(2, name="test", max_lag=4.0)
    with ipchannel.SharedDict("test", timeout=1.0) as shared:
        assert not shared.channel.is_host
        shared["k"] = "old"
        wait_until(lambda: is_member(runtime_dir, stopped.pid))
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


@pytest.mark.timeout(90)
def test_a_writer_whose_changes_are_a_batch_s_only_ones_confirms_unless_the_host_exempted_it(
    peers: Peers, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host waits for every member but a batch's one writer; that writer confirms nothing.
    # Each side decided alone, from what differed: the host from the requests in the batch, the
    # writer from whose changes it holds. A request that changes nothing (refused here; a write
    # sent again after a host change, there) made them disagree, and the write waited max_lag
    # for a confirmation that never came (uvicorn's host SIGKILLed under load: no answer for 2 s).
    with ipchannel.SharedDict("test", max_lag=30.0, timeout=40.0) as shared:
        assert shared.channel.is_host
        held, go, paused = threading.Event(), threading.Event(), list[str]()

        def hold_the_first_batch(point: str, _detail: object) -> None:
            if point == "shareddict.published" and not paused:
                paused.append(point)
                held.set()
                go.wait(20)

        changer, refused, first = peers.start_dicts(3, max_lag=30.0, timeout=40.0)
        first.call("set_then_get", key="list", value=[1])
        for peer in (changer, refused):
            peer.call("set_then_get", key=f"{peer.pid}", value=0)
        wait_until(lambda: all(is_member(runtime_dir, peer.pid) for peer in (changer, refused, first)))
        monkeypatch.setattr(_hooks, "pause", hold_the_first_batch)
        outcomes: list[dict[str, Any]] = []
        try:
            first.start_call("set_then_get", key="first", value=1)
            wait_until(held.is_set, timeout=10)  # its batch is being committed: the next two queue
            changer.start_call("set_then_get", key="changed", value=2)
            refusing = threading.Thread(
                target=lambda: outcomes.append(refused.try_call("incr", 40, key="list", times=1))
            )
            refusing.start()
            store = shared._store  # noqa: SLF001 - the host's queue of requests for the next batch
            wait_until(lambda: len(store._queue) == 2, timeout=10)  # noqa: SLF001
        finally:
            go.set()
        assert first.finish_call(timeout=10)["got"] == 1
        # one batch: the changer's write, and a refused one of another process (no change)
        assert changer.finish_call(timeout=10)["got"] == 2  # before the fix: after max_lag (30 s)
        refusing.join(10)
        assert not outcomes[0]["ok"]
        assert "RemoteError" in str(outcomes[0])
