"""The plots of ``python -m benchmarks --plot DIR``, drawn from the run that printed the tables.

Three SVG files, so the documentation shows the same run as its tables:

- ``speed.svg``: every ratio as "times as fast as the baseline" (above 1: ipchannel is faster),
  the median over the runs with the lowest and highest run as a whisker;
- ``throughput.svg``: each throughput scenario's series beside its baselines, in operations a second;
- ``failover.svg``: how long each client waited from the host's SIGKILL to its first answer, as
  a cumulative distribution per scenario (every run's samples together), beside the floor.

matplotlib is in the ``bench`` extra; without it ``--plot`` fails before anything runs.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks._stats import Result, Series

INSTALL = "pip install 'ipchannel[bench]'"


def require_matplotlib() -> None:
    """Fail at once, naming the install line, when matplotlib is missing (not after a long run)."""
    try:
        import matplotlib as mpl  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit(f"--plot needs matplotlib: {INSTALL}") from None


def write_plots(runs: list[list[Result]], directory: Path) -> list[Path]:
    """Draw the plots of ``runs`` (each a list of one run's results) into ``directory``; their paths."""
    import matplotlib as mpl  # noqa: PLC0415 - optional, and slow to import

    mpl.use("Agg")
    mpl.rcParams["svg.hashsalt"] = "ipchannel-benchmarks"  # the same run gives the same file
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("speed", _speed), ("throughput", _throughput), ("failover", _failover)):
        figure = draw(runs)
        if figure is None:
            continue
        path = directory / f"{name}.svg"
        figure.savefig(path, metadata={"Date": None}, bbox_inches="tight")
        written.append(path)
    return written


def _speeds(runs: list[list[Result]]) -> list[tuple[str, list[float], bool]]:
    """Each ratio shown, as (label, its speed in every run it appears in, throughput?).

    Speed is the baseline's time over ours (or our rate over the baseline's): above 1, faster.
    """
    found: dict[str, tuple[list[float], bool]] = {}
    for results in runs:
        for result in results:
            for ours, baseline, ratio in result.ratios():
                if not ratio:
                    continue
                label = f"{result.scenario}: {ours.name}  vs  {baseline.name}"
                speed = ratio if result.higher_is_better else 1 / ratio
                found.setdefault(label, ([], result.higher_is_better))[0].append(speed)
    return [(label, speeds, rate) for label, (speeds, rate) in found.items()]


def _speed(runs: list[list[Result]]) -> Any:
    rows = _speeds(runs)
    if not rows:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.4))
    labels = [_short(label, 95) for label, _, _ in rows]
    medians = [statistics.median(speeds) for _, speeds, _ in rows]
    low = [m - min(speeds) for m, (_, speeds, _) in zip(medians, rows, strict=True)]
    high = [max(speeds) - m for m, (_, speeds, _) in zip(medians, rows, strict=True)]
    positions = list(range(len(rows)))
    for k, median in enumerate(medians):
        colour = "tab:green" if median >= 1 else "tab:red"
        axes.errorbar([median], [k], xerr=[[low[k]], [high[k]]], fmt="o", color=colour, capsize=3)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    every = [s for _, speeds, _ in rows for s in speeds]
    axes.set_xlim(min(0.5, *every) / 1.3, max(2.0, *every) * 1.3)
    axes.grid(visible=True, axis="x", which="both", alpha=0.3)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("times as fast as the baseline (log scale; above 1: ipchannel is faster)")
    axes.set_title(f"ipchannel beside its baselines: median of {len(runs)} run(s), whiskers: lowest, highest")
    return figure


def _throughput(runs: list[list[Result]]) -> Any:
    scenarios: dict[str, dict[str, list[float]]] = {}
    for results in runs:
        for result in results:
            if not result.higher_is_better:
                continue
            for series in [*result.ours, *result.baselines]:
                if series.samples:
                    value = series.scaled(series.median())
                    scenarios.setdefault(result.scenario, {}).setdefault(series.name, []).append(value)
    if not scenarios:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, panels = plt.subplots(len(scenarios), 1, figsize=(10, 2.2 * len(scenarios) + 0.6), squeeze=False)
    for axes, (scenario, rates) in zip(panels[:, 0], scenarios.items(), strict=True):
        names = list(rates)
        medians = [statistics.median(v) for v in rates.values()]
        low = [m - min(v) for m, v in zip(medians, rates.values(), strict=True)]
        high = [max(v) - m for m, v in zip(medians, rates.values(), strict=True)]
        colours = ["tab:blue" if i < _ours_count(runs, scenario) else "tab:gray" for i in range(len(names))]
        axes.barh(range(len(names)), medians, xerr=[low, high], color=colours, alpha=0.8, capsize=2)
        axes.set_yticks(range(len(names)), [_short(n, 70) for n in names], fontsize=7)
        axes.invert_yaxis()
        axes.set_title(f"{scenario} (blue: ipchannel; grey: baselines)", fontsize=9)
        axes.set_xlabel(_unit(runs, scenario), fontsize=8)
    figure.tight_layout()
    return figure


def _failover(runs: list[list[Result]]) -> Any:
    panels: dict[str, dict[str, list[float]]] = {}
    for results in runs:
        for result in results:
            if "failover" not in result.scenario:
                continue
            for series in [*result.ours, *result.baselines]:
                if series.samples and "slowest" not in series.name:
                    samples = [series.scaled(s) for s in series.samples]
                    panels.setdefault(result.scenario, {}).setdefault(series.name, []).extend(samples)
    if not panels:
        return None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes_list = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels) + 0.6), squeeze=False)
    for axes, (scenario, samples_of) in zip(axes_list[:, 0], panels.items(), strict=True):
        for name, samples in samples_of.items():
            ordered = sorted(samples)
            fractions = [(k + 1) / len(ordered) for k in range(len(ordered))]
            axes.step(ordered, fractions, where="post", label=f"{_short(name, 70)} (n={len(ordered)})")
        axes.set_xscale("log")
        axes.set_xlabel("ms from the host's SIGKILL (log scale)", fontsize=8)
        axes.set_ylabel("fraction of clients", fontsize=8)
        axes.set_title(scenario, fontsize=9)
        axes.grid(visible=True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def _ours_count(runs: list[list[Result]], scenario: str) -> int:
    return next((len(r.ours) for results in runs for r in results if r.scenario == scenario), 0)


def _unit(runs: list[list[Result]], scenario: str) -> str:
    first: Series | None = next(
        (r.ours[0] for results in runs for r in results if r.scenario == scenario and r.ours), None
    )
    return first.unit if first else ""


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."
