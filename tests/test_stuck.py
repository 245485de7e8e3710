"""A stuck peer holds up nobody: a replica or subscriber stopped (SIGSTOP) is cut off, then catches up.

The promise of docs/explanation/guarantees.rst: a slow or stuck client or handler holds only its own
thread. The host queues what a subscriber has yet to read (``max_backlog`` bytes, ``max_lag``
seconds), never waits for it, cuts it off past the bound, and the subscriber comes back by itself
once it runs.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import TYPE_CHECKING

import pytest
from conftest import Peer, Peers, freeze, wait_until

if TYPE_CHECKING:
    from pathlib import Path

_BIG = 200_000  # bytes per write or message: a few fill the kernel's socket buffers


class _Stopped:
    """SIGSTOP a peer for the duration of a ``with``; SIGCONT it on the way out, whatever happened."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def __enter__(self) -> None:
        freeze(self._peer.pid)

    def __exit__(self, *_exc: object) -> None:
        os.kill(self._peer.pid, signal.SIGCONT)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "ipchannel.log"
    path.touch()
    return path


@pytest.mark.timeout(90)
def test_a_stopped_replica_holds_up_no_write_and_resyncs_when_it_runs(peers: Peers, log: Path) -> None:
    host, stuck, writer = group = peers.start_dicts(3, log=str(log), max_backlog=1_000_000, max_lag=1.0)
    assert peers.host(group) is host
    writer.call("set_then_get", key="k", value="first")
    position = host.call("info")["position"]
    stuck.call("wait_position", position=position)
    with _Stopped(stuck):
        # 20 x 200 KB: the stopped replica's socket buffers fill after two; every write must go on
        filled = writer.call("fill", key="k", size=_BIG, times=20)
        assert filled["slowest"] < 3.0, filled
        own = host.call("fill", key="h", size=_BIG, times=3)  # the host's own writes too
        assert own["slowest"] < 3.0, own
        cut = re.compile(rf"(subscriber|member) pid {stuck.pid}\b.*(fell behind|did not confirm)")
        wait_until(lambda: cut.search(log.read_text()), timeout=10)
    # running again: it was cut off, subscribes again, misses what the host no longer has, resyncs
    _assert_same(group)
    writer.call("set_then_get", key="after", value=1)  # and it follows the stream again
    _assert_same(group)


def _assert_same(group: list[Peer]) -> None:
    """Once no write is on its way: every replica reaches the furthest position, holding the same."""
    final = max((peer.call("digest") for peer in group), key=lambda digest: tuple(digest["position"]))
    for peer in group:
        assert peer.call("wait_position", position=final["position"])["position"] == final["position"]
        assert peer.call("digest") == final


@pytest.mark.timeout(90)
def test_a_stopped_subscriber_holds_up_no_publisher_and_is_told_what_it_missed(peers: Peers) -> None:
    host, stuck, publisher = group = peers.start_requests(3, max_backlog=1_000_000, max_lag=1.0)
    for peer in group:  # the first to subscribe hosts
        peer.call("subscribe")
    assert peers.host(group) is host
    publisher.call("publish", message={"i": -1})
    wait_until(lambda: stuck.call("received")["received"] == [{"i": -1}])
    with _Stopped(stuck):
        assert publisher.call("publish_many", 60, times=20, size=_BIG, each=5)["slowest"] < 3.0
        # more than the host replays (1024): the subscriber must be told it lost some
        assert publisher.call("publish_many", 60, times=3000, size=100, each=5)["slowest"] < 3.0
    expected = [{"i": -1}] + [{"i": i} for i in range(20)] + [{"i": i} for i in range(3000)]
    # the host's own subscription gets them all (a moment after the last publish returned)
    wait_until(lambda: len(host.call("received")["received"]) == len(expected), timeout=20)

    def caught_up() -> bool:
        got = stuck.call("received")
        return bool(got["missed"]) and got["received"][-1]["i"] == 2999

    wait_until(caught_up, timeout=20)
    got = stuck.call("received")
    received = [{"i": m["i"]} for m in got["received"]]
    # in order, nothing twice, and every message it lacks is counted in what it was told
    indexes = [expected.index(m, 1 if m["i"] >= 0 else 0) for m in received[:1]]  # the first is {"i": -1}
    assert indexes == [0]
    tail = [m["i"] for m in received[1:]]
    assert len(tail) + sum(got["missed"]) == 20 + 3000, (len(tail), got["missed"])
    assert all(count is not None and count > 0 for count in got["missed"]), got["missed"]
    publisher.call("publish", message={"i": "after"})
    wait_until(lambda: stuck.call("received")["received"][-1] == {"i": "after"})


@pytest.mark.timeout(90)
def test_a_writer_stopped_while_its_answer_is_sent_holds_up_no_write(peers: Peers) -> None:
    # Its answer (a popped value) was written by the thread that applied the batch, blocking:
    # every write of every process waited behind it, for as long as the writer was stopped.
    host, stuck, other = group = peers.start_dicts(3, max_lag=1.0)  # 2 s of slack below
    assert peers.host(group) is host
    host.call("fill_keys", prefix="big", size=1_000_000, times=80)
    other.call("count", key="n", threads=3)  # batches keep coming: answers go out from the committer
    stuck.call("pop_in_background", prefix="big", times=80)
    wait_until(lambda: host.call("count_prefix", prefix="big")["count"] < 70)  # answers are on their way
    with _Stopped(stuck):
        assert host.call("count_prefix", prefix="big")["count"] > 0  # stopped while it still popped
        start = time.monotonic()
        assert host.call("set_then_get", key="k", value=1)["got"] == 1
        assert other.call("set_then_get", key="k", value=2)["got"] == 2
        assert time.monotonic() - start < 3.0
    assert other.call("stop_count")["errors"] == []


@pytest.mark.timeout(90)
def test_messages_acknowledged_before_the_host_is_killed_reach_a_stopped_subscriber(peers: Peers) -> None:
    # A publish returns once every subscriber's socket has the message (or the subscriber was cut
    # off): acknowledged when merely queued on the host, they died with it, and nobody was told.
    host, stuck, publisher = group = peers.start_requests(3, max_lag=60.0)  # nobody is cut off here
    for peer in group:
        peer.call("subscribe")
    assert peers.host(group) is host
    with _Stopped(stuck):
        publisher.start_call("publish_many", times=10, size=_BIG, each=60)
        wait_until(lambda: len(host.call("received")["received"]) >= 2)  # the stopped one's socket fills
        host.kill()
    published = publisher.finish_call(timeout=60)  # every publish returned: acknowledged
    assert published["slowest"] < 60
    wait_until(lambda: [m["i"] for m in stuck.call("received")["received"]][-1:] == [9], timeout=20)
    got = stuck.call("received")
    assert [m["i"] for m in got["received"]] == list(range(10)), got["missed"]
    assert got["missed"] == []
