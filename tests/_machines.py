"""Child-process side of the cross-machine tests: a peer that plays one machine.

Each peer owns a RequestChannel or a SharedDict on a coordinator (etcd or Redis), with
its own runtime directory and its own loopback address, and obeys the test's commands
(``_peers._serve_commands``). Its request handler answers ``{"pid": <host pid>, "m": message}``,
so the test can tell which machine served a request.
"""

from __future__ import annotations

import os
import signal
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from _peers import _serve_commands, log_to

import ipchannel
from ipchannel._core.port import port_of
from ipchannel._remote.status import coordinator_status

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


def on_request(message: Any) -> Any:
    """Say which process answered."""
    return {"pid": os.getpid(), "m": message}


class _MachinePeer:
    def __init__(self, kind: str, name: str, options: dict[str, Any]) -> None:
        self.kind = kind
        self.dict: ipchannel.SharedDict | None = None
        if kind == "dict":
            self.dict = ipchannel.SharedDict(name, timeout=options.pop("timeout", 10.0), **options)
            self.requests = self.dict._requests  # noqa: SLF001 - requests through the dict's own channel
        else:
            self.requests = ipchannel.RequestChannel(name, on_request, **options)
        self.channel = self.dict if self.dict is not None else self.requests
        self._load: threading.Thread | None = None
        self._load_stop = threading.Event()
        self._load_report: dict[str, Any] = {}
        self._received: list[Any] = []

    def info(self) -> dict[str, Any]:
        channel = self.requests.channel
        return {
            "pid": os.getpid(),
            "is_host": channel.is_host,
            "host_pid": channel.host_pid,
            "generation": channel.generation,
            "may_serve": port_of(channel).may_serve(),  # what the fence says right now
            "address": None if (record := channel._connector.record) is None else record.sock,  # noqa: SLF001
        }

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0912 - commands
        if cmd == "info":
            return self.info()
        if cmd == "join":
            if "monitor_interval" in args:  # a slow monitor: the fence alone must keep a woken host quiet
                self.requests.channel.monitor_interval = args["monitor_interval"]
            self.requests.channel.join(args.get("wait", 10.0))
            return self.info()
        if cmd == "request":
            started = time.monotonic()
            reply = self.requests.request(args.get("message", "hi"), timeout=args.get("wait", 5.0))
            return {**self.info(), "reply": reply, "took": time.monotonic() - started}
        if cmd == "load_start":
            self._load_stop.clear()
            self._load = threading.Thread(target=self._run_load, args=(args.get("wait", 20.0),), daemon=True)
            self._load.start()
            return self.info()
        if cmd == "load_stop":
            self._load_stop.set()
            if self._load is not None:
                self._load.join(30)
            return {**self.info(), **self._load_report}
        if cmd == "incr":
            assert self.dict is not None
            return {"values": [self.dict.incr(args["key"]) for _ in range(args["times"])]}
        if cmd == "set":
            assert self.dict is not None
            self.dict[args["key"]] = args["value"]
            return self.info()
        if cmd == "get":
            assert self.dict is not None
            return {"value": self.dict.get(args["key"])}
        if cmd == "fill":  # set key to a numbered value of size bytes, times over; the slowest write
            assert self.dict is not None
            slowest = 0.0
            for i in range(args["times"]):
                start = time.monotonic()
                self.dict[args["key"]] = f"{i:08d}" + "x" * args["size"]
                slowest = max(slowest, time.monotonic() - start)
            return {"slowest": slowest}
        if cmd == "run_on_host":
            self._run_on_host(args["path"], args["every"], args.get("freeze_flag", ""), args)
            return self.info()
        if cmd == "subscribe":  # every message this process receives is kept, for "received"
            self.requests.subscribe(self._received.append, timeout=args.get("wait", 5.0))
            return {**self.info(), "subscribed": self.requests.subscribed_generation}
        if cmd == "received":
            return {"messages": list(self._received)}
        if cmd == "engine_status":  # what the engine says of the channel (python -m ipchannel status)
            return {"channels": coordinator_status(args["url"], self.requests.channel.name)}
        if cmd == "publish":
            self.requests.publish(args["message"], timeout=args.get("wait", 5.0))
            return self.info()
        if cmd == "count_start":  # incr key until count_stop; each value returned is appended to path
            self._load_stop.clear()
            self._load = threading.Thread(target=self._count, args=(args["key"], args["path"]), daemon=True)
            self._load.start()
            return self.info()
        if cmd == "may_host":
            self.requests.channel.may_host = args["value"]
            return self.info()
        if cmd == "log_to":
            log_to(args["path"])
            return self.info()
        if cmd == "fork_request":
            return self._fork_request()
        if cmd == "close":
            self.channel.close()
            return {"pid": os.getpid()}
        raise ValueError(f"unknown command {cmd!r}")

    def _fork_request(self) -> dict[str, Any]:
        """Fork; the child requests through the inherited channel and reports who answered."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                text = repr(self.requests.request("from child", timeout=10)["pid"])
            except BaseException as exc:  # noqa: BLE001 - reported, then the child dies hard
                text = repr(exc)
            os.write(write, text.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        return {**self.info(), "child": pid, "child_answer": answer}

    def _run_load(self, timeout: float) -> None:
        ok = 0
        errors: list[str] = []
        hosts: list[int] = []
        # runs of answers from one host: [pid, first sent, first answered, last sent, last answered]
        # (time.monotonic, one clock for every process of the machine)
        runs: list[list[float]] = []
        n = 0
        while not self._load_stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                reply = self.requests.request(n, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            answered = time.monotonic()
            if reply["m"] != n:
                errors.append(f"wrong reply {reply} to {n}")
            ok += 1
            if not hosts or hosts[-1] != reply["pid"]:
                hosts.append(reply["pid"])
                runs.append([reply["pid"], sent, answered, sent, answered])
            runs[-1][3:] = [sent, answered]
        self._load_report = {"ok": ok, "errors": errors, "hosts": hosts, "runs": runs}

    def _count(self, key: str, path: str) -> None:
        """Increment ``key`` until told to stop; append each acknowledged value to ``path`` at once.

        Written as it comes (one ``write`` each), so a process killed later leaves its history.
        """
        assert self.dict is not None
        errors: list[str] = []
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._load_stop.is_set():
                try:
                    value = self.dict.incr(key)
                except Exception as exc:  # noqa: BLE001 - reported to the test
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                os.write(fd, f"{value}\n".encode())
        finally:
            os.close(fd)
        self._load_report = {"errors": errors}

    def _run_on_host(self, path: str, every: float, freeze_flag: str, options: dict[str, Any]) -> None:
        """Each run appends "pid start end"; a host finding ``freeze_flag`` SIGSTOPs itself after a run.

        ``options``: ``duration`` of a run (0.01 s), ``started`` (a file each run appends "pid start"
        to as it begins), ``time_limit`` (passed on to ``run_on_host`` if given).
        """
        duration, started = options.get("duration", 0.01), options.get("started")
        limits = {"time_limit": options["time_limit"]} if "time_limit" in options else {}

        def job() -> None:
            start = time.monotonic()
            if started:
                _append(started, f"{os.getpid()} {start}\n")
            time.sleep(duration)
            end = time.monotonic()
            _append(path, f"{os.getpid()} {start} {end}\n")
            try:
                os.unlink(freeze_flag)
            except FileNotFoundError:
                return
            os.kill(os.getpid(), signal.SIGSTOP)  # this run is over; frozen before the next one

        ipchannel.run_on_host(self.requests, job, every=every, **limits)


def _append(path: str, line: str) -> None:
    """Append ``line`` to ``path`` in one write (several processes append to the same file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def tls_contexts(cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The host-side and client-side contexts for a self-signed test certificate."""
    host = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    host.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return host, client


def machine_main(conn: Connection, name: str, runtime_dir: str, kind: str, options: dict[str, Any]) -> None:
    """Entry point of a peer process playing one machine (``options["tls"]``: a (cert, key) pair)."""
    options = dict(options, runtime_dir=runtime_dir)
    if tls := options.pop("tls", None):
        options["ssl_context"] = tls_contexts(*tls)
    _serve_commands(conn, _MachinePeer(kind, name, options))
