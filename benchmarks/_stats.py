"""Samples, summaries and the tables the benchmarks print."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    """Timings of one thing, in nanoseconds (or any unit, with ``unit`` saying which)."""

    name: str
    samples: list[float] = field(default_factory=list)
    unit: str = "us"

    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def p99(self) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def scaled(self, value: float) -> float:
        return (
            value
            / {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9, "req/s": 1.0, "MB": 1.0, "count": 1.0}[self.unit]
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "n": len(self.samples),
            "median": self.scaled(self.median()),
            "p99": self.scaled(self.p99()),
        }


@dataclass
class Result:
    """One scenario: our series, its baselines, the target, and free-form notes."""

    scenario: str
    ours: list[Series]
    baselines: list[Series]
    target: str
    notes: list[str] = field(default_factory=list)
    higher_is_better: bool = False

    def ratio(self, ours: Series) -> float | None:
        if not self.baselines or not self.baselines[0].samples or not ours.samples:
            return None
        return ours.median() / self.baselines[0].median()

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.target,
            "ours": [{**s.summary(), "ratio_to_baseline": self.ratio(s)} for s in self.ours],
            "baselines": [s.summary() for s in self.baselines],
            "notes": self.notes,
        }

    def table(self) -> str:
        rows = [("", "median", "p99", "N", "ratio")]
        for s in self.ours:
            ratio = self.ratio(s)
            rows.append(
                (
                    s.name,
                    _fmt(s.scaled(s.median()), s.unit),
                    _fmt(s.scaled(s.p99()), s.unit),
                    str(len(s.samples)),
                    "-" if ratio is None else f"{ratio:.2f}x",
                )
            )
        rows.extend(
            (
                f"baseline: {s.name}",
                _fmt(s.scaled(s.median()), s.unit),
                _fmt(s.scaled(s.p99()), s.unit),
                str(len(s.samples)),
                "1.00x",
            )
            for s in self.baselines
        )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"== {self.scenario}   (target: {self.target})"]
        lines.extend(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit in {"req/s", "count"}:
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
