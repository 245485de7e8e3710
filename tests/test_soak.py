"""A short soak: 8 processes requesting in a loop while the host is SIGKILLed every 200-500 ms.

The full one is ``python benchmarks/soak.py`` (60 s); both run ``benchmarks.soak.run_soak``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from benchmarks.soak import run_soak

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(120)
def test_short_soak_loses_nothing_and_never_has_two_hosts(runtime_dir: Path) -> None:
    report = run_soak(seconds=6, processes=8, threads=2, runtime_dir=str(runtime_dir))
    assert report.failures == []  # every request answered, by its own reply
    assert report.kills >= 5
    assert report.answered > 1000
    assert report.samples_with_a_host > 0  # the sampler does see the serving host...
    assert report.max_serving_at_once == 1  # ...and never two
    assert report.leftover_files == []
    assert report.growth == []
    assert len(report.failover.samples) >= report.kills  # the clients did fail over
