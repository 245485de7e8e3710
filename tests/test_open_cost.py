"""Opening where nobody hosts yet costs no wait: the first SharedDict hosts at once."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pytest

import ipchannel

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(30)
def test_the_first_shared_dict_hosts_without_backing_off(
    runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ipchannel")
    start = time.monotonic()
    with ipchannel.SharedDict("first", runtime_dir=runtime_dir, timeout=10) as shared:
        shared["k"] = 1
        opened = time.monotonic() - start
        assert shared.channel.is_host
    retries = [r.getMessage() for r in caplog.records if "retrying after" in r.getMessage()]
    # nobody to wait for: no host recorded, no member alive; the election is won at the first try
    assert not retries, f"opened in {opened * 1000:.1f} ms after {len(retries)} backoff sleeps: {retries}"
