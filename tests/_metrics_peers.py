"""Child-process side of the metrics tests: a worker that shares prometheus_client metrics (spawned).

``main`` enables ``ipchannel.contrib.prometheus``, creates the metrics below, and obeys
commands over its Pipe (as ``_peers``): count, observe, set gauges, scrape, fork a child.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import TYPE_CHECKING, Any

import _peers

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

MODES = (
    "all",
    "liveall",
    "sum",
    "livesum",
    "max",
    "livemax",
    "min",
    "livemin",
    "mostrecent",
    "livemostrecent",
)


def parse(text: str) -> dict[str, float]:
    """Return a scrape's samples by ``name{labels}`` (labels sorted), leaving out the process's own."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("process_", "python_")):
                continue
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _joined(deadline: float) -> None:
    """Wait until this worker's sender has sent once: from then on every scrape waits for it.

    Its first change starts the sender, which opens the dict and sends at once: tens of ms
    during which a scrape does not know this worker yet (what it counted shows at the next).
    """
    from ipchannel._shareddict.dict import membership_of  # noqa: PLC0415
    from ipchannel.contrib import prometheus  # noqa: PLC0415

    while time.monotonic() < deadline:
        shared = prometheus._sharing._dict if prometheus._sharing else None  # noqa: SLF001
        membership = membership_of(shared) if shared is not None else None
        if shared is not None and membership is not None and "w:" + membership.me() in shared:
            return
        time.sleep(0.005)
    raise TimeoutError("the sender did not send within 10 s")


def _record_pushes(path: str) -> None:
    """Append ``try NUMBER AMOUNT`` before each push and ``ok NUMBER AMOUNT`` once the host applied it.

    AMOUNT is what the push adds to ``requests_total{path="/"}``: a test bounds the total by them
    (at least every ``ok``, at most every push number once) even for a worker SIGKILLed mid-send.
    """
    from ipchannel.contrib import prometheus  # noqa: PLC0415

    sharing = prometheus._sharing  # noqa: SLF001
    assert sharing is not None
    push_once = sharing._push  # noqa: SLF001
    key = '["requests","requests_total",[["path","/"]]]'

    def log(line: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, line.encode())
        os.close(fd)

    def push(shared: Any, args: list[Any]) -> None:
        amount = sum(counted for series, counted in args[5] if series == key)
        log(f"try {args[2]} {amount}\n")
        push_once(shared, args)
        log(f"ok {args[2]} {amount}\n")

    sharing._push = push  # type: ignore[method-assign,assignment] # noqa: SLF001 - the test's record, around the real push


def _views() -> dict[str, str]:
    """Return what prometheus_client's WSGI app (text and OpenMetrics) and its Django view serve."""
    import django  # noqa: PLC0415
    import prometheus_client  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    if not settings.configured:
        settings.configure(ALLOWED_HOSTS=["*"])
        django.setup()
    from django.test import RequestFactory  # noqa: PLC0415
    from prometheus_client.django import PrometheusDjangoView  # noqa: PLC0415

    texts = {}
    app = prometheus_client.make_wsgi_app()
    for name, accept in (("wsgi", "text/plain"), ("openmetrics", "application/openmetrics-text")):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "HTTP_ACCEPT": accept}
        texts[name] = b"".join(app(environ, lambda _status, _headers: None)).decode()
    texts["django"] = PrometheusDjangoView.as_view()(RequestFactory().get("/metrics")).content.decode()
    return texts


def main(conn: Connection, name: str, runtime_dir: str, options: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915
    """Share metrics as a worker does, then obey commands until "exit"."""
    import prometheus_client  # noqa: PLC0415

    from ipchannel.contrib import prometheus  # noqa: PLC0415

    prometheus.enable(name, runtime_dir=runtime_dir, **options)
    requests = prometheus_client.Counter("requests", "Requests served", ["path"])
    latency = prometheus_client.Histogram("latency_seconds", "Latency", buckets=(0.1, 1.0))
    summary = prometheus_client.Summary("payload_bytes", "Payload sizes")
    gauges = {mode: prometheus_client.Gauge(f"g_{mode}", mode, multiprocess_mode=mode) for mode in MODES}  # type: ignore[arg-type]
    jobs = prometheus_client.Gauge("jobs", "Jobs running", ["job"], multiprocess_mode="livesum")
    info = prometheus_client.Info("build", "The build")
    state = prometheus_client.Enum("state", "The state", states=["starting", "serving"])
    # a first change starts the sender, which sends at once: from then on every scrape waits for this
    # worker, and what it counts below stays unsent until a scrape asks (or flush_interval passes)
    prometheus_client.Counter("started", "Workers started").inc()
    _joined(time.monotonic() + 10)
    conn.send({"ready": os.getpid()})
    while True:
        cmd, args = conn.recv()
        try:
            reply: dict[str, Any] = {"ok": True}
            if cmd in _peers._HOOK_COMMANDS:  # noqa: SLF001 - widen a race window (pause_at, log_to)
                _peers._HOOK_COMMANDS[cmd](**args)  # noqa: SLF001
            elif cmd == "count":
                for _ in range(args["n"]):
                    requests.labels(path=args.get("path", "/")).inc()
                    latency.observe(args.get("seconds", 0.05))
                    summary.observe(args.get("size", 10))
            elif cmd == "set":
                for mode in MODES:
                    gauges[mode].set(args["value"])
            elif cmd == "info":
                info.info(args["labels"])
                state.state(args["state"])
            elif cmd == "job":
                jobs.labels(job=args["job"]).set(args["value"])
            elif cmd == "remove":  # a labelled counter's and gauge's series
                requests.remove(args["path"])
                jobs.remove(args["job"])
            elif cmd == "record_pushes":
                _record_pushes(args["path"])
            elif cmd == "push":  # a push as another version (or a bug) might make it, raw
                from ipchannel.contrib._metricsops import PUSH  # noqa: PLC0415

                assert prometheus._sharing is not None  # noqa: SLF001
                prometheus._sharing.shared().perform(PUSH, *args["push"])  # noqa: SLF001
            elif cmd == "views":  # what the exporters' views serve: WSGI (both formats), Django
                reply["texts"] = _views()
            elif cmd == "scrape":
                reply["samples"] = parse(prometheus_client.generate_latest().decode())
            elif cmd == "fork_counts":  # a child counts ``n`` and exits (its values start at 0)
                pid = os.fork()
                if pid == 0:
                    for _ in range(args["n"]):
                        requests.labels(path="/child").inc()
                    atexit._run_exitfuncs()  # noqa: SLF001 - as exiting does: the child sends what it counted
                    os._exit(0)  # not up through the parent's stack (multiprocessing's bootstrap)
                _, status = os.waitpid(pid, 0)
                reply["status"] = status
            elif cmd == "sent":  # nothing counted is unsent: no change listed, no push kept, no send
                sharing = prometheus._sharing  # noqa: SLF001
                assert sharing is not None
                reply["sent"] = (  # the lock last: a send that took the changes holds it until answered
                    not sharing.pending._changed  # noqa: SLF001
                    and sharing._unanswered is None  # noqa: SLF001
                    and not sharing._send_lock.locked()  # noqa: SLF001
                )
            elif cmd == "host":
                from ipchannel.contrib.prometheus import _sharing  # noqa: PLC0415

                assert _sharing is not None
                reply["is_host"] = _sharing.shared().channel.is_host
            elif cmd == "exit":
                conn.send(reply)
                return  # atexit sends what is left
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
