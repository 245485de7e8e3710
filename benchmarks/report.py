"""The documentation's table of a ``--json`` run: ``python -m benchmarks.report results.json``.

Prints reStructuredText: the machine and run, then one row per ratio the run showed, with our
p50 and the baseline's p50 as the lowest and highest over the runs, the ratio's range and
median, whether it held (every run within ±25 % of the median) and the scenario's target. The
page includes it as printed, so the table is the run's and nobody copies numbers by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_SCALE_LABEL = {"us": "µs", "ns": "ns", "ms": "ms", "s": "s"}


def _span(values: list[float], unit: str) -> str:
    low, high = min(values), max(values)
    label = _SCALE_LABEL.get(unit, unit)
    fmt = "{:,.0f}" if max(abs(low), abs(high)) >= 100 else "{:,.1f}" if high >= 10 else "{:,.2f}"
    if fmt.format(low) == fmt.format(high):
        return f"{fmt.format(low)} {label}"
    return f"{fmt.format(low)}-{fmt.format(high)} {label}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _p50s(results: list[dict[str, Any]], scenario: str, side: str, name: str) -> tuple[list[float], str]:
    values, unit = [], ""
    for result in results:
        if result["scenario"] != scenario:
            continue
        for series in result[side]:
            if series["name"] == name and series["n"]:
                values.append(series["median"])
                unit = series["unit"]
    return values, unit


def _without_baseline(
    results: list[dict[str, Any]],
) -> dict[tuple[str, str], tuple[list[float], list[float], str]]:
    """Each series of a scenario that has no baseline (or shows no ratio): its p50s and p99s over the runs."""
    found: dict[tuple[str, str], tuple[list[float], list[float], str]] = {}
    for result in results:
        if any(s.get("ratio_to_baseline") for s in result["ours"]):
            continue
        for series in [*result["ours"], *result["baselines"]]:
            if series["n"]:
                entry = found.setdefault((result["scenario"], series["name"]), ([], [], series["unit"]))
                entry[0].append(series["median"])
                entry[1].append(series["p99"])
    return found


def table(report: dict[str, Any]) -> str:
    """Return the reStructuredText of ``report`` (what ``--json`` wrote)."""
    results, rows = report["results"], report.get("ratios_over_runs") or []
    targets = {r["scenario"]: r["target"] for r in results}
    runs = report["runs"]
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 16 22 14 6 12",
        "",
        "   * - scenario: ipchannel",
        "     - ipchannel p50",
        "     - baseline, p50",
        "     - ratio (median)",
        "     - held",
        "     - target",
    ]
    for row in rows:
        ours, ours_unit = _p50s(results, row["scenario"], "ours", row["ours"])
        base, base_unit = _p50s(results, row["scenario"], "baselines", row["baseline"])
        low, high = _ratio(row["min"]), _ratio(row["max"])
        spread = low if low == high else f"{low[:-1]}-{high}"
        lines += [
            f"   * - {row['scenario']}: {row['ours']}",
            f"     - {_span(ours, ours_unit) if ours else '-'}",
            f"     - {row['baseline']}: {_span(base, base_unit) if base else '-'}",
            f"     - {spread} ({_ratio(row['median'])})",
            f"     - {'yes' if row['holds'] else 'no'}",
            f"     - {targets.get(row['scenario'], '')}",
        ]
    alone = _without_baseline(results)
    if alone:
        lines += [
            "",
            "Scenarios with no baseline (a count, a latency or a rate of ipchannel alone):",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 50 20 20 20",
            "",
            "   * - scenario: what",
            "     - p50",
            "     - p99",
            "     - target",
        ]
        for (scenario, name), (p50s, p99s, unit) in alone.items():
            lines += [
                f"   * - {scenario}: {name}",
                f"     - {_span(p50s, unit)}",
                f"     - {_span(p99s, unit)}",
                f"     - {targets.get(scenario, '')}",
            ]
    held = sum(row["holds"] for row in rows)
    machine = report["machine"]
    head = (
        f"Machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['memory_gib']} GiB,"
        f" {machine['platform']}; Python {machine['python']}, ipchannel {machine['ipchannel']},"
        f" filelock {machine['filelock']}, psutil {machine['psutil']}; baselines:"
        f" {machine.get('baselines') or 'none recorded'}. {runs} run(s);"
        f" {held} of {len(rows)} ratios held within ±25 % of their median."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("json", help="the file python -m benchmarks --json wrote")
    args = parser.parse_args(argv)
    print(table(json.loads(Path(args.json).read_text())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
