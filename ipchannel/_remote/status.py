"""What ``python -m ipchannel status --coordinator URL`` reports: the channels an engine elects, read-only."""

from __future__ import annotations

import time
from typing import Any

from .._errors import CoordinatorError
from .._seams.record import HostRecord
from .._url import parse_url
from .engine import ENGINES, EngineUnavailable

__all__ = ["coordinator_status"]


def coordinator_status(url_text: str, name: str | None = None) -> list[dict[str, Any]]:
    """Return the channels a coordinator engine has a host for (only ``name``, if given), read-only.

    :raises CoordinatorError: the URL is bad, its client library missing, or the engine does not answer.
    """
    url = parse_url(url_text)
    engine = ENGINES.acquire(url)
    try:
        found = engine.channels()
    except EngineUnavailable as exc:
        raise CoordinatorError(f"the coordinator {url.text} does not answer: {exc}") from exc
    finally:
        ENGINES.release(url, engine)
    channels: list[dict[str, Any]] = []
    for channel, snapshot, left in sorted(found):
        if (name is not None and channel != name) or snapshot.value is None:
            continue
        try:
            record = HostRecord.from_json(snapshot.value, snapshot.generation)
        except ValueError as exc:
            channels.append({"name": channel, "state": "stale", "problem": str(exc)})
            continue
        channels.append(
            {
                "name": channel,
                "state": "live",
                "pid": record.pid,
                "node": record.node,
                "address": record.sock,
                "generation": record.generation,
                "ttl_left": left,
                "elected_seconds_ago": round(time.time() - record.started, 3),
            }
        )
    return channels
