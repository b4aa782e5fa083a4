"""The suite's charts: PNGs written beside the table in ``benchmarks/results/``, so
a reader sees the comparison at a glance (the README shows them).
``python -m benchmarks`` writes them after its run; ``python -m benchmarks.charts
[latest.json]`` draws them again from a run's JSON.

* ``throughput.png``: echo messages/s, fan-out deliveries/s (1 → N, with history
  on and through Valkey), and the burst against websockets' ``broadcast()``.
* ``rpc_latency.png``: RPC round-trip p50 and p99 per server (µs), in two panels
  on one scale: as the scheduler places the server and the load process (the
  table's RPC column), and with both pinned to one CPU (its one-core column: no
  cross-core wake-ups, which dominate the first panel on a small VM).
* ``memory.png``: memory per idle connection, and the rate they were opened at.

Bars are sorted best first and wskit_trio's rows are coloured (the current tree
strongly, a ``--baseline-ref`` commit lightly); the targets of issue #15 are
dashed lines. matplotlib is an optional dependency (the ``bench`` extra) and runs
on its Agg backend: no display needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .run import BASELINE, Results, Row, from_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["CHARTS", "write_charts"]

#: The files written, in ``out``.
CHARTS = ("throughput.png", "rpc_latency.png", "memory.png")

_CURRENT, _BASELINE, _OTHER = "#d95f02", "#fdb863", "#8c96a8"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: str


def _color(row: Row) -> str:
    if row.target.name == BASELINE:
        return _BASELINE
    return _CURRENT if row.target.name.startswith("wskit") else _OTHER


def _bars(results: Results, value: Callable[[Row], float | None]) -> list[Bar]:
    return [
        Bar(row.target.label, v, _color(row))
        for row in results.rows
        if (v := value(row)) is not None
    ]


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def _barh(
    ax: Axes,
    bars: list[Bar],
    *,
    title: str,
    unit: str,
    higher_is_better: bool,
    target: tuple[float, str] | None = None,
) -> None:
    """Horizontal bars, the best on top, each with its value at its end."""
    ordered = sorted(bars, key=lambda b: b.value, reverse=higher_is_better)
    if not ordered:
        ax.set_axis_off()
        ax.set_title(f"{title}: not measured", loc="left", fontsize=10)
        return
    positions = list(range(len(ordered)))[::-1]
    ax.barh(positions, [b.value for b in ordered], color=[b.color for b in ordered])
    _labels(ax, positions, [b.label for b in ordered], [b.color for b in ordered])
    for position, bar in zip(positions, ordered, strict=True):
        ax.annotate(
            _short(bar.value),
            (bar.value, position),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    _value_axis(ax, unit)
    if target is not None:
        ax.axvline(target[0], color="#1b7837", linestyle="--", linewidth=1)
        # Where the bars are shortest: at the bottom when the best (longest) is on top.
        ax.annotate(
            target[1],
            (target[0], 0.0 if higher_is_better else 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, 4 if higher_is_better else -10),
            textcoords="offset points",
            fontsize=7,
            color="#1b7837",
        )


def _labels(ax: Axes, positions: Sequence[float], labels: list[str], colors: list[str]) -> None:
    """The bars' names, wskit_trio's in bold."""
    ax.set_yticks(positions, labels, fontsize=8)
    for tick, color in zip(ax.get_yticklabels(), colors, strict=True):
        if color != _OTHER:
            tick.set_fontweight("bold")


def _value_axis(ax: Axes, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel(unit, fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _short(value)))
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _rpc_panel(
    ax: Axes, figures: list[tuple[Row, float | None, float | None]], *, title: str
) -> None:
    """Each row's p50 (solid) and p99 (hatched) bars, the lowest p50 on top."""
    rows = sorted(
        ((r, p50, p99) for r, p50, p99 in figures if p50 is not None and p99 is not None),
        key=lambda f: f[1],
    )
    if not rows:
        ax.set_axis_off()
        ax.set_title(f"{title}: not measured", loc="left", fontsize=10)
        return
    positions = list(range(len(rows)))[::-1]
    height = 0.38
    p50 = [f[1] for f in rows]
    p99 = [f[2] for f in rows]
    colors = [_color(r) for r, _, _ in rows]
    ax.barh([p + height / 2 for p in positions], p50, height, color=colors, label="p50")
    ax.barh(
        [p - height / 2 for p in positions],
        p99,
        height,
        color=colors,
        alpha=0.45,
        hatch="//",
        label="p99",
    )
    for position, a, b in zip(positions, p50, p99, strict=True):
        for y, value, name in (
            (position + height / 2, a, "p50"),
            (position - height / 2, b, "p99"),
        ):
            ax.annotate(
                f"{name} {value:,.0f}",
                (value, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    names = [
        r.target.label if r.target.app else f"{r.target.label.split(' (')[0]} (echo round trip)"
        for r, _, _ in rows
    ]
    _labels(ax, positions, names, colors)
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    _value_axis(ax, "µs (p50: solid, p99: hatched)")
    ax.legend(fontsize=8, loc="upper right")


def _subtitle(results: Results) -> str:
    machine = results.machine
    return (
        f"{machine.get('cpu', '?')}; {machine.get('python', '?')}; "
        f"{machine.get('date', '')}; one run, best of {results.settings.repeat} round(s)"
    )


def write_charts(results: Results, out: Path) -> tuple[list[Path], str | None]:
    """Write :data:`CHARTS` into ``out``; ``([], why)`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install -e '.[bench]')"
    s = results.settings
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(figure: Figure, name: str) -> None:
        figure.supxlabel(_subtitle(results), fontsize=7, color="#555555")
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(out / name)

    # -- throughput
    echo = _bars(results, lambda r: r.echo)
    fanout = _bars(results, lambda r: r.fanout if r.target.fanout else None)
    wskit = results.row("wskit")
    if results.history_fanout is not None:
        fanout.append(Bar("wskit_trio, history on (JOIN)", results.history_fanout, _CURRENT))
    if results.cross_instance is not None:
        fanout.append(Bar("wskit_trio, 2 processes via Valkey", results.cross_instance, _CURRENT))
    if results.cross_instance_history is not None:
        fanout.append(
            Bar(
                "wskit_trio, 2 processes via Valkey, history on",
                results.cross_instance_history,
                _CURRENT,
            )
        )
    burst = [
        Bar(
            "wskit_trio: ctx.publish() in a loop"
            if row is wskit
            else f"{row.target.label.split(' (')[0]}: broadcast() in a loop",
            row.burst,
            _color(row),
        )
        for row in results.rows
        if row.burst is not None
    ]
    sizes = [max(2, len(echo)), max(2, len(fanout)), max(2, len(burst))]
    figure, axes = plt.subplots(
        3,
        1,
        figsize=(10, 1.2 + 0.32 * sum(sizes)),
        gridspec_kw={"height_ratios": sizes},
        layout="constrained",
    )
    figure.suptitle("Throughput by server (higher is better)", fontweight="bold")
    _barh(
        axes[0],
        echo,
        title=f"Echo, {s.window} messages in flight on one connection",
        unit="messages/s",
        higher_is_better=True,
    )
    _barh(
        axes[1],
        fanout,
        title=f"Fan-out: one publisher, {s.subscribers:,} subscribers",
        unit="deliveries/s",
        higher_is_better=True,
    )
    _barh(
        axes[2],
        burst,
        title=(
            f"Burst: one handler publishing {s.burst_messages:,} messages in a loop "
            f"to {s.burst_subscribers} subscribers"
        ),
        unit="deliveries/s",
        higher_is_better=True,
    )
    save(figure, "throughput.png")

    # -- RPC latency
    cpu = "" if results.pinned_cpu is None else f" {results.pinned_cpu}"
    panels = [
        (
            [(r, r.rpc_p50, r.rpc_p99) for r in results.rows],
            "Server and load process where the scheduler puts them",
        ),
        (
            [(r, r.rpc_pinned_p50, r.rpc_pinned_p99) for r in results.rows],
            f"One core: server and load process pinned together to CPU{cpu} "
            "(no cross-core wake-ups)",
        ),
    ]
    if all(p50 is None for _, p50, _ in panels[1][0]):
        panels.pop()  # a run from before the one-core figures
    sizes = [max(2, sum(p50 is not None for _, p50, _ in figures)) for figures, _ in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        squeeze=False,
        figsize=(10, 1.4 * len(panels) + 0.45 * sum(sizes)),
        gridspec_kw={"height_ratios": sizes},
        layout="constrained",
    )
    figure.suptitle("RPC round trip, one request at a time (lower is better)", fontweight="bold")
    for ax, (figures, title) in zip(axes[:, 0], panels, strict=True):
        _rpc_panel(ax, figures, title=title)
    # One scale for both, so that the panels compare at a glance.
    drawn = [ax for ax in axes[:, 0] if ax.axison]
    if drawn:
        right = max(ax.get_xlim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_xlim(0, right)
    save(figure, "rpc_latency.png")

    # -- memory and connections
    figure, axes = plt.subplots(
        2, 1, figsize=(10, 1.4 + 0.6 * max(2, len(results.rows))), layout="constrained"
    )
    figure.suptitle(f"{s.idle_connections:,} idle connections", fontweight="bold")
    _barh(
        axes[0],
        _bars(results, lambda r: r.memory_kib),
        title="Memory per idle connection (lower is better)",
        unit="KiB of server RSS per connection",
        higher_is_better=False,
        target=(8.0, "target ≤ 8 KiB"),
    )
    _barh(
        axes[1],
        _bars(results, lambda r: r.connect_rate),
        title="Connections opened, upgrade complete (higher is better)",
        unit="connections/s (100 upgrades in flight)",
        higher_is_better=True,
        target=(2000.0, "target ≥ 2,000/s"),
    )
    save(figure, "memory.png")
    return written, None


def main(argv: list[str] | None = None) -> int:
    results_dir = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(prog="python -m benchmarks.charts", description=__doc__)
    parser.add_argument("json", type=Path, nargs="?", default=results_dir / "latest.json")
    parser.add_argument("--out", type=Path, help="where to write them (default: beside the JSON)")
    args = parser.parse_args(argv)
    results = from_json(json.loads(args.json.read_text()))
    written, why = write_charts(results, args.out or args.json.parent)
    if why is not None:
        print(f"no charts: {why}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
