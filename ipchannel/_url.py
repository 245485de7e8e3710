"""The coordinator URL: which engine elects the host across machines, and how to reach it.

URLs (credentials and TLS files named as each engine's own tools name them)::

    etcd://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/PREFIX]
        etcds:// over HTTPS, with ?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem (etcdctl's flags)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]
        rediss:// over TLS, with ?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=... (redis-py's names)

The credentials are everything between ``://`` and the last ``@``, so a ``/``, ``?`` or ``:``
in a password needs no escaping (``%XX`` escapes are decoded); nothing of them ever reaches
a message: ``text`` and ``repr`` show ``***``. An ``@`` in the query (a file's path) must be
``%40``: a URL whose credentials would hold ``?cacert=`` (or another TLS parameter) is refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from ._errors import CoordinatorURLError

__all__ = ["CoordinatorURL", "parse_url"]

_DEFAULT_PORTS = {"etcd": 2379, "etcds": 2379, "redis": 6379, "rediss": 6379}
_DEFAULT_PREFIX = "/ipchannel"
#: engine -> the query parameters naming (CA file, client certificate, client key), as its own tools do
_TLS_PARAMETERS = {
    "etcd": ("cacert", "cert", "key"),
    "redis": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
}


@dataclass(frozen=True)
class CoordinatorURL:
    """A parsed coordinator URL. ``text`` is the URL with its password hidden, for messages."""

    scheme: str
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = _DEFAULT_PREFIX
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    text: str = ""
    #: CA certificates that sign the engine's certificate (None: the system's)
    ca_file: str | None = None
    #: the client certificate and its key, for an engine that asks for one (both or neither)
    cert_file: str | None = None
    key_file: str | None = None

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
    scheme = scheme.lower() if sep else ""
    credentials, at, public = (rest if sep else url).rpartition("@")
    text = _hide_password(scheme, credentials, at, public)
    if not sep:
        raise CoordinatorURLError(text, "it has no scheme")
    if scheme not in _DEFAULT_PORTS:
        raise CoordinatorURLError(text, f"unknown scheme {scheme!r}")
    if at and _has_query(scheme, credentials):
        raise CoordinatorURLError(
            text,
            "an '@' follows the query (in a file's path?): write it %40 there, or the URL's end is misread",
        )
    username, password = _credentials(text, scheme, credentials) if at else (None, None)
    location, _, query = public.partition("?")
    netloc, _, path = location.partition("/")
    if not netloc:
        raise CoordinatorURLError(text, "it names no host")
    endpoints = tuple(_endpoint(text, part, _DEFAULT_PORTS[scheme]) for part in netloc.split(","))
    prefix, db = _path_options(text, scheme, path, len(endpoints))
    ca_file, cert_file, key_file = _tls_files(text, scheme, query)
    return CoordinatorURL(
        scheme, endpoints, prefix, db, username, password, text, ca_file, cert_file, key_file
    )


def _has_query(scheme: str, credentials: str) -> bool:
    """Tell whether the credentials hold ``?NAME=`` of a TLS parameter: the query, cut by an '@' in it."""
    names = _TLS_PARAMETERS["etcd" if scheme.startswith("etcd") else "redis"]
    return any(f"?{name}=" in credentials for name in names)


def _credentials(text: str, scheme: str, credentials: str) -> tuple[str | None, str]:
    """Return (username, password) from ``[USER]:PASSWORD`` (Redis: a bare ``PASSWORD`` too)."""
    user, has_password, secret = credentials.partition(":")
    if not has_password:
        if scheme.startswith("etcd"):
            raise CoordinatorURLError(text, "etcd credentials must be USER:PASSWORD")
        return None, unquote(user)  # redis://PASSWORD@HOST, as redis-py reads it
    if scheme.startswith("etcd") and not user:
        raise CoordinatorURLError(text, "etcd credentials must name a user (USER:PASSWORD)")
    return unquote(user) or None, unquote(secret)


def _tls_files(text: str, scheme: str, query: str) -> tuple[str | None, str | None, str | None]:
    """Return the (CA, client certificate, client key) files the URL's query names."""
    accepted = _TLS_PARAMETERS["etcd" if scheme.startswith("etcd") else "redis"]
    given: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in accepted:
            raise CoordinatorURLError(text, f"unknown parameter {key!r} (accepted: {', '.join(accepted)})")
        if not value:
            raise CoordinatorURLError(text, f"the parameter {key!r} names no file")
        if key in given:
            raise CoordinatorURLError(text, f"the parameter {key!r} is given twice: which file is meant?")
        given[key] = value
    if given and scheme not in ("etcds", "rediss"):
        raise CoordinatorURLError(text, f"TLS files ({', '.join(given)}) need TLS: use {scheme}s://")
    ca_file, cert_file, key_file = (given.get(key) for key in accepted)
    if (cert_file is None) != (key_file is None):
        raise CoordinatorURLError(text, f"{accepted[1]} and {accepted[2]} go together: give both or neither")
    return ca_file, cert_file, key_file


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
        host, bracket, tail = part[1:].partition("]")
        if not bracket:
            raise CoordinatorURLError(url, f"{part!r} opens '[' for an IPv6 address but never closes it")
        if tail and not tail.startswith(":"):
            raise CoordinatorURLError(url, f"{part!r} has {tail!r} after the address: expected ':PORT'")
        if not _is_ipv6(host):
            raise CoordinatorURLError(url, f"{part!r}: only an IPv6 address goes in brackets")
        port_text = tail[1:]
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


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host.partition("%")[0])  # a zone (fe80::1%eth0) is fine for getaddrinfo
    except ValueError:
        return False
    return True


def _hide_password(scheme: str, credentials: str, at: str, public: str) -> str:
    """Return the URL for messages: the username, if any, stays; the rest of the credentials is ``***``."""
    head = f"{scheme}://" if scheme else ""
    if not at:
        return f"{head}{public}"
    user = credentials.partition(":")[0] if ":" in credentials else ""
    return f"{head}{user}:***@{public}"
