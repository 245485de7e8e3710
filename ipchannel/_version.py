"""The version of ipchannel, read by the build and by ``ipchannel.__version__``."""

from __future__ import annotations

__version__ = "0.1.0"
