"""The one door into a Channel for the layers built on it (RequestChannel, SharedDict, run_on_host, aio)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._errors import ChannelTimeout
    from .._seams.base import Membership
    from .._timing import Deadline
    from .channel import Channel

__all__ = ["Port", "port_of"]


@dataclass(frozen=True)
class Port:
    """What the layers built on a Channel use of its insides (``port_of``)."""

    #: True while this process may answer as host (``Hosting.may_serve``)
    may_serve: Callable[[], bool]
    #: the generation of the term this process hosts while it may serve it, else None (``Hosting.serving``)
    serving: Callable[[], int | None]
    #: why this process's claim (of its term, or of the one it is handing over) can have lapsed; "" while
    #: it surely holds it (``Hosting.claim_problem``): what a job run still going asks at a step-down
    claim_problem: Callable[[], str]
    #: the error for a wait on this channel that ran out (``Connector.timeout_error``)
    timeout_error: Callable[[Deadline, str], ChannelTimeout]
    #: what the coordinator knows of the recorded host, without connecting
    recorded_host: Callable[[], Literal["none", "dead", "maybe alive"]]
    #: who holds every acknowledged write (a capability of the backend; None: absent)
    membership: Membership | None
    #: install the question asked before campaigning or standing by (``Connector.campaign_gate``)
    set_campaign_gate: Callable[[Callable[[], bool] | None], None]


def port_of(channel: Channel) -> Port:
    """Return the port through which the layers above reach ``channel``'s insides."""
    return channel._port  # noqa: SLF001 - the one door into a Channel for the layers built on it
