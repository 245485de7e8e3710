"""The request layer's wire protocol: one frame (``_framing``) per message, with an envelope.

Every payload starts with ``!BQ``: a kind byte and a 64-bit id, then the codec's bytes::

    client -> host   REQUEST(id, message)  PUBLISH(id, msgid + message)
                     SUBSCRIBE(id, resume flag + SUBSCRIBER [+ member name])
                     CONFIRM(0, CONFIRMED + member)  (subscriber -> host, when asked for)
    host -> client   REPLY(id, reply)  ERROR(id, json)  ACK(id)  ACK(id, SUBSCRIBED)
                     MESSAGE(number, msgid + message)

``msgid`` is ``!QQ`` (``PUBLISH_ID``): the publishing process's random id and its
message number, so subscribers can drop a copy of a message resent after a failover.
A MESSAGE's own number counts the host term's messages from 1: a subscriber that
subscribes again says the last it got (``SUBSCRIBER``: its pid, the host generation,
that number), and the host replays what follows and says how many it no longer has
(``SUBSCRIBED``).

A layer that needs to know what each subscriber holds (a SharedDict: the host
acknowledges a write once every member applied it) has its subscribers send
CONFIRM after each message they took: the host generation and a position of that
layer's own, and the subscriber's name as a member (``Confirmations``).
"""

from __future__ import annotations

import struct

from .._errors import ProtocolError

__all__ = [
    "ACK",
    "CONFIRM",
    "CONFIRMED",
    "DEDUP_WINDOW",
    "ENVELOPE",
    "ERROR",
    "MESSAGE",
    "PUBLISH",
    "PUBLISH_ID",
    "REPLAY_LIMIT",
    "REPLY",
    "REQUEST",
    "SLACK",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "SUBSCRIBER",
    "build_frame",
    "parse_frame",
]

ENVELOPE = struct.Struct("!BQ")
_FRAME_HEAD = struct.Struct("!IBQ")  # _framing's HEADER, then the envelope: a whole frame's head
_MAX_FRAME = 0xFFFFFFFF
REQUEST, PUBLISH, SUBSCRIBE, CONFIRM = 1, 2, 3, 4
REPLY, ERROR, ACK, MESSAGE = 11, 12, 13, 14
REPLAY_LIMIT = 1024
PUBLISH_ID = struct.Struct("!QQ")  # publisher, number: at the head of every PUBLISH and MESSAGE payload
SUBSCRIBER = struct.Struct("!QQQ")  # after SUBSCRIBE's resume flag: pid, host generation, last number
CONFIRMED = struct.Struct("!QQ")  # a CONFIRM's head: host generation, position; the member's name follows
SUBSCRIBED = struct.Struct("!q")  # the ACK of a SUBSCRIBE: messages missed (-1: unknown, 0: none)
#: what a message the host publishes itself (a SharedDict change) may exceed ``max_message_size`` by,
#: over the request it came from; every subscriber reads frames that much larger
SLACK = 4096
DEDUP_WINDOW = 2 * REPLAY_LIMIT  # ids a subscriber remembers; a resent copy comes within one failover
_JOIN_TIMEOUT = 2.0


def build_frame(kind: int, ident: int, payload: bytes = b"") -> bytes:
    """Return a whole frame, length header included, ready for one ``sendall``."""
    size = ENVELOPE.size + len(payload)
    if size > _MAX_FRAME:
        raise ValueError(f"a message of {len(payload)} bytes does not fit in one frame (4 GiB)")
    return _FRAME_HEAD.pack(size, kind, ident) + payload


def parse_frame(frame: bytes) -> tuple[int, int, bytes]:
    if len(frame) < ENVELOPE.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {ENVELOPE.size}-byte envelope")
    kind, ident = ENVELOPE.unpack_from(frame)
    return kind, ident, frame[ENVELOPE.size :]
