"""Test hooks: named points where a test widens a race window on purpose (a delay, a pause).

``pause`` is None in normal use, so each point costs one attribute test. A test
process sets it to ``pause(point, detail)``, which may block; the points are:

- ``"channel.resigning"``: a host has begun to give hosting up (``close()``, stepping
  down) and still has its record and listener (``detail``: the channel name);
- ``"channel.connected"``: ``connect()`` made a socket connected to the host and has not
  listed it among the channel's sockets yet (``detail``: the socket);
- ``"members.confirmed"``: the host got a replica's confirmation and has not taken it yet
  (``detail``: the member's name);
- ``"members.gone"``: a connection that named a member ended (or named another), and the
  host has not taken that yet (``detail``: the member's name);
- ``"members.locked"``: a process took the flock of a SharedDict's local members record
  and has not changed the record yet (``detail``: the lock file's path);
- ``"members.written"``: a process wrote the members record's temporary file and has not
  renamed it into place yet (``detail``: the temporary file's path);
- ``"requests.answered"``: the host sent its answer to a request, or decided to send
  none (``detail``: the request's payload);
- ``"requests.fanned_out"``: the host sent a published message to every
  subscriber and has not acknowledged it yet (``detail``: the payload);
- ``"shareddict.journaled"``: a durable SharedDict's host journaled a batch of writes and
  has neither applied nor published it yet (``detail``: the writes, as journaled);
- ``"shareddict.published"``: the host applied and published a batch of SharedDict
  writes and has not answered the writers yet (``detail``: the batch);
- ``"shareddict.resyncing"``: a replica is about to ask the host for a snapshot
  (``detail``: the channel name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["pause"]

pause: Callable[[str, object], None] | None = None
