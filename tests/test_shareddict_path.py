"""SharedDict's write path: what a write costs in frames and decoding, and what that must not break."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import ipchannel

if TYPE_CHECKING:
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
        assert delivered  # it came on the subscription, decoded: a copy of its own
        (other,) = peers.start_dicts(1, name="test")
        assert other.call("copy")["items"] == [("k", [1, {"a": 2}])]  # the host's snapshot is unchanged
