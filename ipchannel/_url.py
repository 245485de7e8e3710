"""The cross-machine options: the coordinator URL, ``listen``, ``advertise`` and ``ttl``, checked once.

``coordinator=None`` reads ``IPCHANNEL_COORDINATOR`` (and ``listen``/``advertise``
read ``IPCHANNEL_LISTEN``/``IPCHANNEL_ADVERTISE``), so a deployment switches to a
coordinator without a code change. URLs::

    etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]     (etcds:// over HTTPS)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]        (rediss:// over TLS)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import unquote

from ._errors import CoordinatorURLError

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_TTL",
    "CoordinatorURL",
    "from_environment",
    "parse_address",
    "parse_url",
    "validate_ttl",
]

DEFAULT_TTL = 5.0
DEFAULT_LISTEN = "0.0.0.0:0"
_DEFAULT_PORTS = {"etcd": 2379, "etcds": 2379, "redis": 6379, "rediss": 6379}
_DEFAULT_PREFIX = "/ipchannel"


@dataclass(frozen=True)
class CoordinatorURL:
    """A parsed coordinator URL. ``text`` is the URL with its password hidden, for messages."""

    scheme: str
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = _DEFAULT_PREFIX
    db: int = 0
    username: str | None = None
    password: str | None = None
    text: str = ""

    @property
    def engine(self) -> str:
        """``"etcd"`` or ``"redis"``."""
        return "etcd" if self.scheme.startswith("etcd") else "redis"

    @property
    def tls(self) -> bool:
        """True for ``etcds://`` and ``rediss://``."""
        return self.scheme in ("etcds", "rediss")


def parse_url(url: object) -> CoordinatorURL:
    """Parse a coordinator URL, or raise TypeError (not a str) / CoordinatorURLError (naming the problem)."""
    if not isinstance(url, str):
        raise TypeError(
            f"coordinator must be a URL string (etcd://... or redis://...) or None, not {type(url).__name__}"
        )
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise CoordinatorURLError(url, "it has no scheme")
    if scheme not in _DEFAULT_PORTS:
        raise CoordinatorURLError(url, f"unknown scheme {scheme!r}")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        if scheme.startswith("etcd"):
            raise CoordinatorURLError(_hide_password(url), "etcd credentials in the URL are not supported")
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else unquote(user)
        if not has_password:
            username = None
    text = _hide_password(url)
    if not netloc:
        raise CoordinatorURLError(text, "it names no host")
    endpoints = tuple(_endpoint(text, part, _DEFAULT_PORTS[scheme]) for part in netloc.split(","))
    prefix, db = _path_options(text, scheme, path, len(endpoints))
    return CoordinatorURL(scheme, endpoints, prefix, db, username, password, text)


def _path_options(text: str, scheme: str, path: str, endpoints: int) -> tuple[str, int]:
    """Return the key prefix (etcd) and database number (Redis) the URL's path names."""
    path = path.strip("/")
    if scheme.startswith("etcd"):
        return ("/" + path if path else _DEFAULT_PREFIX), 0
    if endpoints > 1:
        raise CoordinatorURLError(text, "a redis URL names one server")
    if not path:
        return _DEFAULT_PREFIX, 0
    try:
        db = int(path)
    except ValueError:
        raise CoordinatorURLError(text, f"the database {path!r} is not a number") from None
    if db < 0:
        raise CoordinatorURLError(text, "the database number must be >= 0")
    return _DEFAULT_PREFIX, db


def parse_address(value: object, name: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[V6]:PORT``; port 0: any free one); TypeError/ValueError name ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a 'HOST:PORT' string or None, not {type(value).__name__}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{name} must be 'HOST:PORT' (port 0 for any free port), not {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{name} must be 'HOST:PORT' with a numeric port, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}'s port must be 0-65535, not {port}")
    return host, port


def validate_ttl(ttl: object) -> float:
    """Return ``ttl`` in seconds (default ``DEFAULT_TTL``), or raise TypeError/ValueError."""
    if ttl is None:
        return DEFAULT_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds (int or float) or None, not {type(ttl).__name__}")
    if math.isnan(ttl) or math.isinf(ttl) or ttl < 1:
        raise ValueError(
            f"ttl must be a finite number of seconds >= 1 (etcd leases have whole seconds), not {ttl!r}"
        )
    return float(ttl)


def from_environment(value: str | None, variable: str) -> str | None:
    """Return ``value``, or the environment variable ``variable`` when it is None (empty counts as unset)."""
    if value is not None:
        return value
    return os.environ.get(variable) or None


def _endpoint(url: str, part: str, default_port: int) -> tuple[str, int]:
    if not part:
        raise CoordinatorURLError(url, "it has an empty host between commas")
    if part.startswith("["):
        host, _, tail = part[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise CoordinatorURLError(url, f"{part!r} names no host")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise CoordinatorURLError(url, f"the port in {part!r} is not a number") from None
    if not 0 < port <= 65535:
        raise CoordinatorURLError(url, f"the port in {part!r} must be 1-65535")
    return host, port


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return url
    credentials, _, hosts = netloc.rpartition("@")
    user = credentials.partition(":")[0] if ":" in credentials else ""
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{path}"
