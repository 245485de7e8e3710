"""``ssl_context``, ``server_hostname`` and ``ssl_verify``: TLS between machines, checked once.

A client side that does not verify the host's certificate lets anyone on the network
path pose as the host: TLS then hides the traffic from those who only listen, and from
no one else. So a client context must verify (``verify_mode`` CERT_REQUIRED and
``check_hostname``), unless the caller says ``ssl_verify=False``; one context for both
sides never can (ssl refuses a ``check_hostname`` context on the serving side). ``server_hostname``
pins the name each host's certificate must carry, instead of the address in the record
(which whoever can write to the engine chooses, and which may be an IP no certificate names).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TlsConfig", "validate_tls"]

_VERIFYING = (ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL)  # the same on a client (ssl's docs)


@dataclass(frozen=True)
class TlsConfig:
    """The TLS contexts of ``ssl_context=``: ``host`` wraps accepted connections, ``client`` dialed ones."""

    host: ssl.SSLContext
    client: ssl.SSLContext
    #: the name every host's certificate must carry (``server_hostname=``); None: the recorded address
    server_hostname: str | None = None

    def server_name(self, address: str) -> str:
        """Return the name to check the certificate of the host recorded at ``address`` against."""
        return self.server_hostname or address


def validate_tls(value: object, server_hostname: object, ssl_verify: object) -> TlsConfig | None:
    """Return the TLS configuration (None: plain TCP), or raise TypeError/ValueError naming the option."""
    if not isinstance(ssl_verify, bool):
        raise TypeError(f"ssl_verify must be a bool, not {type(ssl_verify).__name__}")
    if server_hostname is not None and not isinstance(server_hostname, str):
        raise TypeError(
            "server_hostname must be a str (the name in the hosts' certificates) or None, "
            f"not {type(server_hostname).__name__}"
        )
    if server_hostname == "":
        raise ValueError("server_hostname must not be empty: the name in the hosts' certificates, or None")
    if value is None:
        if server_hostname is not None or not ssl_verify:
            raise ValueError("server_hostname and ssl_verify apply only with ssl_context (TLS)")
        return None
    config = TlsConfig(*_contexts(value), server_hostname)
    if ssl_verify:
        _check_verifies(config.client, single=isinstance(value, ssl.SSLContext))
    elif server_hostname is not None and not config.client.check_hostname:
        raise ValueError(
            "server_hostname is checked only by a client context with check_hostname=True; "
            "with it off, any certificate would do, and the name pins nothing"
        )
    return config


def _contexts(value: object) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Return (host side, client side) of ``ssl_context=``; TypeError/ValueError if they cannot be."""
    if isinstance(value, ssl.SSLContext):
        host = client = value
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(c, ssl.SSLContext) for c in value):
        host, client = value
    else:
        raise TypeError(
            "ssl_context must be an ssl.SSLContext, a pair (host_side, client_side) of them, or None; "
            f"not {type(value).__name__}"
        )
    if host.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError(
            "ssl_context's host side is a client context (PROTOCOL_TLS_CLIENT, which "
            "ssl.create_default_context() makes): pass a pair (host_side, client_side), the host side "
            "an ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) with load_cert_chain(cert, key)"
        )
    if client.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError(
            "ssl_context's client side is a server context (PROTOCOL_TLS_SERVER): pass a pair "
            "(host_side, client_side), the client side ssl.create_default_context(cafile=CA)"
        )
    return host, client


def _check_verifies(client: ssl.SSLContext, *, single: bool) -> None:
    """Raise ValueError if ``client`` would accept any certificate, or one for any name."""
    if client.verify_mode in _VERIFYING and client.check_hostname and not single:
        return
    what = (
        "one ssl_context for both sides cannot verify the host's certificate (a context that checks "
        "host names cannot serve: ssl refuses it on the host's side)"
        if single
        else "ssl_context's client side does not verify the host's certificate (verify_mode="
        f"{client.verify_mode.name}, check_hostname={client.check_hostname})"
    )
    raise ValueError(
        f"{what}, so anyone on the network path could pose as the host and read the traffic; pass "
        "ssl_context=(host_side, client_side) with a client side that verifies, e.g. "
        "ssl.create_default_context(cafile=CA) (server_hostname= pins the name the hosts' certificates "
        "carry). ssl_verify=False accepts it anyway: TLS then keeps out only those who listen without "
        "interfering"
    )
