"""The optional authkey handshake: HMAC challenge-response in both directions, before any handler runs.

As ``multiprocessing.connection`` does it, with SHA-256 and ``hmac.compare_digest``::

    host   -> client   CHALLENGE + nonce_h                     (16 + 32 bytes)
    client -> host     HMAC(key, "client" + nonce_h) + nonce_c (32 + 32 bytes)
    host   -> client   WELCOME + HMAC(key, "host" + nonce_c)   (16 + 32 bytes), or FAILURE (16 bytes)

Both sides prove they know the key; neither sends it. The labels keep one
side's answer from being replayed as the other's. The uid check on the socket
still applies first: the authkey narrows "processes of this user" to "processes
of this user that were given the key". Each side returns the two nonces (the
handshake's transcript): across machines they key the record layer that
authenticates every later byte (``_remote.records``). The whole handshake runs
within one deadline (``HANDSHAKE_TIMEOUT``), not a timeout per ``recv``: a client
that drips a byte at a time is cut off as surely as a silent one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._errors import AuthenticationError
from ._timing import Deadline

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

_Sock = TypeVar("_Sock", bound="socket.socket")


class Stream(Protocol):
    """What a handshake runs on: a socket, or a socket seen through its TLS session."""

    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def settimeout(self, value: float | None, /) -> None: ...


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "NONCE",
    "Stream",
    "authenticated",
    "check_auth_matches",
    "client_handshake",
    "host_admits",
    "host_handshake",
    "validate_authkey",
]

_LOGGER = logging.getLogger("ipchannel")
HANDSHAKE_TIMEOUT = 5.0  # seconds a whole handshake may take (one deadline, not one per message)
_CHALLENGE = b"#IPCHANNEL-AUTH#"
#: the challenge of a connection whose bytes then travel in authenticated records (TCP without TLS):
#: a client or host of a version without them is told apart, not taken for one with another key
_CHALLENGE_RECORDS = b"#IPCHANNEL-AUTR#"
_WELCOME = b"#IPCHANNEL-OK###"
_FAILURE = b"#IPCHANNEL-FAIL#"
NONCE = 32  # bytes of each side's nonce; the transcript is both, host's first
_DIGEST = 32


def validate_authkey(authkey: object) -> bytes | None:
    """Return ``authkey`` as bytes (or None), or raise TypeError/ValueError."""
    if authkey is None:
        return None
    if not isinstance(authkey, (bytes, bytearray)):
        raise TypeError(
            f"authkey must be bytes (for example os.urandom(32)) or None, not {type(authkey).__name__}"
        )
    if not authkey:
        raise ValueError("authkey must not be empty; pass None for no authentication")
    return bytes(authkey)


def _mac(key: bytes, label: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, label + nonce, hashlib.sha256).digest()


def _within(sock: Stream, deadline: Deadline, channel: str, waiting_for: str) -> None:
    """Let the next socket call wait only for what is left of the handshake's deadline."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise AuthenticationError(channel, f"no {waiting_for} within {deadline.timeout:.0f} s")
    sock.settimeout(remaining)


def _recv_exactly(sock: Stream, size: int, channel: str, waiting_for: str, deadline: Deadline) -> bytes:
    data = b""
    while len(data) < size:
        _within(sock, deadline, channel, waiting_for)
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise AuthenticationError(channel, f"no {waiting_for} within {deadline.timeout:.0f} s") from None
        if not chunk:  # the other end went away (a host stepping down ends every connection): not a refusal
            raise ConnectionResetError(f"channel {channel!r}: the connection closed before the {waiting_for}")
        data += chunk
    return data


def _send(sock: Stream, data: bytes, channel: str, deadline: Deadline) -> None:
    _within(sock, deadline, channel, "room to send the handshake")  # a client that reads nothing
    try:
        sock.sendall(data)
    except TimeoutError:
        raise AuthenticationError(channel, f"the handshake took over {deadline.timeout:.0f} s") from None


def host_handshake(
    sock: Stream, key: bytes, channel: str, deadline: Deadline | None = None, *, records: bool = False
) -> bytes:
    """Challenge a new connection (host side); return the transcript, or raise AuthenticationError.

    ``deadline`` bounds the whole handshake (default: ``HANDSHAKE_TIMEOUT`` from now); ``records``:
    the connection continues in authenticated records (the challenge says so).
    """
    deadline = Deadline(HANDSHAKE_TIMEOUT) if deadline is None else deadline
    try:
        nonce = os.urandom(NONCE)
        _send(sock, (_CHALLENGE_RECORDS if records else _CHALLENGE) + nonce, channel, deadline)
        answer = _recv_exactly(sock, _DIGEST + NONCE, channel, "answer to the challenge", deadline)
        if not hmac.compare_digest(answer[:_DIGEST], _mac(key, b"client", nonce)):
            _send(sock, _FAILURE, channel, deadline)
            raise AuthenticationError(channel, "the client answered the challenge with another authkey")
        _send(sock, _WELCOME + _mac(key, b"host", answer[_DIGEST:]), channel, deadline)
    finally:
        sock.settimeout(None)
    return nonce + answer[_DIGEST:]


def host_admits(  # noqa: PLR0913 - the handshake's, then where refusals are logged, then the protocol
    sock: Stream,
    key: bytes,
    channel: str,
    deadline: Deadline | None = None,
    warn: Callable[..., None] = _LOGGER.warning,
    *,
    records: bool = False,
) -> bytes | None:
    """Run the host's side in the connection's handler thread (a slow client delays nobody else).

    Returns the transcript, or None (logged through ``warn``) if the client does not know the key,
    did not finish by ``deadline``, or left meanwhile.
    """
    try:
        return host_handshake(sock, key, channel, deadline, records=records)
    except AuthenticationError as exc:
        warn("refused a connection: %s", exc)
    except OSError as exc:
        _LOGGER.debug("channel %r: a client left during the handshake: %s", channel, exc)
    return None


def client_handshake(
    sock: Stream, key: bytes, channel: str, deadline: Deadline | None = None, *, records: bool = False
) -> bytes:
    """Answer the host's challenge and check the host's proof; return the transcript.

    :raises AuthenticationError: the keys differ, the host is not one, or it took longer than ``deadline``.
    """
    deadline = Deadline(HANDSHAKE_TIMEOUT) if deadline is None else deadline
    try:
        size = len(_CHALLENGE) + NONCE
        challenge = _recv_exactly(sock, size, channel, "authentication challenge", deadline)
        expected, other = (_CHALLENGE_RECORDS, _CHALLENGE) if records else (_CHALLENGE, _CHALLENGE_RECORDS)
        if challenge.startswith(other):
            raise AuthenticationError(
                channel,
                "the host runs another ipchannel version (with or without authenticated records "
                "after the handshake); run the same version in every process",
            )
        if not challenge.startswith(expected):
            raise AuthenticationError(channel, "the host did not send an authentication challenge")
        nonce = os.urandom(NONCE)
        _send(sock, _mac(key, b"client", challenge[len(_CHALLENGE) :]) + nonce, channel, deadline)
        verdict = _recv_exactly(sock, len(_WELCOME), channel, "host's verdict", deadline)
        if verdict == _FAILURE:
            raise AuthenticationError(channel, "the host refused our authkey (the keys differ)")
        proof = _recv_exactly(sock, _DIGEST, channel, "host's proof", deadline)
        if verdict != _WELCOME or not hmac.compare_digest(proof, _mac(key, b"host", nonce)):
            raise AuthenticationError(channel, "the host could not prove it knows the authkey")
    finally:
        sock.settimeout(None)
    return challenge[len(_CHALLENGE) :] + nonce


def check_auth_matches(channel: str, host_requires_key: bool, authkey: bytes | None) -> None:
    """Refuse before connecting when the host record's use of a key differs from ours."""
    if host_requires_key != (authkey is not None):
        raise AuthenticationError(
            channel,
            "the host requires an authkey and this channel has none"
            if host_requires_key
            else "this channel has an authkey but the host does not ask for one",
        )


def authenticated(sock: _Sock, channel: str, authkey: bytes | None) -> _Sock | None:
    """Run the client side of the handshake on a new connection; None (closed) if the host went away."""
    if authkey is None:
        return sock
    try:
        client_handshake(sock, authkey, channel)
    except AuthenticationError:
        sock.close()
        raise
    except OSError:
        sock.close()
        return None  # the host went away mid-handshake: look again
    return sock
