"""Configuring the way to the engine and between machines: URLs, engine TLS and credentials, advertise, TLS.

Real etcd (one started with TLS client authentication) and real channels in this process,
each with its own runtime directory and loopback address; the URL parser is tested on its own
too, with hypothesis, for the one promise it makes on every input: no password in a message.
"""

from __future__ import annotations

import gc
import http.server
import logging
import socket
import ssl
import string
import struct
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import pytest
import requests
from _servers import EngineServer, RedisServer, shared_redis, start_etcd, start_redis
from conftest import process_connections, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import ipchannel
from ipchannel import CoordinatorError, CoordinatorUnavailable, CoordinatorURLError
from ipchannel._core.port import port_of
from ipchannel._remote.engine import EngineUnavailable, Seen, facing_address
from ipchannel._remote.etcd import EtcdEngine
from ipchannel._remote.etcd_http import new_session
from ipchannel._url import parse_url

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _certs import Certificates, Pki

KEY = b"k" * 32
TTL = 1.0


# -- the URL parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("etcd://[::1", "never closes"),
        ("etcd://[::1]garbage", "after the address"),
        ("etcd://[::1]:2379,[::2", "never closes"),
        ("etcd://[host]:1", "only an IPv6 address"),
        ("redis://:se/cret@host:port/0", "is not a number"),
        ("redis://:se/cret@:6379/0", "names no host"),
        ("redis://user:se/cret@h/x", "database"),
        ("rediss://:se/cret@h?ssl_ca_certs=", "names no file"),
        ("etcd://se/cret@h", "USER:PASSWORD"),
        ("etcd://:se/cret@h", "USER:PASSWORD"),
        ("etcd://u:se/cret@h?cacert=/ca.pem", "need TLS"),
        ("etcds://u:se/cret@h?cert=/c.pem", "give both"),
        ("etcds://u:se/cret@h?verify=no", "unknown parameter 'verify'"),
        ("se/cret@h", "no scheme"),
        ("zk://u:se/cret@h", "unknown scheme"),
    ],
)
def test_a_bad_url_names_the_problem_and_never_the_password(url: str, problem: str) -> None:
    with pytest.raises(CoordinatorURLError, match=problem) as caught:
        ipchannel.Channel("jobs", print, coordinator=url, authkey=KEY)
    for piece in ("se/cret", "cret", "se/"):
        assert piece not in str(caught.value)
        assert piece not in caught.value.url


def test_a_slash_in_a_password_is_part_of_the_password() -> None:
    url = parse_url("redis://:se/cret@host:6379/3")
    assert (url.password, url.endpoints, url.db) == ("se/cret", (("host", 6379),), 3)
    assert "cret" not in url.text
    assert "cret" not in repr(url)


def test_tls_files_and_credentials_come_from_the_query_and_the_userinfo() -> None:
    url = parse_url("etcds://app:p%40ss@10.0.0.5:2379,[::1]/pre?cacert=/ca.pem&cert=/c.pem&key=/k.pem")
    assert (url.username, url.password) == ("app", "p@ss")
    assert url.endpoints == (("10.0.0.5", 2379), ("::1", 2379))
    assert (url.ca_file, url.cert_file, url.key_file, url.prefix) == ("/ca.pem", "/c.pem", "/k.pem", "/pre")
    redis = parse_url("rediss://:pw@h/1?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem")
    assert (redis.ca_file, redis.cert_file, redis.key_file, redis.db) == ("/ca.pem", "/c.pem", "/k.pem", 1)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://cache.internal:6380?ssl_ca_certs=/etc/ssl/ops@site/ca.pem",  # no password at all
        "etcds://app:pw@etcd1:2379?cacert=/etc/ssl/etcd@prod/ca.pem",
    ],
)
def test_an_at_sign_in_a_tls_file_s_path_is_refused_not_read_as_credentials(url: str) -> None:
    # split at the last '@', the host would be "site/ca.pem" or "prod/ca.pem", the CA file lost
    # and, for Redis, the real host taken for a password
    with pytest.raises(CoordinatorURLError, match="%40"):
        parse_url(url)
    escaped = parse_url(url.replace("ops@", "ops%40").replace("etcd@", "etcd%40"))
    assert escaped.endpoints[0][0] in {"cache.internal", "etcd1"}
    assert escaped.ca_file in {"/etc/ssl/ops@site/ca.pem", "/etc/ssl/etcd@prod/ca.pem"}


def test_a_tls_parameter_given_twice_is_refused_not_the_last_one_taken() -> None:
    with pytest.raises(CoordinatorURLError, match="'cacert' is given twice"):
        parse_url("etcds://h?cacert=/etc/ssl/staging-ca.pem&cacert=/etc/ssl/prod-ca.pem")


_PASSWORD = st.text(alphabet=string.ascii_letters + string.digits + "/?#:[]@%,.!$&'()*+;=", min_size=1).map(
    lambda body: f"Xq7{body}"  # a start no message has by chance
)


@settings(max_examples=400, deadline=None)
@given(
    password=_PASSWORD,
    scheme=st.sampled_from(["etcd", "etcds", "redis", "rediss", "zk", ""]),
    user=st.sampled_from(["", "app"]),
    tail=st.sampled_from(["h", "h:port", "[::1", "[::1]x", "", "h/x", ",", "h?cacert=", "h?x=1", "h:0"]),
)
def test_no_malformed_url_puts_its_password_in_a_message(
    password: str, scheme: str, user: str, tail: str
) -> None:
    url = f"{scheme}://{user}:{password}@{tail}" if scheme else f"{user}:{password}@{tail}"
    try:
        parsed = parse_url(url)
    except CoordinatorURLError as exc:
        messages: tuple[str, ...] = (str(exc), exc.url, exc.problem)
    else:
        messages = (parsed.text, repr(parsed))
        assert parsed.password in {password, password.partition(":")[2]} or "%" in password
    assert not [message for message in messages if password in message]


def test_an_unreadable_tls_file_is_named_before_any_connection(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(CoordinatorError, match=f"cannot read its CA file {missing}"):
        ipchannel.Channel("jobs", print, coordinator=f"etcds://127.0.0.1:1?cacert={missing}", authkey=KEY)


# -- etcd with TLS client authentication ------------------------------------------------------


@pytest.fixture
def pki(certificates: Certificates) -> Pki:
    return certificates.pki()


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: Pki) -> Iterator[EngineServer]:
    server = start_etcd(tmp_path, pki=pki, aged=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["etcd", "redis"])
def tls_engine(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[EngineServer]:
    """etcd or Redis over TLS only, each asking every client for a certificate the CA signed."""
    if request.param == "etcd":
        yield request.getfixturevalue("tls_etcd")
        return
    server = start_redis(tmp_path, pki=pki)
    try:
        yield server
    finally:
        server.stop()


def _answer(message: Any) -> Any:
    return message


@pytest.mark.timeout(60)
def test_a_channel_elects_and_serves_through_an_engine_that_asks_for_client_certificates(
    tls_engine: EngineServer, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"coordinator": tls_engine.url, "authkey": KEY, "ttl": TTL}
    host = ipchannel.RequestChannel(
        "tls-etcd", _answer, runtime_dir=tmp_path / "a", listen="127.0.0.2:0", **options
    )
    client = ipchannel.RequestChannel(
        "tls-etcd", _answer, runtime_dir=tmp_path / "b", listen="127.0.0.3:0", may_host=False, **options
    )
    try:
        host.channel.join(timeout=10)
        assert host.channel.is_host
        assert client.request("through etcd over TLS", timeout=10) == "through etcd over TLS"
    finally:
        client.close()
        host.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("missing", ["everything", "client certificate"])
def test_without_the_ca_or_the_client_certificate_a_tls_engine_is_unavailable_naming_the_url(
    tls_engine: EngineServer, pki: Pki, tmp_path: Path, missing: str
) -> None:
    base = tls_engine.url.partition("?")[0]
    ca_parameter = "cacert" if base.startswith("etcd") else "ssl_ca_certs"
    url = base if missing == "everything" else f"{base}?{ca_parameter}={pki.ca}"
    unavailable = _unavailable(url, tmp_path)
    assert base in str(unavailable)
    # the engine's own words: "certificate verify failed", "certificate required", or under TLS 1.3
    # (Redis refuses after the handshake) sometimes only "EOF occurred in violation of protocol (_ssl.c"
    assert "ssl" in str(unavailable).lower(), unavailable


# -- etcd with authentication (user and password) ---------------------------------------------

_ROOT_PASSWORD = "se/cr:et@x"  # noqa: S105 - a test server's; a '/', a ':' and an '@': none needs escaping


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EngineServer]:
    # a token unused for 1 s expires
    server = start_etcd(tmp_path, flags=("--auth-token-ttl", "1"), aged=True)
    try:
        server.enable_auth(_ROOT_PASSWORD)  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_channel_elects_and_serves_through_an_etcd_with_authentication(
    auth_etcd: EngineServer, tmp_path: Path
) -> None:
    url = auth_etcd.url.replace("etcd://", f"etcd://root:{_ROOT_PASSWORD}@")
    options: dict[str, Any] = {"coordinator": url, "authkey": KEY, "ttl": TTL}
    host = ipchannel.RequestChannel(
        "auth-etcd", _answer, runtime_dir=tmp_path / "a", listen="127.0.0.2:0", **options
    )
    client = None
    try:
        host.channel.join(timeout=10)
        assert host.channel.is_host
        client = ipchannel.RequestChannel(
            "auth-etcd", _answer, runtime_dir=tmp_path / "b", listen="127.0.0.3:0", **options
        )
        assert client.request("as root", timeout=10) == "as root"
        first = host.channel.generation
        host.close()  # a handover: the client's watch (its own session, the token too) sees the key go
        assert client.request("again", timeout=10) == "again"
        assert client.channel.is_host
        assert (client.channel.generation or 0) > (first or 0) > 0
    finally:
        if client is not None:
            client.close()
        host.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("credentials", "problem"), [("", "user name is empty"), ("root:wrong@", "authentication failed")]
)
def test_without_the_right_password_an_etcd_with_authentication_is_unavailable_naming_why(
    auth_etcd: EngineServer, tmp_path: Path, credentials: str, problem: str
) -> None:
    url = auth_etcd.url.replace("etcd://", f"etcd://{credentials}")
    channel = ipchannel.Channel(
        "auth-etcd", print, coordinator=url, authkey=KEY, ttl=TTL, runtime_dir=tmp_path
    )
    try:
        with pytest.raises(CoordinatorUnavailable, match=problem) as caught:
            channel.connect(timeout=2)
    finally:
        channel.close()
    assert auth_etcd.url.removeprefix("etcd://") in str(caught.value)
    assert "wrong" not in str(caught.value)


# -- what a host advertises ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "advertise",
    # the short forms (what inet_aton and so getaddrinfo read as 0.0.0.0) and the mapped one too
    ["0.0.0.0:7700", "[::]:0", "0.0.0.0:0", "0:7700", "0.0:7700", "0x0:7700", "[::ffff:0.0.0.0]:7700"],
)
def test_a_wildcard_advertise_is_refused_naming_the_rule(advertise: str) -> None:
    with pytest.raises(ValueError, match="advertise must be an address other machines can dial"):
        ipchannel.Channel("jobs", print, coordinator="redis://h", authkey=KEY, advertise=advertise)


def _network_address() -> str:
    """This machine's address on a network (not loopback), or skip: the route to a TEST-NET address."""
    found = facing_address(("198.51.100.1", 9))  # no packet is sent
    if found is None or found.startswith("127."):
        pytest.skip("this machine has no network address besides loopback")
    return found


def _loopback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "loopback" in r.getMessage()
    ]


@pytest.mark.timeout(60)
def test_a_loopback_advertise_with_a_remote_engine_is_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(tmp_path, bind=_network_address())
    try:
        for round_ in range(2):  # a second election of the same channel and address: no second warning
            with ipchannel.Channel(
                "loop",
                print,
                coordinator=server.url,
                authkey=KEY,
                ttl=TTL,
                listen="127.0.0.2:0",
                advertise="127.0.0.2:0",
                runtime_dir=tmp_path / str(round_),
            ) as channel:
                channel.join(timeout=10)
                assert channel.is_host
                # a server started just now: the claim holds off (an engine reset?) until it is up a
                # ttl, and one closed while holding off is left to expire; wait, so it is released
                wait_until(port_of(channel).may_serve, timeout=10)
    finally:
        server.stop()
    (warning,) = _loopback_warnings(caplog)
    assert "127.0.0.2" in warning
    assert "advertise=" in warning


@pytest.mark.timeout(60)
@pytest.mark.parametrize("advertise", ["127.0.0.3:0", None])
def test_a_loopback_address_with_a_loopback_engine_is_a_test_setup_and_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, advertise: str | None
) -> None:
    server = start_redis(tmp_path)
    try:
        with ipchannel.Channel(
            "loop-quiet", print, coordinator=server.url, authkey=KEY, ttl=TTL, listen="127.0.0.3:0",
            runtime_dir=tmp_path, advertise=advertise,
        ) as channel:  # fmt: skip
            channel.join(timeout=10)
            assert channel.is_host
    finally:
        server.stop()
    assert _loopback_warnings(caplog) == []


# -- TLS between machines: what the client side verifies ---------------------------------------


def _legacy_context() -> ssl.SSLContext:
    """The one context that serves both sides: PROTOCOL_TLS (deprecated), whose client verifies nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ssl.SSLContext(ssl.PROTOCOL_TLS)


def _host_side(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


def _verifying_single(pki: Pki) -> ssl.SSLContext:
    """One context that verifies as a client: ssl would refuse it on the host's side."""
    context = _legacy_context()
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode, context.check_hostname = ssl.CERT_REQUIRED, True
    return context


def _unverified_name(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = False  # the chain is checked, the name is not
    return context


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda _pki: _legacy_context(), "one ssl_context for both sides cannot verify"),
        (_verifying_single, "one ssl_context for both sides cannot verify"),
        (lambda pki: (_host_side(pki), _legacy_context()), "client side does not verify"),
        (lambda pki: (_host_side(pki), _unverified_name(pki)), "check_hostname=False"),
        (lambda pki: ssl.create_default_context(cafile=pki.ca), "host side is a client context"),
        (lambda pki: (_host_side(pki), _host_side(pki)), "client side is a server context"),
    ],
)
def test_a_client_side_that_does_not_verify_is_refused_saying_what_it_gives_up(
    pki: Pki, make: Any, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        ipchannel.Channel("jobs", print, coordinator="redis://h", authkey=KEY, ssl_context=make(pki))
    if "verify" in problem or "check_hostname" in problem:
        assert "pose as the host" in str(caught.value)
        assert "ssl_verify=False" in str(caught.value)


def test_tls_options_are_checked_by_type_and_by_what_they_need(pki: Pki) -> None:
    pair = (_host_side(pki), ssl.create_default_context(cafile=pki.ca))
    with pytest.raises(TypeError, match="ssl_verify must be a bool"):
        ipchannel.Channel("jobs", print, coordinator="redis://h", authkey=KEY, ssl_context=pair, ssl_verify=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="server_hostname must be a str"):
        ipchannel.Channel(
            "jobs",
            print,
            coordinator="redis://h",
            authkey=KEY,
            ssl_context=pair,
            server_hostname=b"a.test",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="server_hostname must not be empty"):  # a str: the right type
        ipchannel.Channel(
            "jobs", print, coordinator="redis://h", authkey=KEY, ssl_context=pair, server_hostname=""
        )
    with pytest.raises(ValueError, match="apply only with ssl_context"):
        ipchannel.Channel("jobs", print, coordinator="redis://h", authkey=KEY, server_hostname="a.test")
    with pytest.raises(ValueError, match="checked only by a client context with check_hostname=True"):
        ipchannel.Channel(
            "jobs", print, coordinator="redis://h", authkey=KEY, ssl_context=_legacy_context(),
            ssl_verify=False, server_hostname="a.test",
        )  # fmt: skip


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from shared_redis(tmp_path_factory)


@pytest.fixture
def redis(module_redis: RedisServer) -> EngineServer:
    """The module's Redis, emptied (``shared_redis``)."""
    return module_redis.emptied()


def _serve_and_ask(server: EngineServer, tmp_path: Path, **tls: Any) -> Any:
    """A host on 127.0.0.2 and a client on 127.0.0.3 (no certificate names either): the client's answer."""
    options: dict[str, Any] = {"coordinator": server.url, "authkey": KEY, "ttl": TTL, **tls}
    host = ipchannel.RequestChannel(
        "tls", _answer, runtime_dir=tmp_path / "a", listen="127.0.0.2:0", **options
    )
    client = ipchannel.RequestChannel(
        "tls", _answer, runtime_dir=tmp_path / "b", listen="127.0.0.3:0", may_host=False, **options
    )
    try:
        host.channel.join(timeout=10)
        assert host.channel.is_host
        return client.request("over TLS", timeout=5)
    finally:
        client.close()
        host.close()


@pytest.mark.timeout(60)
def test_the_opt_in_accepts_a_client_that_does_not_verify(
    redis: EngineServer, tmp_path: Path, certificates: Certificates
) -> None:
    pki = certificates.pki("DNS:nothing.test")
    context = _legacy_context()
    context.load_cert_chain(pki.server_cert, pki.server_key)
    assert _serve_and_ask(redis, tmp_path, ssl_context=context, ssl_verify=False) == "over TLS"


@pytest.mark.timeout(60)
def test_a_pinned_server_name_is_checked_instead_of_the_recorded_ip(
    redis: EngineServer, tmp_path: Path, certificates: Certificates
) -> None:
    pki = certificates.pki("DNS:channel.internal")  # no IP: the record's 127.0.0.2 is not in it
    pair = (_host_side(pki), ssl.create_default_context(cafile=pki.ca))
    assert _serve_and_ask(redis, tmp_path, ssl_context=pair, server_hostname="channel.internal") == "over TLS"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pinned", [None, "other.internal"])
def test_a_host_whose_certificate_lacks_the_name_is_refused(
    redis: EngineServer, tmp_path: Path, certificates: Certificates, pinned: str | None
) -> None:
    pki = certificates.pki("DNS:channel.internal")
    pair = (_host_side(pki), ssl.create_default_context(cafile=pki.ca))
    with pytest.raises(ipchannel.ChannelError, match=r"TLS with the host at 127\.0\.0\.2 failed") as caught:
        _serve_and_ask(redis, tmp_path, ssl_context=pair, server_hostname=pinned)
    assert repr(pinned or "127.0.0.2") in str(caught.value)
    assert "certificate" in str(caught.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", ["tls_etcd", "auth_etcd"])
def test_the_watch_stream_carries_the_certificate_and_the_token(
    request: pytest.FixtureRequest, server: str
) -> None:
    etcd: EngineServer = request.getfixturevalue(server)
    url = etcd.url if server == "tls_etcd" else etcd.url.replace("etcd://", f"etcd://root:{_ROOT_PASSWORD}@")
    engine = EtcdEngine(parse_url(url))
    try:
        before = engine.read("watched")
        watch = engine.watch("watched")
        claimed = threading.Timer(0.5, engine.claim, ("watched", lambda _epoch: b"v", 5.0, Seen(None, 0)))
        claimed.start()
        started = time.monotonic()
        watch.wait(before, 10.0)  # a watch that failed would return at once; one without events, in 10 s
        waited = time.monotonic() - started
        claimed.join()
        watch.cancel()
        assert 0.4 < waited < 5.0, waited
        assert engine.read("watched").value == b"v"
    finally:
        engine.close()


@pytest.mark.timeout(60)
def test_an_expired_etcd_token_is_replaced_by_logging_in_again(auth_etcd: EngineServer) -> None:
    engine = EtcdEngine(parse_url(auth_etcd.url.replace("etcd://", f"etcd://root:{_ROOT_PASSWORD}@")))
    try:
        assert engine.claim("expiring", lambda _epoch: b"v", 5.0, Seen(None, 0))
        time.sleep(3)  # the token, unused for 1 s (--auth-token-ttl), is forgotten by etcd
        assert engine.read("expiring").value == b"v"
    finally:
        engine.close()


@pytest.fixture
def wrong_service() -> Iterator[int]:
    """A port where another service answers: an HTTP server's 400 to whatever it is sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["redis", "etcd"])
def test_another_service_at_the_coordinator_s_address_is_unavailable_naming_the_url(
    wrong_service: int, scheme: str, tmp_path: Path
) -> None:
    # redis-py raised InvalidResponse ("Protocol Error"), which escaped as itself: a traceback
    # from `ipchannel status`, and not the ChannelError a caller waits on (found by a helper)
    url = f"{scheme}://127.0.0.1:{wrong_service}"
    assert url in str(_unavailable(url, tmp_path))


def _unavailable(url: str, runtime_dir: Path) -> CoordinatorUnavailable:
    """Return the error a channel on ``url`` gives when it connects (it must be CoordinatorUnavailable)."""
    channel = ipchannel.Channel(
        "unavailable", print, coordinator=url, authkey=KEY, ttl=TTL, runtime_dir=runtime_dir
    )
    try:
        with pytest.raises(CoordinatorUnavailable) as caught:
            channel.connect(timeout=2)
    finally:
        channel.close()
    return caught.value


# urllib3 2 leaves a closed session's connections to the garbage collector: a pool closes them
# when it is collected. An exception raised through a pool (a connection reset by the server)
# holds it in a reference cycle, and the sockets of a closed engine stayed open until the next
# collection (the suite's leak check saw one about 1 run in 10). Here the server resets each
# connection at its second request, and the collector is off while the test holds the error.


@pytest.fixture
def resetting_server() -> Iterator[int]:
    """A local HTTP/1.1 server that answers the first request of a connection, then resets it at the next.

    Its answer is an etcd gateway's to a read of a key nobody holds (any path, GET or POST).
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        answered = False

        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.answered:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True  # closed with no answer, lingering 0 s: a reset
                return
            self.answered = True
            body = b'{"header": {"revision": "1"}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815 - http.server names it

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _connected_to(port: int) -> list[Any]:
    """Return this process's TCP connections to ``port`` (the server's ends have it as their own)."""
    return [c for c in process_connections("tcp") if c.raddr and c.raddr.port == port]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("way", ["direct", "through a proxy"])
def test_a_closed_etcd_session_closes_its_connections_while_an_error_holds_its_pool(
    resetting_server: int, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{resetting_server}/"
    if way == "through a proxy":  # requests takes it from the environment: pools of another manager
        monkeypatch.setenv("HTTP_PROXY", url)
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        url = "http://etcd.example:2379/"
    session = new_session()
    gc.disable()
    try:
        assert session.get(url, timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError) as reset:  # its connection, reused, is reset
            session.get(url, timeout=5)
        assert session.get(url, timeout=5).status_code == 200  # a new connection, kept open
        assert _connected_to(resetting_server), "the connection is not kept open between calls"
        session.close()
        assert not _connected_to(resetting_server), "a closed session's connection stays open"
        with pytest.raises(requests.ConnectionError):  # a call overlapping the close opens nothing
            session.get(url, timeout=5)
        assert not _connected_to(resetting_server)
        del reset
    finally:
        gc.enable()


@pytest.mark.timeout(30)
def test_a_closed_etcd_engine_closes_its_connections_after_one_was_reset(resetting_server: int) -> None:
    engine = EtcdEngine(parse_url(f"etcd://127.0.0.1:{resetting_server}"))
    gc.disable()  # the reset's exception holds the pool in a reference cycle: nothing collects it
    try:
        assert engine.read("reset").value is None
        with pytest.raises(EngineUnavailable):  # its connection, reused, is reset
            engine.read("reset")
        assert engine.read("reset").value is None  # a new connection, kept open
        assert _connected_to(resetting_server), "the connection is not kept open between calls"
        engine.close()
        assert not _connected_to(resetting_server), "a closed engine's connection stays open"
        with pytest.raises(EngineUnavailable):  # a call overlapping the close opens nothing
            engine.read("reset")
        assert not _connected_to(resetting_server)
    finally:
        gc.enable()
        engine.close()
