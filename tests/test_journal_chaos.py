"""A durable SharedDict under an operator's bad day: seeded random SIGKILLs and freezes of real processes.

Four plain scripts (``_journal_writer.py``) write to ``SharedDict(appendonly=True,
appendfsync="always")`` and report every write they sent and every one acknowledged.
In a seeded random order (``_ACTIONS``, about 14 s), the test SIGKILLs the host (most
often), another process, or every process at once; freezes the host or another process
with SIGSTOP for up to 1.5 s; freezes a process until the host cut it off and kills all
the others meanwhile (it wakes up alone, behind the journal); and restarts what it killed.
Then it stops them, opens the dict in a fresh process (which replays the journal) and
checks the whole history: every acknowledged write is there, nothing is counted twice,
nothing was made up, and no process got stuck in a call.

The seed is printed, and named in every failure: ``IPCHANNEL_CHAOS_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _journal_writer import TIMEOUT
from conftest import freeze, wait_until

from ipchannel._local.coordinator import read_record

if TYPE_CHECKING:
    from collections.abc import Iterator

_SCRIPT = Path(__file__).resolve().parent / "_journal_writer.py"
_NAME = "chaos"
_PROCESSES = 4
_MAX_FREEZE = 1.5
_LONG_FREEZE = 3.0  # of a replica, until the host cut it off (max_lag, 2 s)
#: the longest a call may take: a write waits up to TIMEOUT for the host, then as long for its
#: replica; freezes of its own process or of the host add to that
_LONGEST_CALL = 2 * TIMEOUT + _MAX_FREEZE + _LONG_FREEZE + 3.0


@dataclass
class _Incarnation:
    """One run of one writer: its process, its report, and how it ended."""

    proc: str
    process: subprocess.Popen[bytes]
    out: Path
    killed: bool = False  # SIGKILLed by the test: its last call may be unanswered
    lines: list[list[str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


class _Writers:
    """Starts the writer scripts; kills, freezes and restarts them; guarantees each is reaped."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runtime_dir = base / "run"
        self.journal_dir = base / "journal"
        self.stop = base / "stop"
        self.runs: list[_Incarnation] = []
        self.current: dict[str, _Incarnation] = {}
        self.done = Counter[str]()

    def start(self, proc: str) -> None:
        out = self.base / f"out-{proc}-{len(self.runs)}"
        args = [str(self.runtime_dir), str(self.journal_dir), proc, str(out), str(self.stop)]
        process = subprocess.Popen([sys.executable, str(_SCRIPT), "write", _NAME, *args])
        self.current[proc] = run = _Incarnation(proc, process, out)
        self.runs.append(run)

    def host(self) -> _Incarnation | None:
        record = read_record(self.runtime_dir / f"{_NAME}.host")
        return next((r for r in self.current.values() if record and r.pid == record.pid), None)

    def kill(self, run: _Incarnation) -> None:
        run.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
        run.process.wait(10)
        del self.current[run.proc]

    def freeze(self, run: _Incarnation, seconds: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(run.pid, signal.SIGCONT)

    def dump(self) -> dict[str, int]:
        out = self.base / "dump.json"
        args = [str(self.runtime_dir), str(self.journal_dir), str(out)]
        subprocess.run([sys.executable, str(_SCRIPT), "dump", _NAME, *args], check=True, timeout=30)
        content: dict[str, int] = json.loads(out.read_text())
        return content

    def close(self) -> None:
        for run in self.runs:
            if run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGKILL)  # also ends a stopped process
            run.process.wait(10)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[_Writers]:
    pool = _Writers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


#: what the chaos does, each this many times, in a seeded random order (about 14 s in all)
_ACTIONS = {"kill the host": 6, "kill everyone": 2, "kill another": 2, "outlive": 1, "freeze the host": 3,
            "freeze another": 3}  # fmt: skip


def _chaos(writers: _Writers, rng: random.Random) -> None:
    """Kill, freeze and restart (``_ACTIONS``); every process killed is restarted."""
    procs = [f"p{i}" for i in range(_PROCESSES)]
    for proc in procs:
        writers.start(proc)
    actions = [action for action, times in _ACTIONS.items() for _ in range(times)]
    rng.shuffle(actions)
    for action in actions:
        time.sleep(rng.uniform(0.15, 0.6))
        host = writers.host() or wait_until(writers.host, timeout=15)
        others = [run for run in writers.current.values() if run is not host]
        writers.done[action] += 1
        if action == "kill the host":
            writers.kill(host)
        elif action == "kill everyone":
            for run in list(writers.current.values()):
                writers.kill(run)
        elif action == "kill another":
            writers.kill(rng.choice(others))
        elif action == "outlive":
            _outlive(writers, rng.choice(others), rng)
        else:
            writers.freeze(
                host if action == "freeze the host" else rng.choice(others), rng.uniform(0.1, _MAX_FREEZE)
            )
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.3))  # the survivors elect a host before the dead come back
        for proc in procs:
            if proc not in writers.current:
                writers.start(proc)


def _outlive(writers: _Writers, stale: _Incarnation, rng: random.Random) -> None:
    """Freeze ``stale`` until the host cut it off (``max_lag``, 2 s), then kill every other process.

    It wakes up as the only survivor with a replica behind the journal, and hosts.
    """
    freeze(stale.pid)
    try:
        time.sleep(rng.uniform(2.3, _LONG_FREEZE))
        for run in list(writers.current.values()):
            if run is not stale:
                writers.kill(run)
    finally:
        os.kill(stale.pid, signal.SIGCONT)


def _finish(writers: _Writers) -> list[str]:
    """Stop every writer; return what is wrong with how they ended (a process stuck in a call)."""
    writers.stop.touch()
    problems = []
    for run in writers.current.values():
        try:
            code = run.process.wait(_LONGEST_CALL + 5)
        except subprocess.TimeoutExpired:
            problems.append(f"{run.proc} (pid {run.pid}) did not stop within {_LONGEST_CALL + 5:.0f} s")
            continue
        if code != 0:
            problems.append(f"{run.proc} (pid {run.pid}) exited with {code}")
    return problems


def _read(run: _Incarnation) -> list[str]:
    """Parse ``run``'s report; return what is wrong with its calls (unanswered, or too slow)."""
    text = run.out.read_text() if run.out.exists() else ""
    run.lines = [line.split(" ") for line in text.splitlines()]
    problems, pending = [], None
    for line in run.lines:
        stamp, event, what = float(line[0]), line[2], line[3]
        if event == "try":
            if pending is not None:
                problems.append(f"pid {run.pid}: {pending[1]} got no answer before the next call")
            pending = (stamp, what)
            continue
        if pending is None or pending[1] != what:
            problems.append(f"pid {run.pid}: {event} {what} answers no call")
        elif stamp - pending[0] > _LONGEST_CALL:
            problems.append(f"pid {run.pid}: {what} took {stamp - pending[0]:.1f} s")
        pending = None
    if pending is not None and not run.killed:
        problems.append(f"pid {run.pid}: {pending[1]} got no answer, and the process was not killed")
    return problems


def _check_history(runs: list[_Incarnation], final: dict[str, int]) -> list[str]:
    """Return what the final state contradicts in what the writers were told."""
    problems = []
    sent: dict[str, int] = {}  # every key a writer tried to set, with the value
    acknowledged_sets: dict[str, int] = {}
    incr_tries, incr_acks = 0, []
    for run in runs:
        for line in run.lines:
            event, what = line[2], line[3]
            if what == "incr":
                incr_tries += event == "try"
                if event == "ack":
                    incr_acks.append(int(line[4]))
            elif what.startswith("set:"):
                key = what[4:]
                sent[key] = int(key.rsplit("-", 1)[1])
                if event == "ack":
                    acknowledged_sets[key] = int(line[4])
    lost = {key: value for key, value in acknowledged_sets.items() if final.get(key) != value}
    if lost:
        problems.append(f"{len(lost)} acknowledged sets lost or changed, e.g. {sorted(lost.items())[:5]}")
    made_up = {key: value for key, value in final.items() if key != "n" and sent.get(key) != value}
    if made_up:
        problems.append(f"{len(made_up)} keys nobody set that way, e.g. {sorted(made_up.items())[:5]}")
    twice = [value for value, count in Counter(incr_acks).items() if count > 1]
    if twice:
        problems.append(f"incr returned the same value to two calls: {sorted(twice)[:10]}")
    n = final.get("n", 0)
    if not len(incr_acks) <= n <= incr_tries:
        problems.append(f"n is {n}: {len(incr_acks)} incr acknowledged, {incr_tries} sent")
    if incr_acks and max(incr_acks) > n:
        problems.append(f"an incr returned {max(incr_acks)}, above the final n {n}")
    return problems


@pytest.mark.timeout(120)
def test_random_kills_and_freezes_lose_no_acknowledged_write_and_count_none_twice(
    writers: _Writers,
) -> None:
    seed = int(os.environ.get("IPCHANNEL_CHAOS_SEED") or random.randrange(2**32))  # noqa: S311 - not secret
    print(f"IPCHANNEL_CHAOS_SEED={seed}; reports in {writers.base}")  # shown by pytest on failure
    _chaos(writers, random.Random(seed))  # noqa: S311 - a replayable sequence, not a secret
    problems = _finish(writers)
    for run in writers.runs:
        problems += _read(run)
    final = writers.dump()
    problems += _check_history(writers.runs, final)
    acks = sum(1 for run in writers.runs for line in run.lines if line[2] == "ack")
    said = "".join(log.read_text() for log in writers.base.glob("*.log"))
    if "behind this process's replica" in said:  # every host journals: the journal is never behind
        problems.append("a host found the journal behind its replica")
    files = sorted(path.name for path in (writers.journal_dir / f"{_NAME}.journal").iterdir())
    print(f"{len(writers.runs)} runs, {acks} calls acknowledged, n={final['n']}")
    print(f"journal files: {files}; tails cut: {said.count('dropped every record')}")
    assert problems == [], f"seed {seed}: {problems}"
    assert writers.done == Counter(_ACTIONS)
    assert acks > 100, f"seed {seed}: only {acks} calls acknowledged"
    assert any(name.startswith("snapshot.") for name in files), f"seed {seed}: never compacted: {files}"
    wait_until(lambda: all(run.process.poll() is not None for run in writers.runs))
