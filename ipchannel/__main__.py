"""``python -m ipchannel``: see ``_cli``."""

from __future__ import annotations

from ._cli.main import main

raise SystemExit(main())
