"""PNG plots of a benchmark run (matplotlib, the ``bench`` extra).

Four small figures, each readable on its own: echo throughput by connection
count, connection handling (new connections/s, burst, idle memory), protocols
(HTTP with wrk, RESP with redis-benchmark) and shutdown latency. Bars carry their
ratio to the baseline of their family so a reader never needs the table.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from scenarios import BASELINE, PRIMARY, SCENARIOS, kind

matplotlib.use("Agg")  # files only: never open a window (pyplot picks it up lazily)
X = "\N{MULTIPLICATION SIGN}"

DPI = 80  # keeps each PNG well under 100 KB


def number(value: float) -> str:
    """A bar's figure: thousands separated, two decimals below 100, and never
    "-0.00" (a memory growth of -0.001 KiB is zero, said as zero)."""
    if abs(value) < 0.005:
        return "0"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def label(table: Any, scenario: str, target: str, value: float) -> str:
    """What a bar says: its figure, its ratio to the baseline, and for a burst
    how many connections were served, so a short time that gave up early is not
    read as a fast one."""
    text = number(value)
    if kind(scenario) == "burst":
        text += " s"
        offered = SCENARIOS[scenario][2]["conns"]
        served = table.value(scenario, target, "served")
        if served is not None and served < offered:
            return text + f", gave up: {served:,.0f} of {offered:,} served"
        return text + f", all {offered:,} served"
    ratio = table.ratio(scenario, target)
    if ratio is not None:
        text += f"  ({number(ratio)}{X})"
    return text


def _bars(ax: Any, table: Any, scenario: str, targets: list[str]) -> None:
    names, values, labels = [], [], []
    for t in targets:
        v = table.value(scenario, t)
        if v is None:
            continue
        names.append(t)
        values.append(max(v, 0.0))  # a negative memory growth is noise: draw none
        labels.append(label(table, scenario, t, v))
    colors = ["tab:green" if n.startswith("pyserve") else "tab:gray" if n.startswith("stdlib")
              or n == BASELINE[SCENARIOS[scenario][0]] else "tab:blue" for n in names]
    y = range(len(names))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    _, unit, higher = PRIMARY[kind(scenario)]
    ax.set_title(f"{scenario}: {unit} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    for i, text in enumerate(labels):
        ax.text(values[i], i, " " + text, va="center", fontsize=7)
    if values:
        ax.set_xlim(0, (max(values) or 1.0) * 1.9)  # room for the longest label


def _figure(table: Any, scenarios: list[str], targets: list[str], path: str,
            title: str) -> bool:
    present = [s for s in scenarios if any(table.value(s, t) is not None for t in targets)]
    if not present:
        return False
    rows = [sum(table.value(s, t) is not None for t in targets) for s in present]
    fig, axes = plt.subplots(len(present), 1, figsize=(8, 0.6 + sum(0.9 + 0.3 * n for n in rows)),
                             squeeze=False, gridspec_kw={"height_ratios": rows})
    for ax, scen in zip(axes[:, 0], present):
        _bars(ax, table, scen, targets)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _shutdown(inproc: list[dict[str, Any]], path: str) -> bool:
    groups: dict[str, list[float]] = {}
    for r in inproc:
        groups.setdefault(f"{r['module']} {r['server_class']}", []).append(
            r["shutdown"]["median_ms"])
    if not groups:
        return False
    names = list(groups)
    values = [statistics.median(v) for v in groups.values()]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(names)))
    ax.barh(names, values, color=["tab:green" if n.startswith("pyserve") else "tab:gray"
                                  for n in names])
    ax.set_xscale("log")
    ax.axvline(5.0, color="tab:red", linestyle="--", linewidth=1)
    ax.text(5.0, -0.45, " 5 ms target", color="tab:red", fontsize=7)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f} ms", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_title("shutdown() latency, median ms (log scale, lower is better)", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def draw(table: Any, inproc: list[dict[str, Any]], meta: dict[str, Any], outdir: str) -> None:
    targets, scenarios = meta["targets"], meta["scenarios"]
    groups = [
        ("echo.png", "Echo round trips per second (64-byte messages)",
         ["echo-1", "echo-10", "echo-100"]),
        ("connections.png", "Connection handling", ["connrate-10", "burst-2000", "idle-5000"]),
        ("protocols.png", "Protocols: HTTP (wrk) and RESP (redis-benchmark)",
         ["http", "resp-P1", "resp-P16"]),
        ("cpu.png", "CPU-bound requests: with the GIL (-gil) and free-threaded (-ft)",
         ["cpu-10"]),
    ]
    for name, title, wanted in groups:
        _figure(table, [s for s in wanted if s in scenarios], targets,
                os.path.join(outdir, name), title)
    _shutdown(inproc, os.path.join(outdir, "shutdown.png"))
