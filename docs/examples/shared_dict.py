"""A dict every process shares, with local reads (docs: howto/shared-dict)."""
# ruff: noqa: INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

from ipchannel import SharedDict

stats = SharedDict("stats")  # in every worker
print(stats.incr("requests"))  # atomic across processes; returns the new value
stats["maintenance"] = True  # every worker sees it
print(stats.get("maintenance"))  # a local read: no socket, no lock
stats.close()
