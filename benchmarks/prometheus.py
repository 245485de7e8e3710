"""Prometheus metrics across processes: ``python -m benchmarks --only prometheus``.

(a) ``Counter.inc()`` and ``Histogram.observe()`` with ``ipchannel.contrib.prometheus`` beside
prometheus_client's own single-process value (``MutexValue``) and its multiprocess mode (an
mmap write per call). prometheus_client picks its value class at import, so each variant
runs in a fresh process of its own; the parent asks them for a batch in turn, in shuffled
order, so that drift hits all three.

(b) A scrape (``generate_latest``) with 4 live workers, then again after worker churn: that
many processes, each forked from a process that had created no metric, create the same
metrics, count, and exit as a gunicorn worker does (the interpreter's normal exit; in
multiprocess mode the parent then calls ``mark_process_dead``, as its docs' ``child_exit``).
Multiprocess mode keeps each dead worker's counter and histogram files; ipchannel keeps
their totals in the dict.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._stats import Result, Series
from benchmarks.run import Config, Worker, progress, workers

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

NAME = "bench-metrics"
BATCH = 1000  # calls timed together: one is below the clock's resolution
MODES = {
    "ipchannel": "ipchannel.contrib.prometheus",
    "single": "prometheus_client alone (MutexValue, one process)",
    "multiprocess": "prometheus_client multiprocess mode (mmap)",
}


def _setup(mode: str, rd: str) -> None:
    """Make this fresh process count as ``mode`` says (before prometheus_client makes any value)."""
    if mode == "multiprocess":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory = os.path.join(rd, "multiproc")
        os.makedirs(directory, exist_ok=True)  # empty at the start of the run (a fresh runtime dir)
        from prometheus_client import values  # noqa: PLC0415 - chosen per process, as at import

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    elif mode == "ipchannel":
        from ipchannel.contrib import prometheus  # noqa: PLC0415

        prometheus.enable(NAME, runtime_dir=rd, scrape_timeout=5.0)


def _metrics() -> tuple[Any, Any, Any]:
    from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

    return (
        Counter("bench_requests", "requests"),
        Histogram("bench_seconds", "latency"),
        Gauge("bench_busy", "busy workers", multiprocess_mode="livesum"),
    )


def _registry(mode: str) -> Any:
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess  # noqa: PLC0415

    if mode != "multiprocess":
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def inc_worker(conn: Connection, mode: str, rd: str) -> None:
    """Time batches of ``inc()`` and ``observe()`` when asked; in a process of its own per mode."""
    _setup(mode, rd)
    counter, histogram, _gauge = _metrics()
    conn.send({"pid": os.getpid()})
    while (message := conn.recv()) != "stop":
        del message
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            counter.inc()
        middle = time.perf_counter_ns()
        for _ in range(BATCH):
            histogram.observe(0.02)
        conn.send(((middle - start) / BATCH, (time.perf_counter_ns() - middle) / BATCH))


def metrics_worker(conn: Connection, mode: str, rd: str) -> None:
    """A live worker (counts, then idles), or the scraper: times ``generate_latest`` when asked."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    _setup(mode, rd)
    counter, histogram, gauge = _metrics()
    counter.inc()
    histogram.observe(0.02)
    gauge.set(1)
    registry = _registry(mode)
    generate_latest(registry)  # its sender is up and its dict open before any clock starts
    conn.send({"pid": os.getpid()})
    while (message := conn.recv()) != "stop":
        start = time.perf_counter_ns()
        text = generate_latest(registry)
        conn.send((time.perf_counter_ns() - start, text.count(b"\n") if message == "lines" else 0))


_CHURN = """
import os, sys
sys.path.insert(0, sys.argv[4])
from benchmarks.prometheus import _metrics, _setup
mode, rd, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
_setup(mode, rd)
for _ in range(n):
    pid = os.fork()
    if pid == 0:  # a worker: the same metrics, a request, a normal exit (atexit and all)
        counter, histogram, gauge = _metrics()
        counter.inc(); histogram.observe(0.02); gauge.set(1)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    if mode == "multiprocess":  # gunicorn's child_exit hook, as prometheus_client's docs say
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
"""


def _churn(mode: str, rd: str, restarts: int) -> float:
    """Run ``restarts`` short-lived workers one after another; return the seconds it took."""
    start = time.monotonic()
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", _CHURN, mode, rd, str(restarts), root], check=True, timeout=900)
    return time.monotonic() - start


def bench_inc(cfg: Config, rd: str) -> list[Result]:
    rounds = 200 if cfg.quick else 2000
    progress(f"prometheus: inc()/observe(), {rounds} batches of {BATCH} per variant")
    incs = {mode: Series(f"Counter.inc(), {label}", unit="ns") for mode, label in MODES.items()}
    observes = {mode: Series(f"Histogram.observe(), {label}", unit="ns") for mode, label in MODES.items()}
    with workers() as started:
        variants = {mode: Worker(inc_worker, mode, rd) for mode in MODES}
        started.extend(variants.values())
        order = list(MODES)
        rng = random.Random(rounds)  # noqa: S311 - an order, not a secret
        for r in range(rounds + rounds // 10):
            rng.shuffle(order)
            for mode in order:
                variants[mode].send("go")
                inc_ns, observe_ns = variants[mode].recv()
                if r >= rounds // 10:  # warm-up dropped
                    incs[mode].samples.append(inc_ns)
                    observes[mode].samples.append(observe_ns)
    notes = [
        "each variant in a fresh process (the value class is chosen at import); batches interleaved",
        "ipchannel: the call changes this process's value; a sender thread ships changes every 1 s",
    ]
    ours = ["ipchannel"]
    base = ["single", "multiprocess"]
    return [
        Result(
            "prometheus: Counter.inc()",
            [incs[m] for m in ours],
            [incs[m] for m in base],
            "ratio <= 2 (issue 29)",
            notes,
        ),
        Result(
            "prometheus: Histogram.observe()",
            [observes[m] for m in ours],
            [observes[m] for m in base],
            "ratio <= 2",
            list(notes),
        ),
    ]


def _scrapes(scrapers: dict[str, Worker], series: dict[str, Series], n: int) -> None:
    """``n`` scrapes of each scraper, alternating; the first of each dropped (it may forget the dead)."""
    for k in range(n + 1):
        for mode in sorted(scrapers, reverse=bool(k % 2)):
            scrapers[mode].send("scrape")
            elapsed, _lines = scrapers[mode].recv()
            if k:
                series[mode].samples.append(elapsed)


def bench_scrape(cfg: Config, rd: str) -> list[Result]:
    restarts, n = (100, 20) if cfg.quick else (1000, 100)
    modes = ["ipchannel", "multiprocess"]
    live = {m: Series(f"scrape, {MODES[m]}", unit="ms") for m in modes}
    after = {m: Series(f"scrape, {MODES[m]}", unit="ms") for m in modes}
    notes: list[str] = []
    with workers() as started:
        progress("prometheus: scrape with 4 live workers")
        scrapers = {}
        for mode in modes:
            started.extend(Worker(metrics_worker, mode, rd) for _ in range(4))
            scrapers[mode] = Worker(metrics_worker, mode, rd)
            started.append(scrapers[mode])
        _scrapes(scrapers, live, n)
        for mode in modes:
            progress(f"prometheus: {restarts} worker restarts, {mode}")
            seconds = _churn(mode, rd, restarts)
            notes.append(f"{restarts} restarts took {seconds:.1f} s with {mode}")
        _scrapes(scrapers, after, n)
        files = len(list(Path(rd, "multiproc").glob("*.db")))
        notes.append(f"multiprocess mode's directory then holds {files} .db files; ipchannel none")
        for mode in modes:
            scrapers[mode].send("lines")
            notes.append(f"{mode}: a scrape is {scrapers[mode].recv()[1]} lines")
    common = "4 live workers and the scraper (a fifth); ipchannel's scrape asks each live worker first"
    churn = f"after {restarts} worker restarts" + (" (--quick: 1,000 in a full run)" if cfg.quick else "")
    return [
        Result(
            "prometheus: scrape, 4 live workers",
            [live["ipchannel"]],
            [live["multiprocess"]],
            "report",
            [common, "ipchannel's: the default REGISTRY, with this process's process_/python_ families"],
        ),
        Result(
            f"prometheus: scrape {churn}",
            [after["ipchannel"]],
            [after["multiprocess"]],
            "independent of restarts",
            [common, *notes],
        ),
    ]


def bench_prometheus(cfg: Config, rd: str) -> list[Result]:
    return [*bench_inc(cfg, rd), *bench_scrape(cfg, rd)]


SCENARIOS = {"prometheus": bench_prometheus}
