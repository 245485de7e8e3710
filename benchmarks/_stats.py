"""Samples, summaries and the tables the benchmarks print."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

#: unit -> how many of the samples' unit (nanoseconds for times) make one
_SCALE = {
    "ns": 1.0,
    "us": 1e3,
    "ms": 1e6,
    "s": 1e9,
    "req/s": 1.0,
    "ops/s": 1.0,
    "wake-ups/s": 1.0,
    "MB": 1.0,
    "kB": 1e3,  # samples in bytes
    "count": 1.0,
}
HOLDS = 0.25  # a ratio "holds" over runs when every run is within this fraction of the runs' median


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
        return value / _SCALE[self.unit]

    def summary(self, *, samples: bool = False) -> dict[str, Any]:
        """Its summary in its unit; ``samples``: every sample too (what a distribution plot needs)."""
        summary = {
            "name": self.name,
            "unit": self.unit,
            "n": len(self.samples),
            "median": self.scaled(self.median()),
            "p99": self.scaled(self.p99()),
        }
        if samples:
            summary["samples"] = [self.scaled(sample) for sample in self.samples]
        return summary


@dataclass
class Result:
    """One scenario: our series, its baselines, the target, and free-form notes.

    Each of our series is compared with the first baseline (its ratio); a later baseline's row
    shows the first series' ratio to it. ``show_ratio=False`` where a ratio means nothing (a
    baseline of zero wake-ups).
    """

    scenario: str
    ours: list[Series]
    baselines: list[Series]
    target: str
    notes: list[str] = field(default_factory=list)
    higher_is_better: bool = False
    show_ratio: bool = True

    def ratio(self, ours: Series, baseline: Series | None = None) -> float | None:
        """``ours``' median over ``baseline``'s (the first baseline by default); None without samples."""
        if baseline is None:
            baseline = self.baselines[0] if self.baselines else None
        if not self.show_ratio or baseline is None or not baseline.samples or not ours.samples:
            return None
        return ours.median() / baseline.median() if baseline.median() else None

    def ratios(self) -> list[tuple[Series, Series, float]]:
        """Every (ours, baseline, ratio) this result shows: each series to the first baseline, the first
        series to every later one."""
        pairs = [(s, self.baselines[0]) for s in self.ours] if self.baselines else []
        if self.ours:
            pairs.extend((self.ours[0], b) for b in self.baselines[1:])
        return [(s, b, r) for s, b in pairs if (r := self.ratio(s, b)) is not None]

    def to_json(self) -> dict[str, Any]:
        """Its JSON; a failover's samples too, for the plot of their distribution (``plots``)."""
        keep = "failover" in self.scenario
        return {
            "scenario": self.scenario,
            "target": self.target,
            "higher_is_better": self.higher_is_better,
            "ours": [{**s.summary(samples=keep), "ratio_to_baseline": self.ratio(s)} for s in self.ours],
            "baselines": [
                {
                    **b.summary(samples=keep),
                    "ratio_of_first_series": self.ratio(self.ours[0], b) if self.ours else None,
                }
                for b in self.baselines
            ],
            "notes": self.notes,
        }

    def table(self) -> str:
        rows = [("", "median", "p99", "N", "ratio")]
        rows.extend(self._row(s, s.name, self.ratio(s)) for s in self.ours)
        for i, b in enumerate(self.baselines):
            later = self.ratio(self.ours[0], b) if i and self.ours else None
            rows.append(self._row(b, f"baseline: {b.name}", 1.0 if i == 0 and self.show_ratio else later))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"== {self.scenario}   (target: {self.target})"]
        lines.extend(_line(row, widths) for row in rows)
        if len(self.baselines) > 1 and self.ours and self.show_ratio:
            lines.append("  (a later baseline's ratio: the first row's median over that baseline's)")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    @staticmethod
    def _row(s: Series, label: str, ratio: float | None) -> tuple[str, str, str, str, str]:
        return (
            label,
            _fmt(s.scaled(s.median()), s.unit),
            _fmt(s.scaled(s.p99()), s.unit),
            str(len(s.samples)),
            _fmt_ratio(ratio),
        )


def _line(row: tuple[str, ...], widths: list[int], left: int = 1) -> str:
    """One table row: the first ``left`` columns (names) flush left, the numbers flush right."""
    return "  " + "  ".join(
        c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit in {"req/s", "ops/s", "count"}:
        return f"{value:,.0f} {unit}"
    if unit == "wake-ups/s":
        return f"{value:,.1f} {unit}"
    return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


def _fmt_ratio(ratio: float | None) -> str:
    """``1.23x``; two significant digits below 0.1 (a local read beside a network round trip)."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def ratios_over_runs(runs: list[list[Result]]) -> list[dict[str, Any]]:
    """Each ratio shown in any run: its value in every run (None where absent), spread, and whether it holds.

    It holds when every run's ratio is within ±25 % of the median over the runs.
    """
    keys: dict[tuple[str, str, str], list[float | None]] = {}
    for k, results in enumerate(runs):
        for result in results:
            for s, b, r in result.ratios():
                keys.setdefault((result.scenario, s.name, b.name), [None] * len(runs))[k] = r
    rows = []
    for (scenario, ours, baseline), values in keys.items():
        present = [v for v in values if v is not None]
        median = statistics.median(present)
        holds = len(present) == len(runs) and all(abs(v / median - 1) <= HOLDS for v in present)
        rows.append(
            {
                "scenario": scenario,
                "ours": ours,
                "baseline": baseline,
                "ratios": values,
                "min": min(present),
                "max": max(present),
                "median": median,
                "holds": holds,
            }
        )
    return rows


def ratios_table(rows: list[dict[str, Any]], runs: int) -> str:
    """The summary printed after the tables of ``--runs N``."""
    head = ("result", "vs baseline", *(f"run {k + 1}" for k in range(runs)), "min-max", "median", "holds")
    table = [head]
    table.extend(
        (
            _short(f"{row['scenario']}: {row['ours']}", 70),
            _short(row["baseline"], 40),
            *(_fmt_ratio(v) for v in row["ratios"]),
            f"{_fmt_ratio(row['min'])[:-1]}-{_fmt_ratio(row['max'])}",
            _fmt_ratio(row["median"]),
            "yes" if row["holds"] else "no",
        )
        for row in rows
    )
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    held = sum(r["holds"] for r in rows)
    title = f"== ratios over {runs} runs   (holds: every run within ±{HOLDS:.0%} of the median ratio;"
    lines = [f"{title} {held} of {len(rows)} hold)"]
    lines.extend(_line(r, widths, left=2) for r in table)
    return "\n".join(lines)
