"""ipchannel.contrib.prometheus: prometheus_client metrics summed over real worker processes.

Each worker is a spawned process (``_metrics_peers``) that enables sharing and creates the same
metrics, as gunicorn workers importing one module do. ``flush_interval`` is long (60 s) unless a
test is about it, so only a scrape can bring a count across: a total that is right proves the
scrape collected every live worker's pending changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import _metrics_peers
import prometheus_client
import pytest
from conftest import Peer, Workers, freeze, wait_until

from ipchannel.contrib import _metricsops

SLOW = {"flush_interval": 60.0}


def _scrape(peer: Peer) -> dict[str, float]:
    samples: dict[str, float] = peer.call("scrape", timeout=20)["samples"]
    return samples


def _total(samples: dict[str, float], path: str = "/") -> float:
    return samples.get(f"requests_total{{path={path}}}", 0.0)


@pytest.mark.timeout(60)
def test_a_scrape_in_any_worker_shows_every_worker_s_counts_even_those_not_sent_yet(workers: Workers) -> None:
    peers = workers.start(3, **SLOW)
    for amount, peer in zip((5, 7, 11), peers, strict=True):
        peer.call("count", n=amount, seconds=0.5, size=3)
    for peer in peers:  # nothing was sent (flush_interval 60 s): each scrape asks every worker first
        samples = _scrape(peer)
        assert _total(samples) == 23
        assert samples["latency_seconds_count{}"] == 23
        assert samples["latency_seconds_bucket{le=0.1}"] == 0
        assert samples["latency_seconds_bucket{le=1.0}"] == 23
        assert samples["latency_seconds_bucket{le=+Inf}"] == 23
        assert samples["latency_seconds_sum{}"] == pytest.approx(11.5)
        assert samples["payload_bytes_count{}"] == 23
        assert samples["payload_bytes_sum{}"] == 69
    peers[1].call("count", n=1)
    assert _total(_scrape(peers[0])) == 24  # a count right before the scrape is in it


@pytest.mark.timeout(60)
def test_the_wsgi_app_in_both_formats_and_the_django_view_serve_the_totals(workers: Workers) -> None:
    from prometheus_client.openmetrics.parser import (  # noqa: PLC0415
        text_string_to_metric_families as openmetrics_families,
    )

    first, second = workers.start(2, **SLOW)
    first.call("count", n=2)
    second.call("count", n=3)
    texts = first.call("views", timeout=20)["texts"]
    assert _total(_metrics_peers.parse(texts["wsgi"])) == 5
    assert _total(_metrics_peers.parse(texts["django"])) == 5
    counted = {
        (sample.name, sample.labels.get("path")): sample.value
        for family in openmetrics_families(texts["openmetrics"])  # type: ignore[no-untyped-call] # a valid OpenMetrics exposition
        for sample in family.samples
    }
    assert counted["requests_total", "/"] == 5


@pytest.mark.timeout(60)
def test_gauges_follow_their_mode_and_a_dead_worker_leaves_only_the_live_modes(workers: Workers) -> None:
    peers = workers.start(3, **SLOW)
    for value, peer in zip((1.0, 5.0, 3.0), peers, strict=True):
        peer.call("set", value=value)
    pids = [str(peer.pid) for peer in peers]
    samples = _scrape(peers[0])
    for mode in ("all", "liveall"):
        assert {pid: samples[f"g_{mode}{{pid={pid}}}"] for pid in pids} == dict(
            zip(pids, (1.0, 5.0, 3.0), strict=True)
        )
    for mode, expected in (("sum", 9.0), ("max", 5.0), ("min", 1.0), ("mostrecent", 3.0)):
        assert samples[f"g_{mode}{{}}"] == expected, mode
        assert samples[f"g_live{mode}{{}}"] == expected, mode

    dead = peers[1] if not peers[1].call("host")["is_host"] else peers[2]
    dead_value = 5.0 if dead is peers[1] else 3.0
    dead.kill()
    survivor = next(peer for peer in peers if peer.alive)
    samples = _scrape(survivor)
    live = [peer for peer in peers if peer.alive]
    live_values = {1.0, 5.0, 3.0} - {dead_value}
    assert f"g_liveall{{pid={dead.pid}}}" not in samples
    assert samples[f"g_all{{pid={dead.pid}}}"] == dead_value  # all: one series per process, dead or alive
    assert len([key for key in samples if key.startswith("g_liveall")]) == len(live)
    assert samples["g_sum{}"] == 9.0  # a dead worker's last value goes on counting ...
    assert samples["g_max{}"] == 5.0
    assert samples["g_min{}"] == 1.0
    assert samples["g_livesum{}"] == sum(live_values)  # ... except in the live modes
    assert samples["g_livemax{}"] == max(live_values)
    assert samples["g_livemin{}"] == min(live_values)


@pytest.mark.timeout(60)
def test_the_totals_outlive_the_hosting_worker_and_the_next_scrape_is_complete(workers: Workers) -> None:
    peers = workers.start(3, **SLOW)
    for peer in peers:
        peer.call("count", n=10)
    host = workers.host()
    others = [peer for peer in peers if peer is not host]
    assert _total(_scrape(others[0])) == 30  # sent, since a scrape asked
    host.kill()
    others[1].call("count", n=4)
    samples = _scrape(others[0])  # through the next host, elected meanwhile
    assert _total(samples) == 34
    assert samples["latency_seconds_count{}"] == 34


@pytest.mark.timeout(60)
def test_a_worker_sends_within_flush_interval_so_a_sigkill_loses_at_most_that(workers: Workers) -> None:
    counter, reader = workers.start(2, flush_interval=0.2)
    counter.call("count", n=25)
    wait_until(lambda: counter.call("sent")["sent"], timeout=10)  # by its sender, without any scrape
    counter.kill()
    assert _total(_scrape(reader)) == 25


@pytest.mark.timeout(60)
def test_a_worker_that_exits_sends_what_is_left_and_the_totals_outlive_every_worker(
    workers: Workers,
) -> None:
    first, second = workers.start(2, **SLOW)
    first.call("count", n=7, path="/a")
    second.call("count", n=3, path="/b")
    first.exit()  # as gunicorn's max_requests recycles a worker: nothing sent before, nothing lost
    second.exit()  # the last one: only the journal (appendonly, the default here) holds the totals
    (newcomer,) = workers.start(1, **SLOW)
    samples = _scrape(newcomer)
    assert (_total(samples, "/a"), _total(samples, "/b")) == (7, 3)


@pytest.mark.timeout(60)
def test_a_forked_child_counts_from_zero_and_never_sends_its_parent_s_counts(workers: Workers) -> None:
    (parent,) = workers.start(1, **SLOW)
    parent.call("count", n=5)  # pending in the parent at fork time
    assert parent.call("fork_counts", n=3)["status"] == 0  # the child counts 3, exits, sends them
    samples = _scrape(parent)
    assert _total(samples) == 5
    assert _total(samples, "/child") == 3  # 8 in all, not 13: the parent's 5 once


@pytest.mark.timeout(60)
def test_a_frozen_worker_delays_a_scrape_by_max_lag_and_scrape_timeout_only(workers: Workers) -> None:
    frozen, *others = workers.start(3, flush_interval=60.0, scrape_timeout=0.5)
    if frozen.call("host")["is_host"]:  # freeze a worker, not the host (that is a failover)
        frozen, others = others[0], [frozen, others[1]]
    for peer in (frozen, *others):
        peer.call("count", n=2)
    freeze(frozen.pid)
    try:
        started = time.monotonic()
        samples = _scrape(others[0])
        assert time.monotonic() - started < 2.0 + 0.5 + 1.5  # max_lag + scrape_timeout + a margin
        assert _total(samples) == 4  # the frozen worker's 2 are not sent yet: counted later
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert wait_until(lambda: _total(_scrape(others[0])) == 6, timeout=10)


@pytest.mark.timeout(60)
def test_info_and_enum_show_what_the_worker_that_changed_them_last_set(workers: Workers) -> None:
    first, second = workers.start(2, **SLOW)
    first.call("info", labels={"version": "1"}, state="serving")
    samples = _scrape(second)  # second never set them: its defaults do not hide first's
    assert samples["build_info{version=1}"] == 1
    assert (samples["state{state=serving}"], samples["state{state=starting}"]) == (1, 0)
    first.call("info", labels={"version": "1"}, state="starting")
    assert _scrape(second)["state{state=starting}"] == 1
    second.call("info", labels={"version": "2"}, state="serving")
    samples = _scrape(first)
    assert "build_info{version=1}" not in samples
    assert samples["build_info{version=2}"] == 1
    assert (samples["state{state=serving}"], samples["state{state=starting}"]) == (1, 0)


@pytest.mark.timeout(60)
def test_remove_takes_a_series_out_of_the_shared_view(workers: Workers) -> None:
    first, second = workers.start(2, **SLOW)
    for value, peer in ((1.0, first), (2.0, second)):
        peer.call("count", n=3, path="/gone")
        peer.call("job", job="nightly", value=value)
    samples = _scrape(first)
    assert (_total(samples, "/gone"), samples["jobs{job=nightly}"]) == (6, 3.0)
    first.call("remove", path="/gone", job="nightly")  # as in one process: the series goes ...
    samples = _scrape(second)
    assert "requests_total{path=/gone}" not in samples
    assert samples["jobs{job=nightly}"] == 2.0  # ... and this worker's gauge value with it
    second.call("count", n=1, path="/gone")
    assert _total(_scrape(first), "/gone") == 1  # counted again from 0


# -- bad input, and no extra ----------------------------------------------------------------------


@pytest.mark.usefixtures("runtime_dir")
def test_bad_options_are_refused_naming_the_option_before_anything_changes() -> None:
    from ipchannel.contrib import prometheus  # noqa: PLC0415

    before = prometheus_client.values.ValueClass
    with pytest.raises(TypeError, match="flush_interval must be a number of seconds, not str"):
        prometheus.enable("m", flush_interval="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush_interval must be more than 0 seconds"):
        prometheus.enable("m", flush_interval=0)
    with pytest.raises(ValueError, match="scrape_timeout must be a finite number of seconds"):
        prometheus.enable("m", scrape_timeout=float("inf"))
    with pytest.raises(TypeError, match="unexpected keyword arguments: flush"):
        prometheus.enable("m", flush=1)
    with pytest.raises(TypeError, match="registry must be a prometheus_client CollectorRegistry"):
        prometheus.enable("m", registry=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="appendfsync applies only with appendonly=True"):
        prometheus.enable("m", appendonly=False, appendfsync="always")
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("early", "Made before enable()", registry=registry)
    with pytest.raises(RuntimeError, match=r"before the first metric is created.*early"):
        prometheus.enable("m", registry=registry)
    assert prometheus_client.values.ValueClass is before
    assert prometheus._sharing is None  # noqa: SLF001
    with pytest.raises(RuntimeError, match=r"call prometheus.enable\(\) before prometheus.start\(\)"):
        prometheus.start()


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.usefixtures("runtime_dir")
def test_enabled_twice_under_two_names_or_beside_multiprocess_mode_is_refused() -> None:
    result = _run(
        "from ipchannel.contrib import prometheus\n"
        "prometheus.enable('a'); prometheus.enable('a')\n"  # the same again: nothing to do
        "try:\n    prometheus.enable('b')\nexcept ValueError as exc:\n    print(exc)\n"
    )
    assert result.stdout.strip() == "prometheus sharing is enabled as 'a' already, not 'b'", result.stderr
    result = _run(
        "from ipchannel.contrib import prometheus\nprometheus.enable('a')",
        PROMETHEUS_MULTIPROC_DIR="/nonexistent",
    )
    assert "PROMETHEUS_MULTIPROC_DIR is set" in result.stderr
    assert "unset it to share the metrics through ipchannel" in result.stderr


def test_without_prometheus_client_the_import_error_names_the_pip_line() -> None:
    result = _run("import sys; sys.modules['prometheus_client'] = None\nimport ipchannel.contrib.prometheus")
    assert "pip install 'ipchannel[prometheus]'" in result.stderr


# -- the folding of gauges, on its own --------------------------------------------------------------


def test_a_dead_worker_s_gauge_is_folded_by_mode_and_dropped_by_the_live_modes() -> None:
    data: dict[str, Any] = {}
    for number, mode in enumerate(("sum", "livesum", "max", "mostrecent", "all"), start=1):
        key = _metricsops.series_key(f"g_{mode}", f"g_{mode}", {})
        _metricsops.PUSH.apply(
            data, "w1", 11, number, 0, [[f"g_{mode}", "gauge", "", mode]], [], [[key, 2.0, 10.0]], [], []
        )
        _metricsops.PUSH.apply(data, "w2", 12, number, 0, [], [], [[key, 5.0, 5.0]], [], [])
    _metricsops.FORGET.apply(data, ["w1"])
    _metricsops.FORGET.apply(data, ["w1"])  # forgotten twice (two scrapes at once): no change

    def samples(mode: str) -> list[tuple[float, str | None]]:
        values = data[f"g:{_metricsops.series_key(f'g_{mode}', f'g_{mode}', {})}"]
        return _metricsops.gauge_samples(mode, values)

    assert samples("sum") == [(7.0, None)]
    assert samples("livesum") == [(5.0, None)]
    assert samples("max") == [(5.0, None)]
    assert samples("mostrecent") == [(2.0, None)]  # set at 10.0, after w2's 5.0: it stays the newest
    assert sorted(samples("all")) == [(2.0, "11"), (5.0, "12")]
    assert "w:w1" not in data


def test_a_push_of_another_shape_is_refused_whole_in_the_host() -> None:
    from ipchannel._shareddict import ops  # noqa: PLC0415

    key = _metricsops.series_key("k", "k_total", {})
    good = ["metrics.push", "w", 1, 1, 0, [], [[key, 1]], [], [], []]
    assert ops.prepare(good) == good
    for bad in (good[:9], [*good[:6], [[key, "1"]], *good[7:]], [*good[:5], [["m"]], *good[6:]]):
        with pytest.raises(TypeError, match=r"not in the format of this ipchannel version|not a number"):
            ops.prepare(bad)
    with pytest.raises(TypeError, match="metrics forget"):
        ops.prepare(["metrics.forget", "w"])
