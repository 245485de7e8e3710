"""``manage.py process_items``: run it several times at once; each item is processed exactly once.

The runs coordinate through one ``RequestChannel``: whichever run was elected host
hands out items and records each claim and each result in a journal file (one
JSON line each, appended before it answers). The journal is what survives: a new
host, elected when the old one dies, reads it back, so

- an item finished before the death is never handed out again;
- an item claimed by a run that is still alive stays with that run;
- an item claimed by a run that died (the old host included) is handed out again.

A request is delivered at least once; both operations are idempotent, so a
request sent again after a failover changes nothing.

    python manage.py process_items --items 100 --journal /tmp/items.jsonl   # in four terminals
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ipchannel import ChannelError, RequestChannel


class _Journal:
    """The host's view of the work: loaded from the journal file once per term, appended to as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claimed: dict[int, int] = {}  # item -> pid of the run working on it
        self.done: dict[int, int] = {}  # item -> pid of the run that finished it
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short when a host was killed mid-write
                if "claim" in entry:
                    self.claimed[entry["claim"]] = entry["pid"]
                elif "done" in entry:
                    self.done[entry["done"]] = entry["pid"]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, entry: dict[str, Any]) -> None:
        os.write(self._fd, json.dumps(entry).encode() + b"\n")  # one write: O_APPEND keeps lines whole


_lock = threading.Lock()
_journal: _Journal | None = None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def on_request(message: dict[str, Any]) -> dict[str, Any]:
    """Hand out work and record results; runs only in the run that hosts the channel."""
    global _journal  # noqa: PLW0603 - the host's state, loaded on its first request
    with _lock:
        if _journal is None or str(_journal.path) != message["journal"]:
            _journal = _Journal(Path(message["journal"]))
        journal, pid = _journal, message["pid"]
        if message["op"] == "next":
            return _next(journal, pid, message["total"])
        if message["op"] == "done":
            item = message["item"]
            if item not in journal.done:
                journal.append({"done": item, "pid": pid, "result": message["result"]})
                journal.done[item] = pid
            return {"recorded_for": journal.done[item]}
    raise ValueError(f"unknown op {message['op']!r}")


def _next(journal: _Journal, pid: int, total: int) -> dict[str, Any]:
    mine = [i for i, owner in journal.claimed.items() if owner == pid and i not in journal.done]
    if mine:
        return {"item": mine[0]}  # asked again (a resend after failover): the same answer
    waiting = False
    for item in range(total):
        if item in journal.done:
            continue
        owner = journal.claimed.get(item)
        if owner is not None and owner != pid and _alive(owner):
            waiting = True  # someone alive is on it
            continue
        journal.append({"claim": item, "pid": pid})
        journal.claimed[item] = pid
        return {"item": item}
    return {"wait": True} if waiting else {"finished": True}


class Command(BaseCommand):  # type: ignore[misc] # Django has no type information
    """``manage.py process_items --items N --journal PATH``."""

    help = "Process items 0..N-1 together with every other concurrent run: each item exactly once."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare --items, --journal and --work-ms."""
        parser.add_argument("--items", type=int, default=100, help="how many items (default 100)")
        parser.add_argument("--journal", required=True, help="the shared journal file (JSON lines)")
        parser.add_argument("--work-ms", type=float, default=20.0, help="pretend work per item, in ms")

    def handle(self, *_args: Any, **options: Any) -> None:
        """Take items from the host until none is left, process each, report it done."""
        if options["items"] < 0:
            raise CommandError("--items must be >= 0")
        journal = str(Path(options["journal"]).resolve())
        ask = {"journal": journal, "pid": os.getpid(), "total": options["items"]}
        processed = 0
        with RequestChannel("django-items", on_request) as channel:
            try:
                while True:
                    answer = channel.request({**ask, "op": "next"}, timeout=30)
                    if answer.get("finished"):
                        break
                    if answer.get("wait"):
                        time.sleep(0.01)  # the last items are with other live runs
                        continue
                    item = answer["item"]
                    time.sleep(options["work_ms"] / 1000)  # the work
                    result = item * item
                    reply = channel.request({**ask, "op": "done", "item": item, "result": result}, timeout=30)
                    processed += reply["recorded_for"] == os.getpid()
            except ChannelError as exc:
                raise CommandError(f"lost the coordination channel: {exc}") from exc
        self.stdout.write(f"pid {os.getpid()} processed {processed} items")
