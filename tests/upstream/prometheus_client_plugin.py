"""prometheus_client's multiprocess tests, run against ``ipchannel.contrib.prometheus``: a pytest plugin.

``tests/test_multiprocess.py`` of its sdist simulates several processes in one: each
``values.ValueClass = MultiProcessValue(lambda: pid)`` makes the values of one simulated
process, ``MultiProcessCollector(registry)`` reads every process's files, and
``mark_process_dead(pid)`` says one died. Here, for each test, the names the module imported
are swapped for ipchannel's side of the same thing, with one real SharedDict:

- ``MultiProcessValue(pid_of)``: ipchannel's value class (``_metricsvalue.value_class``) with a
  ``Pending`` of its own, sent as the worker ``sim PID``. When ``pid_of()`` changes (the tests'
  "fork"), it does what a fork does here: what the parent counted is sent as the parent's,
  and the child's values start at 0 (``Pending.after_fork``).
- ``MultiProcessCollector``: sends every simulated process's changes (a scrape), then shows
  ``_metricsexport.families`` of the dict; ``mark_process_dead``: the ``FORGET`` a scrape does.

What this checks is the aggregation (value class, host-side ops, export), not the sender
thread, the scrape protocol or real processes (``tests/test_prometheus*.py``). Tests of
multiprocess mode's files, environment variable and warnings do not apply: they are skipped,
each with its reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import pytest

from ipchannel import SharedDict
from ipchannel.contrib._metricsexport import families
from ipchannel.contrib._metricsops import FORGET, PUSH
from ipchannel.contrib._metricsvalue import Pending, SharedValueBase, value_class

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

_NO_FILES = "reads or writes multiprocess mode's .db files; ipchannel keeps none"
NOT_APPLICABLE = {
    "TestMultiProcessDeprecation": "multiprocess mode's deprecated lowercase environment variable",
    "test_initialization_detects_pid_change": _NO_FILES,
    "test_merge_no_accumulate": _NO_FILES + " (MultiProcessCollector.merge(files))",
    "test_missing_gauge_file_during_merge": _NO_FILES + " (MultiProcessCollector.merge(files))",
    "test_remove_clear_warning": "multiprocess mode's warning that remove()/clear() are not implemented",
    "TestMmapedDict": "multiprocess mode's mmap file format",
    "TestUnsetEnv": "MultiProcessCollector's check of PROMETHEUS_MULTIPROC_DIR",
}
_names = itertools.count()


class _Process:
    """One simulated process: its pid now, and the values it counted (``Pending``) not sent yet."""

    def __init__(self, simulation: _Simulation, pid_of: Callable[[], int]) -> None:
        self.simulation, self.pid_of, self.pid = simulation, pid_of, pid_of()
        self.pending = Pending(lambda: None)

    def check(self) -> None:
        """A new pid: fork as ipchannel does, the parent's part sent as the parent's, the child's at 0."""
        pid = self.pid_of()
        if pid != self.pid:
            self.simulation.send(self)
            self.pending.after_fork()
            self.pid = pid


class _Simulation:
    """The shared dict of one test, and the simulated processes writing to it."""

    def __init__(self, runtime_dir: str) -> None:
        self.shared = SharedDict(f"upstream-{next(_names)}", runtime_dir=runtime_dir)
        self._numbers = itertools.count(1)  # of the pushes (each worker's grow, as in _Sharing)
        self.processes: list[_Process] = []

    def value_class(self, pid_of: Callable[[], int] = os.getpid) -> type[SharedValueBase]:
        process = _Process(self, pid_of)
        self.processes.append(process)
        base = value_class(process.pending)

        class Value(base):  # type: ignore[valid-type,misc] # a class made at run time
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                process.check()
                super().__init__(*args, **kwargs)

            def inc(self, amount: float) -> None:
                process.check()
                super().inc(amount)

            def set(self, value: float, timestamp: float | None = None) -> None:
                process.check()
                super().set(value, timestamp)

            def get(self) -> float:
                process.check()
                return float(super().get())

        return Value

    def send(self, process: _Process) -> None:
        """What ``_Sharing.send`` sends, as the worker ``sim PID``."""
        metas, changes, removed = process.pending.take()
        counts = [[key, counted] for key, counted, _gauge, _at in changes if counted is not None]
        gauges = [[key, gauge, at] for key, _counted, gauge, at in changes if gauge is not None]
        number = next(self._numbers)
        self.shared.perform(
            PUSH, f"sim {process.pid}", process.pid, number, 0, metas, counts, gauges, [], removed
        )

    def collect(self) -> list[Metric]:
        for process in self.processes:
            process.check()
            self.send(process)
        return list(families(self.shared.copy()).values())

    def dead(self, pid: int) -> None:
        self.shared.perform(FORGET, [f"sim {pid}"])


class _Collector:
    """Stands for ``MultiProcessCollector``: a scrape of the simulation."""

    def __init__(self, simulation: _Simulation, registry: CollectorRegistry | None) -> None:
        self.simulation = simulation
        if registry is not None:
            registry.register(self)  # a collector by its collect()

    def collect(self) -> list[Metric]:
        return self.simulation.collect()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip what does not apply, saying why."""
    for item in items:
        cls = getattr(item, "cls", None)
        for name in (item.name, cls.__name__ if cls is not None else ""):
            if name in NOT_APPLICABLE:
                reason = f"does not apply to ipchannel: {NOT_APPLICABLE[name]}"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _ipchannel_in_place_of_files(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """For each test of test_multiprocess: one simulation, and its names in place of multiprocess mode's."""
    module = request.module
    if not module.__name__.endswith("test_multiprocess"):
        yield
        return
    runtime_dir = tempfile.mkdtemp(prefix="ipc-up-", dir="/tmp")
    simulation = _Simulation(runtime_dir)
    monkeypatch.setattr(module, "MultiProcessValue", simulation.value_class)
    monkeypatch.setattr(
        module,
        "MultiProcessCollector",
        lambda registry=None, path=None: _Collector(simulation, registry),  # noqa: ARG005 - no files
    )
    monkeypatch.setattr(module, "mark_process_dead", lambda pid, path=None: simulation.dead(pid))  # noqa: ARG005
    try:
        yield
    finally:
        simulation.shared.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)
