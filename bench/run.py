#!/usr/bin/env python3
"""pyserve's benchmark suite: one command, a markdown report and PNG plots.

    python3 bench/run.py                       # everything, ~15-25 min
    python3 bench/run.py --duration 2 --rounds 2 --scenarios echo-10,connrate-10

It builds the C tools (make, cc), then for each scenario runs every contender
once per round, interleaved (A B C A B C ...), each time in a fresh server
process pinned to one CPU with the client pinned to another. Contenders: the
stdlib's socketserver, pyserve (same handler code), asyncio, and uvloop and
gevent when the server Python has them, plus a native C epoll server that shows
where the load generator itself tops out. HTTP uses wrk, RESP redis-benchmark
(Debian packages ``wrk``, ``redis-server``, ``redis-tools``); what is missing is
reported as n/a, never silently dropped. Then ``shutdown()`` latency and drain
time are measured in-process (inproc.py).

Output directory (``--out``, default bench/results/<timestamp>): ``results.md``
(machine facts and load average, pass/fail against the targets, every
scenario's medians and ratios), the same as reST (``report.inc``), ``*.png``, and
the raw data (``raw.jsonl``, ``inproc.jsonl``, ``meta.json``, server logs) so
``--report DIR`` can re-render it.

``--docs`` also publishes the run as the documentation's results page: the reST
report, the plots and the raw data go to docs/results/ (the page is
docs/results.rst). ``python3 bench/run.py --docs`` is the one command that
refreshes the page; ``python3 bench/run.py --report docs/results --docs``
renders the committed data again (after a change to the report's code).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

import machine
import report
from scenarios import BENCH, LOADGEN, SCENARIOS, TARGETS, available, python_for, run_one

PROJECT = os.path.dirname(BENCH)
DOCS_RESULTS = os.path.join(PROJECT, "docs", "results")  # what docs/results.rst shows
# Where shared/tools/build-free-threaded-python.sh installs CPython 3.13t.
FREE_THREADED_DEFAULT = "/opt/python3.13t/bin/python3.13t"
CLIENTS = {"wrk": "wrk", "redis-benchmark": "redis-benchmark"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="all",
                        help="comma list of contenders (default all): "
                        + ",".join(t.name for t in TARGETS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma list (default all), or 'none' for lifecycle only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that runs the servers (default: this one)")
    parser.add_argument("--gil-python", default=None,
                        help="CPython with the GIL for the cpu-* scenarios (default: "
                        "python3.13 on PATH, else --python)")
    parser.add_argument("--free-threaded-python", default=None,
                        help="free-threaded CPython for the cpu-* scenarios (default: "
                        f"{FREE_THREADED_DEFAULT} when it exists, else n/a)")
    parser.add_argument("--backlog", default="somaxconn",
                        help="listen backlog, the same for every server so the comparison "
                        "measures their code: a number, 'somaxconn' (the kernel's maximum, "
                        "pyserve's default; the default here), or 'default' for each "
                        "library's own (the stdlib's is 5)")
    parser.add_argument("--resp-requests", type=int, default=100000,
                        help="redis-benchmark -n per test (x4 when pipelined)")
    parser.add_argument("--shutdown-count", type=int, default=200)
    parser.add_argument("--shutdown-budget", type=float, default=10.0,
                        help="seconds of shutdown() runs per server and round")
    parser.add_argument("--grace", type=float, default=1.0, help="drain grace period")
    parser.add_argument("--no-lifecycle", action="store_true",
                        help="skip the shutdown()/drain measurements")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--report", metavar="DIR", help="only re-render DIR's report")
    parser.add_argument("--docs", action="store_true",
                        help="also publish the report, plots and raw data to docs/results/")
    opts = parser.parse_args()
    if opts.gil_python is None:
        opts.gil_python = _runs(shutil.which("python3.13")) or opts.python
    if opts.free_threaded_python is None and os.access(FREE_THREADED_DEFAULT, os.X_OK):
        opts.free_threaded_python = FREE_THREADED_DEFAULT
    if opts.backlog == "default":
        opts.backlog = None
    elif opts.backlog == "somaxconn":
        opts.backlog = int((machine.read("/proc/sys/net/core/somaxconn") or "128").strip())
    else:
        opts.backlog = int(opts.backlog)
    return opts


def _runs(python: Optional[str]) -> Optional[str]:
    """``python`` if it starts (a pyenv shim of a version not selected does not)."""
    if python is None:
        return None
    try:
        done = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if done.returncode == 0 else None


def build() -> None:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        sys.exit("bench needs make and a C compiler (cc) to build its load generator")
    subprocess.run(["make", "-s", "-C", BENCH], check=True)


def lifecycle(opts: argparse.Namespace, env: dict[str, str], pool: bool,
              path: str) -> None:
    servers = [("socketserver", "ThreadingTCPServer"), ("pyserve", "ThreadingTCPServer")]
    if pool:
        servers.append(("pyserve", "ThreadPoolTCPServer"))
    loadgen = shlex.join(machine.pinned([LOADGEN], opts.client_cpu))
    with open(path, "a") as out:
        for rnd in range(1, opts.rounds + 1):
            for module, cls in servers:
                argv = [opts.python, os.path.join(BENCH, "inproc.py"), module,
                        "--server-class", cls, "--count", str(opts.shutdown_count),
                        "--budget", str(opts.shutdown_budget), "--grace", str(opts.grace),
                        "--loadgen", loadgen]
                try:
                    done = subprocess.run(
                        machine.pinned(argv, opts.server_cpu), env=env, capture_output=True,
                        text=True, timeout=opts.shutdown_budget + opts.grace + 90, check=False)
                except subprocess.TimeoutExpired:
                    log(f"lifecycle r{rnd} {module} {cls}: timed out")
                    continue
                lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
                if not lines:
                    log(f"lifecycle r{rnd} {module} {cls}: failed: {done.stderr[-300:]}")
                    continue
                result = json.loads(lines[-1])
                result["round"] = rnd
                out.write(json.dumps(result) + "\n")
                out.flush()
                drain = result["drain"]
                log(f"lifecycle r{rnd} {module:12s} {cls:20s} shutdown median "
                    f"{result['shutdown']['median_ms']} ms, drain "
                    f"{drain['drain_s'] if drain else 'n/a'}")


def select(opts: argparse.Namespace, env: dict[str, str]) -> tuple[list[Any], list[str],
                                                                   dict[str, str]]:
    """The targets and scenarios to run, and what is n/a here and why."""
    wanted = [t.strip() for t in opts.targets.split(",")] if opts.targets != "all" else None
    scenarios = [] if opts.scenarios == "none" else [s.strip() for s in
                                                     opts.scenarios.split(",")]
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    known = {t.name for t in TARGETS}
    for name in wanted or []:
        if name not in known:
            sys.exit(f"unknown target {name!r}; known: {', '.join(sorted(known))}")
    unavailable: dict[str, str] = {}
    targets = []
    for t in TARGETS:
        if wanted is not None and t.name not in wanted:
            continue
        why = available(t, python_for(t, opts), env)
        if why:
            unavailable[t.name] = why
        else:
            targets.append(t)
    for s in list(scenarios):
        client = SCENARIOS[s][1]
        if client in CLIENTS and shutil.which(CLIENTS[client]) is None:
            unavailable[s] = f"{client} is not installed"
            scenarios.remove(s)
    return targets, scenarios, unavailable


def main() -> None:
    opts = parse()
    if opts.report:
        if opts.docs:
            print(report.publish(opts.report, DOCS_RESULTS), end="")
        else:
            print(report.render(opts.report), end="")
        return
    machine.raise_fd_limit()
    build()
    opts.all_cpus = machine.all_cpus()  # before this runner pins itself
    opts.server_cpu, opts.client_cpu = machine.pick_cpus()
    if opts.client_cpu is not None:
        os.sched_setaffinity(0, {opts.client_cpu})  # keep this runner off the server's CPU
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT, env.get("PYTHONPATH")) if p)

    targets, scenarios, unavailable = select(opts, env)
    pool = "pyserve-pool" in [t.name for t in targets]

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = opts.out or os.path.join(BENCH, "results", stamp)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    for name in ("raw.jsonl", "inproc.jsonl"):
        open(os.path.join(outdir, name), "w").close()
    meta: dict[str, Any] = {
        "started": stamp, "facts": machine.facts(opts.python), "rounds": opts.rounds,
        "duration": opts.duration, "backlog": opts.backlog or "each library's default",
        "targets": [t.name for t in targets], "scenarios": scenarios,
        "unavailable": unavailable, "cpus": [opts.server_cpu, opts.client_cpu],
    }
    if any(t.family == "cpu" for t in targets):
        meta["facts"]["python_gil"] = opts.gil_python
        meta["facts"]["python_free_threaded"] = opts.free_threaded_python
    with open(os.path.join(outdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"output: {outdir}")
    for name, why in unavailable.items():
        log(f"n/a: {name}: {why}")

    began = time.monotonic()
    with open(os.path.join(outdir, "raw.jsonl"), "a") as raw:
        for scen in scenarios:
            family = SCENARIOS[scen][0]
            for rnd in range(1, opts.rounds + 1):
                for target in [t for t in targets if t.family == family]:
                    result = run_one(target, scen, opts=opts, env=env, logdir=logdir, rnd=rnd)
                    raw.write(json.dumps(result) + "\n")
                    raw.flush()
                    shown = {k: result.get(k) for k in ("rps", "sps", "served", "connect_s",
                                                        "kib_per_conn") if k in result}
                    log(f"[{time.monotonic() - began:5.0f}s] {scen:11s} r{rnd} "
                        f"{target.name:22s} {shown} {result.get('error', '')}")
    if not opts.no_lifecycle:
        lifecycle(opts, env, pool, os.path.join(outdir, "inproc.jsonl"))
    meta["elapsed_s"] = round(time.monotonic() - began, 1)
    meta["facts"]["loadavg_after"] = (machine.read("/proc/loadavg") or "").strip()
    with open(os.path.join(outdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(report.render(outdir), end="")
    log(f"done in {meta['elapsed_s']} s: {outdir}/results.md and *.png")
    if opts.docs:
        report.publish(outdir, DOCS_RESULTS)
        log(f"published to {DOCS_RESULTS} (the docs' results page)")


if __name__ == "__main__":
    main()
