"""Length-prefixed frames over a stream socket, for raw-socket users and the request layer.

A frame is a 4-byte big-endian length (``!I``) followed by that many bytes, as
``multiprocessing.connection`` does. The length is checked against a limit
*before* anything is allocated, and memory grows with the bytes that arrive
(1 MiB at a time), not with what a header announces. Header and payload go
out in one ``sendall``, so a host change can never deliver a header without
its payload.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ._errors import ProtocolError

if TYPE_CHECKING:
    import socket

    from _typeshed import ReadableBuffer

__all__ = [
    "DEFAULT_MAX_SIZE",
    "HEADER",
    "FrameReader",
    "FrameTooLarge",
    "frame_size",
    "recv_message",
    "send_message",
]

#: Largest frame accepted by default: 64 MiB.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: The frame header: payload length, 4 bytes big-endian.
HEADER = struct.Struct("!I")


class FrameTooLarge(ProtocolError):
    """A frame header announces more than the reader's limit (``size``: what it announces)."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"frame of {size} bytes is larger than the limit of {max_size} bytes")
        self.size = size


def frame_size(header: ReadableBuffer, max_size: int) -> int:
    """Return the payload length a header announces, or raise ProtocolError if over ``max_size``."""
    (size,) = HEADER.unpack_from(header)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return int(size)


def send_message(sock: socket.socket, data: ReadableBuffer) -> None:
    """Send ``data`` as one frame.

    :raises ValueError: ``data`` is longer than a 4-byte length can say (4 GiB).
    """
    payload = memoryview(data).cast("B")
    if payload.nbytes > 0xFFFFFFFF:
        raise ValueError(f"a frame holds at most 4 GiB - 1 bytes, not {payload.nbytes}")
    sock.sendall(HEADER.pack(payload.nbytes) + payload)


def recv_message(sock: socket.socket, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Receive one frame and return its payload.

    :raises EOFError: the peer closed the connection cleanly, between frames.
    :raises ProtocolError: the frame is larger than ``max_size``, or the connection ended mid-frame.
    """
    header = _recv_exactly(sock, HEADER.size, at_boundary=True)
    return _recv_exactly(sock, frame_size(header, max_size), at_boundary=False)


def _recv_exactly(sock: socket.socket, size: int, *, at_boundary: bool) -> bytes:
    # Grown a bounded step at a time: a header alone never makes us allocate the whole frame.
    buffer = bytearray()
    while (received := len(buffer)) < size:
        count = _recv_onto(sock, buffer, min(size - received, FrameReader.STEP))
        if count == 0:
            if at_boundary and received == 0:
                raise EOFError("connection closed")
            raise ProtocolError(f"connection closed {received} bytes into a {size}-byte read")
    return bytes(buffer)


def _recv_onto(sock: socket.socket, buffer: bytearray, most: int) -> int:
    """Receive up to ``most`` bytes straight onto the end of ``buffer``; return how many came."""
    start, count = len(buffer), 0
    buffer += bytes(most)
    try:
        # Released here, also on an error: a socket written in Python (ChannelSocket) that raises keeps
        # its argument alive in the traceback, and the trim below would fail (BufferError).
        with memoryview(buffer) as view, view[start:] as room:
            count = sock.recv_into(room, most)
    finally:
        del buffer[start + count :]  # the room that was not filled
    return count


class FrameReader:
    """Reads frames from one stream socket, usually with a single ``recv`` per frame.

    Unlike ``recv_message`` it reads ahead: whatever follows a frame stays in
    the reader, so all reads from the socket must go through it. ``fill`` and
    ``next_frame`` let a caller wait with its own ``poll``; ``read`` blocks.
    """

    CHUNK = 65536  # one reused receive buffer: a fresh large one per recv costs an mmap
    STEP = 1 << 20  # at most this much is allocated ahead of the bytes that actually arrived

    def __init__(self, sock: socket.socket, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._sock, self._max_size = sock, max_size
        self._buffer = bytearray()
        self._chunk = memoryview(bytearray(self.CHUNK))

    def next_frame(self) -> bytes | None:
        """Return the payload of the next whole buffered frame, or None if there is none yet."""
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return None
        end = HEADER.size + frame_size(buffer, self._max_size)
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            payload = bytes(view[HEADER.size : end])
        del buffer[:end]
        return payload

    def fill(self) -> None:
        """Receive once (blocking as the socket does) and buffer what arrived.

        :raises EOFError: the peer closed the connection cleanly, between frames.
        :raises ProtocolError: the connection ended mid-frame.
        """
        buffer = self._buffer
        start = len(buffer)
        missing = HEADER.size + frame_size(buffer, self._max_size) - start if start >= HEADER.size else 0
        if missing > self.CHUNK:  # a large frame: receive straight into its place, a bounded step at a time
            # a bounded step, so a header alone never makes us allocate the whole frame
            count = _recv_onto(self._sock, buffer, min(missing, self.STEP))
        else:
            count = self._sock.recv_into(self._chunk)
            buffer += self._chunk[:count]
        if count == 0:
            if not buffer:
                raise EOFError("connection closed")
            raise ProtocolError(f"connection closed {len(buffer)} bytes into a frame")

    def read(self) -> bytes:
        """Receive one frame and return its payload; raises as ``recv_message`` does."""
        while (payload := self.next_frame()) is None:
            self.fill()
        return payload

    def skip(self, keep: int) -> bytes:
        """Drop the next frame (one over the limit: ``FrameTooLarge``) as it arrives; return its first bytes.

        At most ``keep`` bytes of its payload are returned; memory stays bounded by ``CHUNK``.

        :raises ProtocolError: the connection ended mid-frame.
        """
        buffer = self._buffer
        (size,) = HEADER.unpack_from(buffer)
        del buffer[: HEADER.size]
        kept = bytearray()
        while True:
            kept += buffer[: min(keep - len(kept), size)]
            taken = min(len(buffer), size)
            del buffer[:taken]
            size -= taken
            if size == 0:
                return bytes(kept)
            count = self._sock.recv_into(self._chunk)
            if count == 0:
                raise ProtocolError(f"connection closed {size} bytes before the end of a frame")
            buffer += self._chunk[:count]

    def clear(self) -> None:
        """Forget what is buffered (the socket moved to a new connection: a partial frame is worthless)."""
        self._buffer.clear()
