"""Resending through a new connection when a host ends one before it answered.

A host that is going away (closing, recycled by gunicorn's ``max_requests``, stepping
down) ends its connections before another process may host, so a client that asks at
that moment is told "the connection ended" while the recorded host still looks alive.
Requests are at-least-once and a subscription is idempotent, so both try again on a new
connection, a few times, a short pause apart, within the caller's deadline.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, TypeVar

from .._errors import ChannelError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._timing import Deadline

__all__ = ["Ended", "with_resends"]

_LOGGER = logging.getLogger("ipchannel")
RESENDS = 5  # new connections tried after the host ended one before answering
PAUSE = 0.05  # seconds before each: a host going away is another's to replace
_T = TypeVar("_T")


class Ended(Exception):
    """The host ended the connection before it answered (EOF, reset, broken pipe)."""


def with_resends(attempt: Callable[[], _T], deadline: Deadline, channel: str, what: str) -> _T:
    """Return ``attempt()``; on ``Ended``, call it again (``RESENDS`` times at most, within ``deadline``).

    :raises ChannelError: the host ended the connection every time (``what`` names it).
    """
    for resend in range(RESENDS + 1):
        try:
            return attempt()
        except Ended as ended:
            if resend == RESENDS or deadline.remaining() <= PAUSE:
                raise ChannelError(f"channel {channel!r}: the host ended the {what}: {ended}") from ended
            _LOGGER.debug("channel %r: the host ended the %s (%s): trying a new one", channel, what, ended)
            time.sleep(PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
