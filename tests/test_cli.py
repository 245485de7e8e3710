"""The command line, run as users run it: ``python -m ipchannel``."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ipchannel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_exits_zero() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert _run("demo", "--help").returncode == 0


def test_bad_usage_exits_two() -> None:
    assert _run().returncode == 2
    assert _run("nonsense").returncode == 2


def test_demo_needs_more_workers_than_kills() -> None:
    result = _run("demo", "--workers", "2", "--kills", "2")
    assert result.returncode == 1
    assert "needs more workers" in result.stderr


@pytest.mark.timeout(60)
def test_demo_shows_a_takeover() -> None:
    result = _run("demo", "--workers", "3", "--kills", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "elected host (generation 1)" in out
    assert "SIGKILL host pid" in out
    assert "elected host (generation 2" in out
    assert "from the NEW host" in out
    assert result.stderr == ""


def test_importing_the_library_does_not_import_the_cli() -> None:
    code = "import sys, ipchannel; sys.exit('argparse' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0
