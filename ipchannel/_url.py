"""The coordinator URL: which engine elects the host across machines, and how to reach it.

URLs::

    etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]     (etcds:// over HTTPS)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]        (rediss:// over TLS)
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from ._errors import CoordinatorURLError

__all__ = ["CoordinatorURL", "parse_url"]

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
