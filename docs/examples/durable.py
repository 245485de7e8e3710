"""A SharedDict that outlives every process that has it open: appendonly=True (docs: howto/shared-dict)."""
# ruff: noqa: INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import tempfile
from pathlib import Path

from ipchannel import SharedDict

hits = SharedDict("hits", appendonly=True)  # appendfsync="everysec"
hits.incr("requests")
hits.close()  # the last process has it open: the journal stays, in the runtime directory
hits = SharedDict("hits", appendonly=True)  # the next host replays it before it serves
print(hits["requests"])  # 1 (2 the second time you run this)
hits.close()

with tempfile.TemporaryDirectory() as disk:  # in production a directory on disk: "/var/lib/myapp"
    hits = SharedDict("hits", appendonly=True, appendfsync="always", journal_dir=disk)  # survives reboots
    hits.incr("requests")  # synced to the disk before it returns
    hits.close()
    print(sorted(path.name for path in (Path(disk) / "hits.journal").iterdir()))
