"""The plain-script example: chat.py in "terminals" (processes with piped stdin/stdout)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import reap

if TYPE_CHECKING:
    from collections.abc import Iterator

CHAT = Path(__file__).resolve().parent.parent / "examples" / "scripts" / "chat.py"


class Terminal:
    """One ``chat.py NAME`` with its stdin and stdout."""

    def __init__(self, name: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHAT), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.expect(f"you are {name}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def expect(self, line: str, timeout: float = 15.0) -> None:
        """Wait for a printed line starting with ``line``."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if got.startswith(line):
                return
            seen.append(got)
        pytest.fail(f"{line!r} not printed within {timeout} s; printed {seen}")

    def leave(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(15)

    def close(self) -> None:
        reap(self.process.pid, timeout=1)
        self.process.wait(5)
        self._reader.join(5)  # stdout is at EOF once the process is gone
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def terminals(runtime_dir: Path) -> Iterator[list[Terminal]]:  # noqa: ARG001 - sets IPCHANNEL_DIR
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.close()


@pytest.mark.timeout(90)
def test_two_terminals_chat_and_a_third_joins_after_the_host_is_killed(terminals: list[Terminal]) -> None:
    alice = Terminal("alice")
    terminals.append(alice)
    bob = Terminal("bob")
    terminals.append(bob)
    alice.expect("bob: (joined)")
    alice.say("hello bob")
    bob.expect("alice: hello bob")
    bob.say("hi alice")
    alice.expect("bob: hi alice")

    os.kill(alice.process.pid, signal.SIGKILL)  # alice started first: she hosts
    alice.process.wait(10)
    carol = Terminal("carol")
    terminals.append(carol)
    bob.expect("carol: (joined)")
    carol.say("anyone?")
    bob.expect("carol: anyone?")
    bob.say("me")
    carol.expect("bob: me")
    assert bob.leave() == 0
    carol.expect("bob: (left)")
    assert carol.leave() == 0
