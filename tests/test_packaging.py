"""What the package says of itself is what CI checks: classifiers, description."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_the_classifiers_claim_exactly_the_pythons_and_systems_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    (loop,) = re.findall(r"^for version in ([\d. ]+); do$", ci, re.MULTILINE)
    run = set(loop.split())
    classifiers = _project()["classifiers"]
    assert isinstance(classifiers, list)
    claimed = {
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert claimed == run
    systems = {c for c in classifiers if c.startswith("Operating System")}
    assert systems == {"Operating System :: POSIX :: Linux"}  # the only system CI runs on
    assert _project()["requires-python"] == f">={min(run, key=lambda v: tuple(map(int, v.split('.'))))}"


def test_the_description_does_not_say_one_machine_only() -> None:
    description = str(_project()["description"])
    assert "across machines" in description
