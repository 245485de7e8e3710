"""Certificates for tests, made with the openssl command: a private CA, and what it signs.

``make_pki(directory)`` returns the paths of a CA certificate, a server certificate for
127.0.0.1 and ``localhost`` and a client certificate, each with its key, all signed by
the CA (as a production etcd with ``--client-cert-auth`` is set up); ``self_signed`` one
certificate that signs itself. ``Certificates`` (the session's ``certificates`` fixture)
makes each once per session: a key takes up to a second to generate, and tests only read them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class Pki:
    """The files of a test CA and the certificates it signed (PEM paths as str)."""

    ca: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def _signed(directory: Path, name: str, ca: tuple[str, str], extensions: str) -> tuple[str, str]:
    """Make a key and a certificate for ``name`` signed by ``ca`` (cert, key), with ``extensions``."""
    key, request, cert = (directory / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", "-cert.pem"))
    extfile = directory / f"{name}.ext"
    # and of a certificate it signed: the authority's key identifier (VERIFY_X509_STRICT, Python 3.13)
    extfile.write_text(extensions + "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(request))  # fmt: skip
    _openssl("x509", "-req", "-in", str(request), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "1", "-extfile", str(extfile), "-out", str(cert))  # fmt: skip
    return str(cert), str(key)


def make_pki(directory: Path, server_names: str = "IP:127.0.0.1,DNS:localhost") -> Pki:
    """Make a CA in ``directory`` and a server (``server_names``) and a client certificate it signs."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca-cert.pem", directory / "ca-key.pem"
    # what Python 3.13's default contexts (VERIFY_X509_STRICT) require of a CA: critical basic constraints
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    authority = (str(ca), str(ca_key))
    # clientAuth too: etcd's own gateway dials etcd with the server's certificate
    server = _signed(
        directory,
        "server",
        authority,
        f"subjectAltName={server_names}\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    client = _signed(directory, "client", authority, "extendedKeyUsage=clientAuth\n")
    return Pki(str(ca), str(ca_key), *server, *client)


def self_signed(directory: Path, name: str, addresses: str = "") -> tuple[str, str]:
    """Make a self-signed certificate (with these subjectAltName addresses) and its key in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    extension = ["-addext", f"subjectAltName={addresses}"] if addresses else []
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             *extension, "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return str(cert), str(key)


class Certificates:
    """Each PKI and self-signed certificate made once, in a directory of its own from ``new_dir``."""

    def __init__(self, new_dir: Callable[[], Path]) -> None:
        self._new_dir = new_dir
        self._pkis: dict[str, Pki] = {}
        self._self_signed: dict[tuple[str, str], tuple[str, str]] = {}

    def pki(self, server_names: str = "IP:127.0.0.1,DNS:localhost") -> Pki:
        """As ``make_pki(directory, server_names)``, the same files each time."""
        if server_names not in self._pkis:
            self._pkis[server_names] = make_pki(self._new_dir(), server_names)
        return self._pkis[server_names]

    def self_signed(self, name: str, addresses: str = "") -> tuple[str, str]:
        """As ``self_signed(directory, name, addresses)``, the same files each time."""
        if (name, addresses) not in self._self_signed:
            self._self_signed[name, addresses] = self_signed(self._new_dir(), name, addresses)
        return self._self_signed[name, addresses]
