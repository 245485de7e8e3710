"""What the caller chose: a channel's name and its nine backend options, checked once.

Every public class takes the same backend options (``runtime_dir``, ``authkey``,
``coordinator``, ``listen``, ``advertise``, ``ttl``, ``ssl_context``, ``server_hostname``,
``ssl_verify``). ``Options.build`` checks them once, reads the environment for those not
given (``IPCHANNEL_DIR``, ``IPCHANNEL_COORDINATOR``, ``IPCHANNEL_LISTEN``,
``IPCHANNEL_ADVERTISE``, ``IPCHANNEL_SERVER_HOSTNAME``: a deployment moves to a
coordinator without a code change), and the one ``Options`` is carried down
to the backend chooser (``_backends``). Nothing here touches the filesystem or the network.
Bad input: TypeError (wrong type) or ValueError (wrong value) naming the option.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._auth import validate_authkey
from ._tls_options import TlsConfig, validate_tls
from ._url import CoordinatorURL, parse_url

__all__ = [
    "DEFAULT_TTL",
    "NAME_RULE",
    "Options",
    "TlsConfig",
    "parse_address",
    "resolve_runtime_dir",
    "validate_name",
]

NAME_RULE = "1-64 characters of letters, digits, '.', '_' and '-', not starting with '.'"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
DEFAULT_TTL = 5.0
_DEFAULT_LISTEN = "0.0.0.0:0"


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"channel name must be a str ({NAME_RULE}), not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid channel name {name!r}: must be {NAME_RULE}")
    return name


@dataclass(frozen=True)
class Options:
    """A channel's backend options, checked; without a coordinator the cross-machine ones keep defaults."""

    #: where this process keeps the channel's local files (not created here)
    runtime_dir: Path
    authkey: bytes | None = None
    #: the engine that elects the host across machines; None: one machine
    coordinator: CoordinatorURL | None = None
    listen: tuple[str, int] = ("0.0.0.0", 0)  # noqa: S104 - the documented default: every interface
    advertise: tuple[str, int] | None = None
    ttl: float = DEFAULT_TTL
    tls: TlsConfig | None = None

    @classmethod
    def build(  # noqa: PLR0913 - the nine options every public class takes
        cls,
        *,
        runtime_dir: object = None,
        authkey: object = None,
        coordinator: object = None,
        listen: object = None,
        advertise: object = None,
        ttl: object = None,
        ssl_context: object = None,
        server_hostname: object = None,
        ssl_verify: object = None,
    ) -> Options:
        """Check the options (the environment fills in those not given) or raise naming the bad one."""
        key = validate_authkey(authkey)
        directory = resolve_runtime_dir(runtime_dir)
        url_text = _from_environment(coordinator, "IPCHANNEL_COORDINATOR")
        if url_text is None:
            _refuse_remote_only(
                listen=listen,
                advertise=advertise,
                ttl=ttl,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
                ssl_verify=None if ssl_verify is True else ssl_verify,  # True: the default, said aloud
            )
            return cls(directory, key)
        url = parse_url(url_text)
        if key is None:
            raise ValueError(
                f"authkey is required with a coordinator ({url.text}): hosts listen on TCP, where nothing "
                "else tells your processes from anyone who can reach the port; pass the same secret bytes "
                "(e.g. os.urandom(32), distributed like a password) to every process"
            )
        seconds = _validate_ttl(ttl)
        pinned = (
            server_hostname
            if ssl_context is None
            else _from_environment(server_hostname, "IPCHANNEL_SERVER_HOSTNAME")
        )
        tls = validate_tls(ssl_context, pinned, True if ssl_verify is None else ssl_verify)
        bind = parse_address(_from_environment(listen, "IPCHANNEL_LISTEN") or _DEFAULT_LISTEN, "listen")
        advertise_text = _from_environment(advertise, "IPCHANNEL_ADVERTISE")
        advertised = None if advertise_text is None else _dialable(parse_address(advertise_text, "advertise"))
        return cls(directory, key, url, bind, advertised, seconds, tls)


def _refuse_remote_only(**given: object) -> None:
    for option, value in given.items():
        if value is not None:
            raise ValueError(
                f"{option} applies only with a coordinator (coordinator= or IPCHANNEL_COORDINATOR); "
                "on one machine the channel uses a Unix socket"
            )


def resolve_runtime_dir(explicit: object = None) -> Path:
    """Return the runtime directory to use, without touching the filesystem.

    ``IPCHANNEL_DIR`` if set, else ``$XDG_RUNTIME_DIR/ipchannel``, else ``<tempdir>/ipchannel-<uid>``.
    """
    if explicit is not None:
        if not isinstance(explicit, (str, os.PathLike)) or isinstance(os.fspath(explicit), bytes):
            raise TypeError(
                "runtime_dir must be a str or os.PathLike path, or None for the default, "
                f"not {type(explicit).__name__}"
            )
        return Path(os.fspath(explicit)).absolute()
    if env := os.environ.get("IPCHANNEL_DIR"):
        return Path(env).absolute()
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg, "ipchannel").absolute()
    return Path(tempfile.gettempdir(), f"ipchannel-{os.geteuid()}").absolute()


def parse_address(value: object, name: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[V6]:PORT``; port 0: any free one); TypeError/ValueError name ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a 'HOST:PORT' string or None, not {type(value).__name__}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{name} must be 'HOST:PORT' (port 0 for any free port), not {value!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{name} must put an IPv6 address in brackets, '[V6]:PORT', not {value!r}")
    host = host[1:-1] if host.startswith("[") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{name} must be 'HOST:PORT' with a numeric port, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}'s port must be 0-65535, not {port}")
    return host, port


def _is_wildcard(host: str) -> bool:
    """Tell whether ``host`` is the any-interface address, in any spelling (``0``, ``::ffff:0.0.0.0``)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:  # the short forms (``0``, ``0.0``, ``0x0``): inet_aton, and so getaddrinfo, read them
            return socket.inet_aton(host) == bytes(4)
        except OSError:
            return False  # a name: whatever it resolves to, it is not the wildcard
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_unspecified or (mapped is not None and mapped.is_unspecified)


def _dialable(address: tuple[str, int]) -> tuple[str, int]:
    """Return ``address`` if others can dial it; ValueError for a wildcard, which is only for ``listen``."""
    if _is_wildcard(address[0]):
        raise ValueError(
            f"advertise must be an address other machines can dial, not {address[0]!r} (any interface: "
            "an address to listen on): give this machine's address on the network they share (e.g. "
            "'10.0.0.11:0'), or leave advertise unset for the one this machine reaches the coordinator from"
        )
    return address


def _validate_ttl(ttl: object) -> float:
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


def _from_environment(value: object, variable: str) -> object:
    """Return ``value``, or the environment variable ``variable`` when it is None (empty counts as unset)."""
    if value is not None:
        return value
    return os.environ.get(variable) or None
