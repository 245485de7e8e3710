"""The command line, run as users run it: ``python -m ipchannel``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import ipchannel

if TYPE_CHECKING:
    from conftest import Peers


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
    assert "status" in result.stdout
    assert _run("demo", "--help").returncode == 0
    assert _run("status", "--help").returncode == 0


def test_help_names_every_environment_variable_the_library_reads(runtime_dir: Path) -> None:
    source = "\n".join(p.read_text() for p in Path(ipchannel.__file__).parent.rglob("*.py"))
    read = set(re.findall(r"\"(IPCHANNEL_[A-Z_]+)\"", source))
    assert {"IPCHANNEL_DIR", "IPCHANNEL_COORDINATOR"} <= read
    top = _run("--help").stdout
    assert {name for name in read if name not in top} == set()
    # and status says which directory it would read, here
    assert str(runtime_dir) in " ".join(_run("status", "--help").stdout.split())


def test_bad_usage_exits_two() -> None:
    assert _run().returncode == 2
    assert _run("nonsense").returncode == 2
    missing = _run("status", "--dir", "/nonexistent/ipchannel")
    assert missing.returncode == 2
    assert "--dir /nonexistent/ipchannel does not exist" in missing.stderr


def test_version_and_the_usage_line_name_the_command_typed() -> None:
    from ipchannel import __version__  # noqa: PLC0415

    result = _run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"python -m ipchannel {__version__}")
    assert _run("status", "--help").stdout.startswith("usage: python -m ipchannel status")
    script = Path(sys.executable).with_name("ipchannel")  # the console script pip installed
    if not script.exists():
        pytest.skip("the ipchannel console script is not installed beside this Python")
    result = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr.split(" [")[0]) == (2, "usage: ipchannel")


def _status(runtime_dir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = _run("status", "--json", "--dir", str(runtime_dir), *args)
    assert result.stderr == ""
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["runtime_dir"] == str(runtime_dir)
    return result.returncode, document


def test_status_shows_the_live_host_then_flags_its_stale_record(peers: Peers, runtime_dir: Path) -> None:
    assert _status(runtime_dir) == (0, {"runtime_dir": str(runtime_dir), "channels": []})
    (host,) = peers.start(1, name="counter")
    host.call("connect")
    code, document = _status(runtime_dir, "counter")
    assert code == 0
    (channel,) = document["channels"]
    assert channel["state"] == "live"
    assert channel["host_pid"] == host.pid
    assert channel["host_alive"] is True
    assert channel["generation"] == 1
    assert channel["socket"] == str(runtime_dir / "counter.sock")
    assert "python" in channel["host_command"]
    assert 0 <= channel["uptime_seconds"] < 60
    table = _run("status", "--dir", str(runtime_dir))
    assert table.returncode == 0
    assert f"counter: live, host pid {host.pid}, generation 1" in table.stdout

    host.kill()  # nobody takes over: the record is left behind, naming a dead host
    code, document = _status(runtime_dir, "counter")
    assert code == 1
    (channel,) = document["channels"]
    assert channel["state"] == "stale"
    assert channel["host_alive"] is False
    assert f"host pid {host.pid} is gone" in channel["problem"]
    assert channel["uptime_seconds"] is None  # a dead host is not up
    assert 0 <= channel["elected_seconds_ago"] < 60
    listing = _run("status", "--dir", str(runtime_dir)).stdout
    assert "STALE" in listing
    assert "gone (elected " in listing
    assert " up " not in listing
    assert _status(runtime_dir)[0] == 0  # listing everything succeeds, stale or not


def test_status_of_an_unknown_channel_exits_one_and_a_bad_name_two(runtime_dir: Path) -> None:
    code, document = _status(runtime_dir, "nothing-here")
    assert code == 1
    assert document["channels"][0]["state"] == "unknown"  # never used here: not a channel without a host
    (runtime_dir / "idle.lock").touch()  # used before, nobody hosts it now
    assert _status(runtime_dir, "idle")[1]["channels"][0]["state"] == "no host"
    table = _run("status", "--dir", str(runtime_dir), "nothing-here")
    assert "nothing-here: unknown (no channel of this name here)" in table.stdout
    result = _run("status", "--dir", str(runtime_dir), "../etc")
    assert result.returncode == 2
    assert "invalid channel name" in result.stderr


def test_status_refuses_a_runtime_dir_others_can_write(runtime_dir: Path) -> None:
    os.chmod(runtime_dir, 0o777)  # noqa: S103 - the point of the test
    result = _run("status", "--dir", str(runtime_dir))
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr
    assert "chmod" not in result.stderr  # never advice to open or close a directory others may share


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
