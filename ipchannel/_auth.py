"""The optional authkey handshake: HMAC challenge-response in both directions, before any handler runs.

As ``multiprocessing.connection`` does it, with SHA-256 and ``hmac.compare_digest``::

    host   -> client   CHALLENGE + nonce_h                     (16 + 32 bytes)
    client -> host     HMAC(key, "client" + nonce_h) + nonce_c (32 + 32 bytes)
    host   -> client   WELCOME + HMAC(key, "host" + nonce_c)   (16 + 32 bytes), or FAILURE (16 bytes)

Both sides prove they know the key; neither sends it. The labels keep one
side's answer from being replayed as the other's. The uid check on the socket
still applies first: the authkey narrows "processes of this user" to "processes
of this user that were given the key".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._errors import AuthenticationError

if TYPE_CHECKING:
    import socket

_Sock = TypeVar("_Sock", bound="socket.socket")


class Stream(Protocol):
    """What a handshake runs on: a socket, or a socket seen through its TLS session."""

    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def settimeout(self, value: float | None, /) -> None: ...


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "Stream",
    "authenticated",
    "check_auth_matches",
    "client_handshake",
    "host_admits",
    "host_handshake",
    "validate_authkey",
]

_LOGGER = logging.getLogger("ipchannel")
HANDSHAKE_TIMEOUT = 5.0  # seconds either side waits for the other's next message
_CHALLENGE = b"#IPCHANNEL-AUTH#"
_WELCOME = b"#IPCHANNEL-OK###"
_FAILURE = b"#IPCHANNEL-FAIL#"
_NONCE = 32
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


def _recv_exactly(sock: Stream, size: int, channel: str, waiting_for: str) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise AuthenticationError(channel, f"no {waiting_for} within {HANDSHAKE_TIMEOUT:.0f} s") from None
        if not chunk:  # the other end went away (a host stepping down ends every connection): not a refusal
            raise ConnectionResetError(f"channel {channel!r}: the connection closed before the {waiting_for}")
        data += chunk
    return data


def host_handshake(sock: socket.socket, key: bytes, channel: str) -> None:
    """Challenge a new connection (host side); raise AuthenticationError if it does not know ``key``."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        nonce = os.urandom(_NONCE)
        sock.sendall(_CHALLENGE + nonce)
        answer = _recv_exactly(sock, _DIGEST + _NONCE, channel, "answer to the challenge")
        if not hmac.compare_digest(answer[:_DIGEST], _mac(key, b"client", nonce)):
            sock.sendall(_FAILURE)
            raise AuthenticationError(channel, "the client answered the challenge with another authkey")
        sock.sendall(_WELCOME + _mac(key, b"host", answer[_DIGEST:]))
    finally:
        sock.settimeout(None)


def host_admits(sock: socket.socket, key: bytes, channel: str) -> bool:
    """Run the host's side in the connection's handler thread (a slow client delays nobody else).

    False (logged) if the client does not know the key or left meanwhile.
    """
    try:
        host_handshake(sock, key, channel)
    except AuthenticationError as exc:
        _LOGGER.warning("refused a connection: %s", exc)
        return False
    except OSError as exc:
        _LOGGER.debug("channel %r: a client left during the handshake: %s", channel, exc)
        return False
    return True


def client_handshake(sock: Stream, key: bytes, channel: str) -> None:
    """Answer the host's challenge and check the host's proof; raise AuthenticationError on failure."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        challenge = _recv_exactly(sock, len(_CHALLENGE) + _NONCE, channel, "authentication challenge")
        if not challenge.startswith(_CHALLENGE):
            raise AuthenticationError(channel, "the host did not send an authentication challenge")
        nonce = os.urandom(_NONCE)
        sock.sendall(_mac(key, b"client", challenge[len(_CHALLENGE) :]) + nonce)
        verdict = _recv_exactly(sock, len(_WELCOME), channel, "host's verdict")
        if verdict == _FAILURE:
            raise AuthenticationError(channel, "the host refused our authkey (the keys differ)")
        proof = _recv_exactly(sock, _DIGEST, channel, "host's proof")
        if verdict != _WELCOME or not hmac.compare_digest(proof, _mac(key, b"host", nonce)):
            raise AuthenticationError(channel, "the host could not prove it knows the authkey")
    finally:
        sock.settimeout(None)


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
