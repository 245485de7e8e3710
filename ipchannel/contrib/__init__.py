"""Integrations with other frameworks, each behind an extra: ``ipchannel.contrib.django`` (``[django]``)."""

from __future__ import annotations
