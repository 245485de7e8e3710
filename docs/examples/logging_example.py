"""ipchannel's log turned on: elections, hand-overs at INFO (docs: reference/logging, troubleshooting)."""
# ruff: noqa: INP001 - a documentation example, shown from line 6 on

from __future__ import annotations

import logging
import sys

from ipchannel import Channel

logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("ipchannel").setLevel(logging.INFO)

channel = Channel("logged", lambda _: None)
channel.join(timeout=5)  # this process is the only one: it is elected
channel.close()  # and hands hosting over
