"""The Django example under real Django: four ``manage.py process_items`` runs share the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import reap, wait_until

from ipchannel._backends import local_status

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_commands"
ITEMS = 100


@pytest.fixture
def runs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            reap(proc.pid, timeout=1)
            proc.communicate()  # reaps and closes its pipes


def _start(journal: Path, runtime_dir: Path, work_ms: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "process_items",
            "--items",
            str(ITEMS),
            "--journal",
            str(journal),
            "--work-ms",
            str(work_ms),
        ],
        cwd=EXAMPLE,
        env={**os.environ, "IPCHANNEL_DIR": str(runtime_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done(journal: Path) -> Counter[int]:
    if not journal.exists():
        return Counter()
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    return Counter(e["done"] for e in entries if "done" in e)


def _host_pid(runtime_dir: Path) -> int | None:
    """The live host's pid, read in this process: the runs may be done before a ``status`` process starts."""
    (channel,) = local_status(runtime_dir, "django-items")
    return channel.host_pid if channel.state == "live" else None


@pytest.mark.timeout(120)
def test_four_concurrent_runs_process_every_item_exactly_once(
    runs: list[subprocess.Popen[str]], runtime_dir: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "items.jsonl"
    runs.extend(_start(journal, runtime_dir, work_ms=5) for _ in range(4))
    outputs = [proc.communicate(timeout=60) for proc in runs]
    assert [proc.returncode for proc in runs] == [0] * 4, outputs
    done = _done(journal)
    assert sorted(done) == list(range(ITEMS))
    assert set(done.values()) == {1}  # none twice
    counts = [int(out.split("processed ")[1].split()[0]) for out, _ in outputs]
    assert sum(counts) == ITEMS
    assert sum(1 for c in counts if c) >= 2, counts  # the work was shared, not done by one run
    # nothing left but the lock files (the standby's too, if one stood by)
    assert {p.name for p in runtime_dir.iterdir()} - {".django-items.standby.lock"} == {"django-items.lock"}


@pytest.mark.timeout(120)
def test_killing_the_hosting_run_halfway_loses_and_repeats_nothing(
    runs: list[subprocess.Popen[str]], runtime_dir: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "items.jsonl"
    runs.extend(_start(journal, runtime_dir, work_ms=40) for _ in range(4))
    wait_until(lambda: sum(_done(journal).values()) >= ITEMS // 3, timeout=60, interval=0.01)
    host = wait_until(lambda: _host_pid(runtime_dir), timeout=10)
    assert sum(_done(journal).values()) < ITEMS, "too late: the work is already over"
    (victim,) = [proc for proc in runs if proc.pid == host]
    os.kill(host, signal.SIGKILL)
    victim.wait(10)
    survivors = [proc for proc in runs if proc is not victim]
    outputs = [proc.communicate(timeout=60) for proc in survivors]
    assert [proc.returncode for proc in survivors] == [0] * 3, outputs
    done = _done(journal)
    assert sorted(done) == list(range(ITEMS))  # every item, the killed run's claims included
    assert set(done.values()) == {1}  # none recorded twice
    leftovers = sorted(p.name for p in runtime_dir.iterdir() if not p.name.endswith(".lock"))
    assert leftovers == []
