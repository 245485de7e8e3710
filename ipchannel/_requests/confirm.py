"""What a layer above needs to know its subscribers hold: the CONFIRM frames (``wire``).

A SharedDict's replicas confirm the position they applied; its host acknowledges a
write once every member confirmed it (``_shareddict.members``). The request layer
only carries the frames: the positions mean nothing to it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import HostChanged
from .wire import CONFIRM, CONFIRMED, build_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.socket import ChannelSocket

__all__ = ["Confirmations", "Confirmer"]


@dataclass(frozen=True)
class Confirmations:
    """The callbacks of a layer whose subscribers confirm what they hold."""

    #: subscriber side, after each message its callbacks took (on ``ipchannel-subscriber:NAME``):
    #: (member, host generation, position) to confirm, or None for nothing new; True: on a new
    #: connection, said whatever the last message was (the host counts members per connection)
    position: Callable[[bool], tuple[str, int, int] | None]
    #: host side, once a connection names its member (SUBSCRIBE or CONFIRM; its handler thread):
    #: the member, and the function that cuts that connection off (the process subscribes on it now)
    subscribed: Callable[[str, Callable[[], None]], None]
    #: host side, for each CONFIRM (on the connection's handler thread): member, generation,
    #: position, and a function that cuts that subscriber off (it subscribes again by itself)
    confirmed: Callable[[str, int, int, Callable[[], None]], None]
    #: host side, when a connection that named ``member`` ends, or names another (its handler
    #: thread): the member, and the function that cut that connection off (as to ``subscribed``)
    gone: Callable[[str, Callable[[], None]], None]
    #: subscriber side, once the subscription moved to a new host (on ``ipchannel-subscriber:NAME``):
    #: what the old host sent last may not have come (it cut us off, then died), so catch up
    moved: Callable[[], None]
    #: subscriber side: this process's name as a member, sent with every SUBSCRIBE, so the host
    #: knows whose subscription ended (``gone``) even before its first CONFIRM; "" if not known now
    member: Callable[[], str]


class Confirmer:
    """The subscriber side: sends CONFIRM on the subscription connection (``ipchannel-subscriber:NAME``)."""

    def __init__(self, name: str, confirmations: Confirmations) -> None:
        self._name, self._confirmations = name, confirmations
        self._confirmed: tuple[int, int] | None = None  # the last position confirmed on this connection

    def confirm(self, sock: ChannelSocket, attached: int | None, *, again: bool = False) -> None:
        """Tell the host what the callbacks took, if new (``again``: a new connection, whatever it is).

        Only to the host of generation ``attached``, the one the subscription is on; a failed
        send is the connection's end, which the next read sees. A host change found on the
        way (HostChanged) is the caller's, as on a read: it must subscribe on the new host.
        """
        if again:
            self._confirmed = None
        confirmable = self._confirmations.position(again)
        if confirmable is None:
            return
        member, generation, position = confirmable
        if generation != attached or (generation, position) == self._confirmed:
            return
        with contextlib.suppress(OSError):
            sock.sendall(build_frame(CONFIRM, 0, CONFIRMED.pack(generation, position) + member.encode()))
            self._confirmed = (generation, position)
        if sock.host_generation != generation:  # sendall moved it (the host died): it ignores the frame
            raise HostChanged(self._name, generation, sock.host_generation)

    def member(self) -> bytes:
        """Return this process's member name, for the SUBSCRIBE frame."""
        return self._confirmations.member().encode()

    def moved(self) -> None:
        """Let the layer above catch up: the subscription moved to a new host (``Confirmations.moved``)."""
        self._confirmations.moved()
