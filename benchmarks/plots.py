"""The plots of a run: ``python -m benchmarks --plot DIR``, or ``python -m benchmarks.plots JSON DIR``.

Drawn from the report ``--json`` writes (the one the documentation's table comes from,
``benchmarks.report``), as three SVG files:

- ``speed.svg``: every ratio of a time or a rate as "times as fast as the baseline" (above 1:
  ipchannel is faster), the median over the runs, with the lowest and highest run as whiskers;
- ``throughput.svg``: each throughput scenario's series beside its baselines, in operations a second;
- ``failover.svg``: how long each client waited from the host's SIGKILL to its first answer, as
  a cumulative distribution per failover scenario (every run's samples together), beside the floor.

matplotlib is in the ``bench`` extra; without it ``--plot`` fails before anything runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

INSTALL = "pip install 'ipchannel[bench]'"
_TIMES = {"ns", "us", "ms", "s"}  # lower is better
_RATES = {"req/s", "ops/s"}  # higher is better


def require_matplotlib() -> None:
    """Fail at once, naming the install line, when matplotlib is missing (not after a long run)."""
    try:
        import matplotlib as mpl  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit(f"--plot needs matplotlib: {INSTALL}") from None


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Draw the plots of ``report`` (what ``--json`` writes) into ``directory``; return their paths."""
    import matplotlib as mpl  # noqa: PLC0415 - optional, and slow to import

    mpl.use("Agg")
    mpl.rcParams["svg.hashsalt"] = "ipchannel-benchmarks"  # the same report gives the same file
    mpl.rcParams["svg.fonttype"] = "none"  # text stays text: a tenth of the size
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    results = report["results"]
    for name, draw in (("speed", _speed), ("throughput", _throughput), ("failover", _failover)):
        figure = draw(results, report["runs"])
        if figure is None:
            continue
        path = directory / f"{name}.svg"
        figure.savefig(path, metadata={"Date": None}, bbox_inches="tight")
        written.append(path)
    return written


def _speeds(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each ratio of a time or a rate, as its speed in every run it appears in (above 1: faster)."""
    found: dict[str, list[float]] = {}
    for result in results:
        ours, baselines = result["ours"], result["baselines"]
        pairs = [(s, baselines[0], s["ratio_to_baseline"]) for s in ours] if baselines else []
        if ours:
            pairs += [(ours[0], b, b["ratio_of_first_series"]) for b in baselines[1:]]
        for series, baseline, ratio in pairs:
            if not ratio or series["unit"] not in _TIMES | _RATES:
                continue
            speed = ratio if series["unit"] in _RATES else 1 / ratio
            found.setdefault(f"{result['scenario']}: {series['name']}  vs  {baseline['name']}", []).append(
                speed
            )
    return found


def _speed(results: list[dict[str, Any]], runs: int) -> Any:
    rows = _speeds(results)
    if not rows:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(10, 0.24 * len(rows) + 1.4))
    for k, speeds in enumerate(rows.values()):
        median = statistics.median(speeds)
        whiskers = [[median - min(speeds)], [max(speeds) - median]]
        colour = "tab:green" if median >= 1 else "tab:red"
        axes.errorbar([median], [k], xerr=whiskers, fmt="o", color=colour, capsize=3, markersize=4)
    every = [speed for speeds in rows.values() for speed in speeds]
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlim(min(0.5, *every) / 1.3, max(2.0, *every) * 1.3)
    axes.grid(visible=True, axis="x", which="both", alpha=0.3)
    axes.set_yticks(range(len(rows)), [_short(label, 110) for label in rows], fontsize=6)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_xlabel("times as fast as the baseline (log scale; above 1: ipchannel is faster)")
    axes.set_title(f"ipchannel beside its baselines: median of {runs} run(s), whiskers: lowest, highest")
    return figure


def _throughput(results: list[dict[str, Any]], _runs: int) -> Any:
    scenarios: dict[str, dict[str, tuple[bool, list[float]]]] = {}
    for result in results:
        for side in ("ours", "baselines"):
            for series in result[side]:
                if series["unit"] in _RATES and series["n"]:
                    rates = scenarios.setdefault(result["scenario"], {})
                    rates.setdefault(series["name"], (side == "ours", []))[1].append(series["median"])
    if not scenarios:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, panels = plt.subplots(len(scenarios), 1, figsize=(10, 2.2 * len(scenarios) + 0.6), squeeze=False)
    for axes, (scenario, rates) in zip(panels[:, 0], scenarios.items(), strict=True):
        medians = [statistics.median(values) for _, values in rates.values()]
        low = [m - min(values) for m, (_, values) in zip(medians, rates.values(), strict=True)]
        high = [max(values) - m for m, (_, values) in zip(medians, rates.values(), strict=True)]
        colours = ["tab:blue" if ours else "tab:gray" for ours, _ in rates.values()]
        axes.barh(range(len(rates)), medians, xerr=[low, high], color=colours, alpha=0.8, capsize=2)
        axes.set_yticks(range(len(rates)), [_short(name, 70) for name in rates], fontsize=7)
        axes.invert_yaxis()
        axes.set_title(
            f"{scenario} (blue: ipchannel; grey: baselines; whiskers: lowest, highest run)", fontsize=9
        )
        axes.set_xlabel(
            next(s["unit"] for r in results if r["scenario"] == scenario for s in r["ours"]), fontsize=8
        )
    figure.tight_layout()
    return figure


def _failover(results: list[dict[str, Any]], _runs: int) -> Any:
    panels: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for series in [*result["ours"], *result["baselines"]]:
            if series.get("samples") and series["unit"] in _TIMES and "slowest" not in series["name"]:
                samples = panels.setdefault(result["scenario"], {}).setdefault(series["name"], [])
                samples.extend(series["samples"])
    if not panels:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import ScalarFormatter  # noqa: PLC0415

    figure, axes_list = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels) + 0.6), squeeze=False)
    for axes, (scenario, samples_of) in zip(axes_list[:, 0], panels.items(), strict=True):
        unit = next(s["unit"] for r in results if r["scenario"] == scenario for s in r["ours"])
        for name, samples in samples_of.items():
            ordered = sorted(samples)
            fractions = [(k + 1) / len(ordered) for k in range(len(ordered))]
            axes.step(ordered, fractions, where="post", label=f"{_short(name, 70)} (n={len(ordered)})")
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(ScalarFormatter())
        axes.tick_params(axis="x", which="minor", labelsize=6)
        axes.set_xlabel(f"{unit} from the host's SIGKILL (log scale)", fontsize=8)
        axes.set_ylabel("fraction of clients", fontsize=8)
        axes.set_title(scenario, fontsize=9)
        axes.grid(visible=True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.split("\n")[0])
    parser.add_argument("json", help="the file python -m benchmarks --json wrote")
    parser.add_argument("directory", help="where to write the SVG files")
    args = parser.parse_args(argv)
    require_matplotlib()
    for path in write_plots(json.loads(Path(args.json).read_text()), Path(args.directory)):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
