"""Turning raw results into the report (Markdown and reST), the pass/fail table and plots.

Input: the per-run result dicts of scenarios.run_one (raw.jsonl), the in-process
results of inproc.py (inproc.jsonl) and meta.json (machine facts, options, what
was n/a and why). Every figure is a median over rounds; every ratio divides two
medians from the same invocation, so slow and fast moments of a shared machine
hit both sides.

Each table is built once as a header and rows (``Report``), then written twice:
as Markdown (``results.md``, for a terminal or a code review) and as reST
(``report.inc``, list-tables that the docs' results page includes, so no column
hides off-screen). ``render(outdir)`` writes both and the PNGs and can be rerun
on an old output directory (``run.py --report DIR``); ``publish(outdir, docs)``
renders a run into the docs' ``results/`` directory with the raw data beside
it, so ``run.py --report docs/results`` renders the page again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from typing import Any, Optional

from scenarios import BASELINE, PRIMARY, SCENARIOS, kind

Rows = list[dict[str, Any]]
X = "\N{MULTIPLICATION SIGN}"  # the ratio sign
DASH = "\N{EN DASH}"  # the range sign


def load(outdir: str) -> tuple[Rows, Rows, dict[str, Any]]:
    def jsonl(name: str) -> Rows:
        path = os.path.join(outdir, name)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    with open(os.path.join(outdir, "meta.json")) as f:
        meta = json.load(f)
    return jsonl("raw.jsonl"), jsonl("inproc.jsonl"), meta


def median(rows: Rows, key: str) -> Optional[float]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def fmt(value: Optional[float], digits: Optional[int] = None) -> str:
    if value is None:
        return "n/a"
    if digits is None and float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value):,}"
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}"


class Table:
    """Medians of every (scenario, target) and their ratios to the baseline."""

    def __init__(self, raw: Rows) -> None:
        self.ok: dict[tuple[str, str], Rows] = {}
        self.errors: dict[tuple[str, str], list[str]] = {}
        for r in raw:
            key = (r["scenario"], r["target"])
            if r.get("error"):
                self.errors.setdefault(key, []).append(r["error"])
            else:
                self.ok.setdefault(key, []).append(r)

    def value(self, scenario: str, target: str, key: Optional[str] = None) -> Optional[float]:
        key = key or PRIMARY[kind(scenario)][0]
        return median(self.ok.get((scenario, target), []), key)

    def ratio(self, scenario: str, target: str, baseline: Optional[str] = None) -> Optional[float]:
        family = SCENARIOS[scenario][0]
        value = self.value(scenario, target)
        base = self.value(scenario, baseline or BASELINE[family])
        if value is None or not base:
            return None
        return value / base


POOL_WORKERS = 32  # ThreadPoolMixIn.max_workers, the bench's pool target's default


def targets_table(table: Table, inproc: Rows) -> list[list[str]]:
    """The issue's targets: [target, measured, goal, result]."""
    out: list[list[str]] = []

    def row(name: str, measured: Optional[float], text: str, goal: str, ok: bool) -> None:
        verdict = "n/a" if measured is None else ("PASS" if ok else "FAIL")
        out.append([name, text if measured is not None else "n/a", goal, verdict])

    for scen in ("echo-1", "echo-10", "echo-100"):
        r = table.ratio(scen, "pyserve-thread")
        row(f"raw echo, {scen}: pyserve / stdlib ThreadingTCPServer", r, f"{fmt(r)}{X}",
            f"≥ 1.0{X}", r is not None and r >= 1.0)
    for scen in ("echo-1", "echo-10", "echo-100"):
        r = table.ratio(scen, "pyserve-thread-stream")
        row(f"StreamRequestHandler echo, {scen}: pyserve stream / stdlib raw", r, f"{fmt(r)}{X}",
            f"≥ 1.0{X}", r is not None and r >= 1.0)
    r = table.ratio("connrate-10", "pyserve-pool")
    row("pool connrate-10: ThreadPoolTCPServer / stdlib", r, f"{fmt(r)}{X}", f"≥ 4{X}",
        r is not None and r >= 4.0)
    opened = table.value("idle-5000", "pyserve-thread", "connect_s")
    served = table.value("idle-5000", "pyserve-thread", "served")
    row("5,000 connections opened and served: pyserve-thread", opened,
        f"{fmt(opened)} s ({fmt(served, 0)} served)", "< 1 s, all 5,000",
        opened is not None and opened < 1.0 and served == 5000)
    # A bounded pool serves max_workers (32) connections at a time by design, so
    # with every burst client holding its connection open only 32 are served in
    # the window; what the pool promises is the thread bound (every client being
    # served eventually is tests/test_pool.py's 2,000-connection burst).
    threads = table.value("burst-2000", "pyserve-pool", "threads")
    row("pool, burst-2000 held open: threads", threads,
        f"{fmt(threads, 0)} threads", f"≤ {POOL_WORKERS} + 4",
        threads is not None and threads <= POOL_WORKERS + 4)
    shut = [r["shutdown"]["median_ms"] for r in inproc
            if r["module"] == "pyserve" and r["server_class"] == "ThreadingTCPServer"]
    value = statistics.median(shut) if shut else None
    row("shutdown() latency, pyserve (median)", value, f"{fmt(value, 3)} ms", "< 5 ms",
        value is not None and value < 5.0)
    r = table.ratio("cpu-10", "pyserve-pool-ft")
    row("CPU-bound cpu-10: pool free-threaded / pool with the GIL", r, f"{fmt(r)}{X}",
        f"≥ 1.8{X} on 2 cores", r is not None and r >= 1.8)
    pool, multiplex = (table.value("connrate-10", t) for t in ("pyserve-pool", "pyserve-multiplex"))
    r = multiplex / pool if multiplex and pool else None
    row("connrate-10: MultiplexingTCPServer / ThreadPoolTCPServer", r, f"{fmt(r)}{X}",
        f"≥ 1.0{X}", r is not None and r >= 1.0)
    uvloop, multiplex = (table.value("echo-100", t) for t in ("uvloop-proto", "pyserve-multiplex"))
    r = multiplex / uvloop if multiplex and uvloop else None
    row("echo-100: MultiplexingTCPServer / uvloop", r, f"{fmt(r)}{X}", f"≥ 1.0{X}",
        r is not None and r >= 1.0)
    c_epoll, pool, floor = (table.value("connrate-10", t)
                            for t in ("c-epoll", "pyserve-pool", "python-floor"))
    r = pool / c_epoll if pool and c_epoll else None
    row("connrate-10: ThreadPoolTCPServer / c-epoll", r, f"{fmt(r)}{X}", f"≥ 0.9{X}",
        r is not None and r >= 0.9)
    r = floor / c_epoll if floor and c_epoll else None
    row("connrate-10: python-floor (bare threads, no framework) / c-epoll, for reference", r,
        f"{fmt(r)}{X}", "(the ceiling of a Python pool)", True)
    for scen, goal in (("resp-P1", 0.7), ("resp-P16", 0.5)):
        ratios = resp_ratios(table, scen)
        for test, r in ratios.items():
            row(f"RESP {scen} {test}: pyserve store / redis-server", r, f"{fmt(r)}{X}",
                f"≥ {goal}{X}", r is not None and r >= goal)
        if not ratios:
            row(f"RESP {scen}: pyserve store / redis-server", None, "", f"≥ {goal}{X}", False)
    return out


def resp_ratios(table: Table, scenario: str) -> dict[str, Optional[float]]:
    """Per redis-benchmark test (SET, GET, ...): median requests/s of pyserve's
    store over redis-server's, each median over the rounds."""

    def medians(target: str) -> dict[str, float]:
        per_test: dict[str, list[float]] = {}
        for r in table.ok.get((scenario, target), []):
            for test, rps in r.get("tests", {}).items():
                per_test.setdefault(test, []).append(rps)
        return {test: statistics.median(v) for test, v in per_test.items()}

    ours, theirs = medians("pyserve-resp"), medians("redis-server")
    return {test: (ours[test] / theirs[test] if test in ours and theirs[test] else None)
            for test in theirs}


HARNESS_HEADER = ["scenario", "c-epoll (native)", "best Python server", "headroom",
                  "loadgen CPU with c-epoll", "verdict"]


def harness_check(table: Table) -> list[list[str]]:
    rows: list[list[str]] = []
    for scen in ("echo-1", "echo-10", "echo-100", "connrate-10"):
        native = table.value(scen, "c-epoll")
        pythons = [(table.value(scen, t), t) for (s, t) in table.ok
                   if s == scen and t != "c-epoll" and table.value(scen, t) is not None]
        if native is None or not pythons:
            continue
        best, who = max(pythons)
        cpu = table.value(scen, "c-epoll", "client_cpu_util")
        headroom = native / best if best else None
        if headroom is not None and headroom >= 1.2:
            verdict = "the load generator has headroom"
        elif cpu is not None and cpu >= 0.9:
            verdict = (f"harness limit: the load generator used {fmt(cpu)} of its CPU; "
                       "Python figures near it are capped")
        else:
            verdict = ("native no faster, load generator not CPU-bound: loopback "
                       "latency and CPU scheduling set this limit, not the harness's CPU")
        rows.append([scen, fmt(native), f"{fmt(best)} ({who})", f"{fmt(headroom)}{X}",
                     fmt(cpu), verdict])
    return rows


COLUMNS = {
    "echo": [("p50 µs", "p50_us"), ("p99 µs", "p99_us"), ("server CPU", "server_cpu_util"),
             ("loadgen CPU", "client_cpu_util"), ("errors", "errors")],
    "connrate": [("p99 µs", "p99_us"), ("server CPU", "server_cpu_util"),
                 ("loadgen CPU", "client_cpu_util"), ("errors", "errors")],
    "burst": [("served", "served"), ("alive after", "alive"), ("threads", "threads"),
              ("errors", "errors")],
    "idle": [("served", "served"), ("open s", "connect_s"), ("RSS MiB", "rss_mib"),
             ("threads", "threads"), ("errors", "errors")],
    "http": [("errors", "errors")],
    "resp": [("errors", "errors")],
}


def scenario_tables(table: Table, targets: list[str], scenarios: list[str]
                    ) -> list[tuple[str, list[str], list[list[str]]]]:
    """One (title, header, rows) per scenario."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    for scen in scenarios:
        k = kind(scen)
        key, unit, higher = PRIMARY[k]
        family = SCENARIOS[scen][0]
        extra = COLUMNS[k]
        title = f"{scen}: {unit} ({'higher' if higher else 'lower'} is better)"
        header = ["target", "median", f"min{DASH}max", f"{X} " + BASELINE[family]]
        header += [c for c, _ in extra]
        rows: list[list[str]] = []
        for t in targets:
            runs = table.ok.get((scen, t), [])
            errs = table.errors.get((scen, t), [])
            if not runs and not errs:
                continue
            if not runs:
                rows.append([t, f"failed: {errs[0]}"] + [""] * (2 + len(extra)))
                continue
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            cells = [t, fmt(table.value(scen, t)),
                     f"{fmt(min(values))}{DASH}{fmt(max(values))}" if values else "n/a",
                     f"{fmt(table.ratio(scen, t))}{X}"]
            cells += [fmt(median(runs, col)) for _, col in extra]
            if errs:
                cells[0] += f" ({len(errs)} failed runs)"
            rows.append(cells)
        out.append((title, header, rows))
    return out


LIFECYCLE_HEADER = ["module", "server", "samples", "shutdown() median ms", "p99 ms", "max ms",
                    "drain(grace) s under load"]


def lifecycle_rows(inproc: Rows) -> list[list[str]]:
    rows: list[list[str]] = []
    groups: dict[tuple[str, str], Rows] = {}
    for r in inproc:
        groups.setdefault((r["module"], r["server_class"]), []).append(r)
    for (module, cls), group in groups.items():
        shut = [r["shutdown"] for r in group]
        drains = [r["drain"] for r in group if r.get("drain")]
        drain = (f"{fmt(median(drains, 'drain_s'), 3)} (grace {drains[0]['grace_s']} s, "
                 f"{drains[0]['clients']} clients)" if drains else "n/a (no drain())")
        rows.append([module, cls, str(sum(s["samples"] for s in shut)),
                     fmt(median(shut, "median_ms"), 3), fmt(median(shut, "p99_ms"), 3),
                     fmt(max(s["max_ms"] for s in shut), 3), drain])
    return rows


def load_average(facts: dict[str, Any], key: str) -> Optional[list[str]]:
    """The 1, 5 and 15 minute load averages recorded in /proc/loadavg, or None."""
    fields = str(facts.get(key) or "").split()
    return fields[:3] if len(fields) >= 3 else None


def load_sentence(facts: dict[str, Any]) -> str:
    cores = facts.get("cores") or "?"
    parts = []
    for key, when in (("loadavg_before", "when the run began"), ("loadavg_after", "when it ended")):
        load = load_average(facts, key)
        if load:
            parts.append(f"{load[0]} / {load[1]} / {load[2]} {when}")
    if not parts:
        return "The machine's load average was not recorded."
    return (f"Load average (1 / 5 / 15 minutes) on {cores} cores: " + "; ".join(parts) + ".")


def busy(facts: dict[str, Any]) -> Optional[str]:
    load = load_average(facts, "loadavg_before")
    cores = facts.get("cores") or 1
    if load and float(load[0]) > 2 * cores:
        return (f"The machine was busy (load average {load[0]} on {cores} cores when the "
                "run began): single figures are noisy; read the ratios.")
    return None


TARGETS_HEADER = ["target", "measured", "goal", "result"]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(raw: Rows, inproc: Rows, meta: dict[str, Any]) -> str:
    table = Table(raw)
    facts = meta["facts"]
    lines = ["# pyserve benchmark results", "",
             f"Run {meta['started']}, {meta['rounds']} rounds of {meta['duration']} s per "
             f"scenario, contenders interleaved; backlog: {meta['backlog']}. Medians over "
             "rounds; ratios divide medians of this run.", ""]
    lines += md_table(["machine", ""], [[k, str(v)] for k, v in facts.items()])
    lines += ["", load_sentence(facts)]
    warning = busy(facts)
    if warning:
        lines += ["", f"**{warning.split(' (')[0]}** (" + warning.split(" (", 1)[1]]
    lines += ["", "## Targets", ""]
    lines += md_table(TARGETS_HEADER, targets_table(table, inproc))
    lines += ["", "## Is the load generator the bottleneck?", "",
              "The same load generator against a native epoll echo server (c-epoll): "
              "if it drives that much faster than any Python server, the Python figures "
              "are the servers' own.", ""]
    check = harness_check(table)
    lines += md_table(HARNESS_HEADER, check) if check else [
        "(no echo or connrate scenario with c-epoll ran)"]
    lines += ["", "## Scenarios", ""]
    for title, header, rows in scenario_tables(table, meta["targets"], meta["scenarios"]):
        lines += [f"### {title}", "", *md_table(header, rows), ""]
    lines += ["## Lifecycle (in-process)", "", *md_table(LIFECYCLE_HEADER, lifecycle_rows(inproc))]
    if meta.get("unavailable"):
        lines += ["", "## Not measured (n/a)", ""]
        lines += [f"- {name}: {why}" for name, why in meta["unavailable"].items()]
    return "\n".join(lines) + "\n"


# -- reST ---------------------------------------------------------------------------

_LIST_MARKER = re.compile(r"^(?:[-+*•]|\d+[.)]|#\.|\(\d+\))(?:\s|$)")


def rst_text(text: str) -> str:
    """``text`` as plain reST: markup characters escaped, no accidental list."""
    text = re.sub(r"([\\*`|_])", r"\\\1", text)
    return "\\" + text if _LIST_MARKER.match(text) else text


def rst_heading(title: str, underline: str) -> list[str]:
    text = rst_text(title)
    return [text, underline * len(text), ""]


def rst_table(header: list[str], rows: list[list[str]], widths: Optional[list[int]] = None
              ) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(map(str, widths)))
    lines.append("")
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines.append(f"   {'* -' if i == 0 else '  -'} {rst_text(cell)}".rstrip())
    return [*lines, ""]


def restructuredtext(raw: Rows, inproc: Rows, meta: dict[str, Any]) -> str:
    """The report for the docs: sections under the including page's title."""
    table = Table(raw)
    facts = meta["facts"]
    lines = [".. This file is generated by bench/report.py (python3 bench/run.py --docs);",
             "   edit the generator, not this file.", "",
             f"Run {rst_text(str(meta['started']))}: {meta['rounds']} rounds of "
             f"{meta['duration']} s per scenario, contenders interleaved; listen backlog "
             f"{rst_text(str(meta['backlog']))}. Medians over rounds; ratios divide medians "
             "of this run.", ""]
    lines += rst_heading("The machine", "-")
    lines += [rst_text(load_sentence(facts)), ""]
    warning = busy(facts)
    if warning:
        lines += [".. warning::", "", "   " + rst_text(warning), ""]
    lines += rst_table(["fact", "value"], [[k, str(v)] for k, v in facts.items()], [1, 3])
    lines += rst_heading("Targets", "-")
    lines += rst_table(TARGETS_HEADER, targets_table(table, inproc), [6, 3, 2, 1])
    lines += rst_heading("Is the load generator the bottleneck?", "-")
    lines += ["The same load generator against a native epoll echo server (c-epoll): if it",
              "drives that much faster than any Python server, the Python figures are the",
              "servers' own.", ""]
    check = harness_check(table)
    lines += (rst_table(HARNESS_HEADER, check, [2, 2, 3, 2, 2, 5]) if check
              else ["(No echo or connrate scenario with c-epoll ran.)", ""])
    lines += rst_heading("Scenarios", "-")
    for title, header, rows in scenario_tables(table, meta["targets"], meta["scenarios"]):
        lines += rst_heading(title, "~")
        lines += rst_table(header, rows) if rows else ["(Nothing ran.)", ""]
    lines += rst_heading("Lifecycle (in-process)", "-")
    rows = lifecycle_rows(inproc)
    lines += rst_table(LIFECYCLE_HEADER, rows) if rows else ["(Not measured.)", ""]
    if meta.get("unavailable"):
        lines += rst_heading("Not measured (n/a)", "-")
        lines += [f"* {rst_text(name)}: {rst_text(why)}" for name, why in
                  meta["unavailable"].items()]
    return "\n".join(lines).rstrip() + "\n"


PLOTS = ("echo.png", "connections.png", "protocols.png", "shutdown.png")
RAW_FILES = ("meta.json", "raw.jsonl", "inproc.jsonl")


def render(outdir: str, *, with_markdown: bool = True) -> str:
    """Write results.md, report.inc and the plots of the run in ``outdir``;
    return the Markdown (the docs' copy, ``with_markdown=False``, has no results.md)."""
    into = outdir
    raw, inproc, meta = load(outdir)
    text = markdown(raw, inproc, meta)
    if with_markdown:
        with open(os.path.join(into, "results.md"), "w") as f:
            f.write(text)
    with open(os.path.join(into, "report.inc"), "w") as f:
        f.write(restructuredtext(raw, inproc, meta))
    try:
        import plots  # noqa: PLC0415 - optional: matplotlib may be absent
    except ImportError as exc:  # matplotlib is the "bench" extra
        return text + f"\n(no plots: {exc}; pip install 'pyserve[bench]')\n"
    plots.draw(Table(raw), inproc, meta, into)
    return text


def publish(outdir: str, docs: str) -> str:
    """Render the run in ``outdir`` into the docs' results directory ``docs``,
    with its raw data, so the docs page shows it and can be rendered again."""
    os.makedirs(docs, exist_ok=True)
    if os.path.abspath(outdir) != os.path.abspath(docs):
        for name in RAW_FILES:
            source = os.path.join(outdir, name)
            if os.path.exists(source):
                shutil.copyfile(source, os.path.join(docs, name))
        for name in PLOTS:  # a plot this run cannot draw must not stay from an old one
            stale = os.path.join(docs, name)
            if os.path.exists(stale):
                os.remove(stale)
    stale_markdown = os.path.join(docs, "results.md")  # the page includes report.inc
    if os.path.exists(stale_markdown):
        os.remove(stale_markdown)
    return render(docs, with_markdown=False)
