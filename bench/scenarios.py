"""What is measured: the contenders, the scenarios, and one run of each.

A *target* is a server command (an argv template with ``{py}``, ``{port}``,
``{bench}``) plus a probe saying whether it can run here (uvloop installed?
pyserve has a thread pool? redis-server on PATH?), and which Python runs it:
the servers' Python (``--python``), or for the CPU-bound family the same code on
CPython with the GIL (``--gil-python``) and on free-threaded CPython
(``--free-threaded-python``). A *scenario* names the client that loads it: the C
load generator (echo, connrate, burst, idle, and echo again for the CPU-bound
``cpu-*``), wrk (HTTP) or redis-benchmark (RESP). ``run_one`` starts a fresh server, drives it
once, samples the server's process tree at the load generator's window marks,
stops the server and returns one flat result dict; it never raises for a
failing server, it records ``error`` instead.

Every client run is bounded by count and time: the load generator by its
duration and connect deadlines, wrk by ``-d``, redis-benchmark by ``-n``, and
each by a subprocess timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import machine

BENCH = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.path.join(BENCH, "build", "loadgen")
SERVERS = os.path.join(BENCH, "servers")


@dataclass(frozen=True)
class Target:
    name: str
    family: str  # "echo", "http" or "resp": which scenarios it serves
    argv: tuple[str, ...]
    probe: Optional[str] = None  # Python code that must exit 0 for the target to exist
    binary: Optional[str] = None  # an executable that must be on PATH
    python: str = "server"  # "server", "gil" or "free-threaded": see python_for()


def _echo(module: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("{py}", f"{SERVERS}/echo_socketserver.py", "--module", module, *extra)


POOL_PROBE = "import pyserve, sys; sys.exit(not hasattr(pyserve, 'ThreadPoolTCPServer'))"
RESP_PROBE = "import handlers.resp"
MULTIPLEX_PROBE = "import pyserve, sys; sys.exit(not hasattr(pyserve, 'MultiplexingTCPServer'))"
# The GIL is really off (an extension module imported at start-up could turn it on).
FREE_THREADED_PROBE = "import sys; sys.exit(sys._is_gil_enabled())"
GIL_PROBE = "import sys; sys.exit(not getattr(sys, '_is_gil_enabled', lambda: True)())"
# The CPU-bound family's per-request load (_common.work): ~1.2 ms on CPython 3.13.
CPU_WORK = "5000"


def _cpu(name: str, argv: tuple[str, ...], probe: Optional[str] = None) -> list[Target]:
    """One CPU-bound contender twice: with the GIL and free-threaded."""
    return [
        Target(f"{name}-gil", "cpu", (*argv, "--work", CPU_WORK),
               probe="\n".join(p for p in (probe, GIL_PROBE) if p), python="gil"),
        Target(f"{name}-ft", "cpu", (*argv, "--work", CPU_WORK),
               probe="\n".join(p for p in (probe, FREE_THREADED_PROBE) if p),
               python="free-threaded"),
    ]


TARGETS = [
    Target("stdlib-thread", "echo", _echo("socketserver")),
    Target("stdlib-thread-stream", "echo", _echo("socketserver", ("--handler", "stream"))),
    Target("pyserve-thread", "echo", _echo("pyserve")),
    Target("pyserve-thread-stream", "echo", _echo("pyserve", ("--handler", "stream"))),
    Target("pyserve-pool", "echo", _echo("pyserve", ("--server-class", "ThreadPoolTCPServer")),
           probe=POOL_PROBE),
    Target("pyserve-multiplex", "echo",
           _echo("pyserve", ("--server-class", "MultiplexingTCPServer", "--handler", "callback")),
           probe=MULTIPLEX_PROBE),
    Target("asyncio-proto", "echo", ("{py}", f"{SERVERS}/echo_asyncio.py")),
    Target("asyncio-streams", "echo", ("{py}", f"{SERVERS}/echo_asyncio.py", "--streams")),
    Target("uvloop-proto", "echo", ("{py}", f"{SERVERS}/echo_asyncio.py", "--uvloop"),
           probe="import uvloop"),
    Target("gevent", "echo", ("{py}", f"{SERVERS}/echo_gevent.py"), probe="import gevent"),
    Target("c-epoll", "echo", (f"{BENCH}/build/c_echo",)),
    # not a contender: bare threads in accept(), the floor any Python pool can reach
    Target("python-floor", "echo", ("{py}", f"{SERVERS}/echo_floor.py")),
    Target("stdlib-http", "http", ("{py}", f"{SERVERS}/http_server.py")),
    Target("pyserve-http", "http", ("{py}", f"{SERVERS}/http_server.py", "--module", "pyserve")),
    Target("pyserve-pool-http", "http", ("{py}", f"{SERVERS}/http_server.py", "--module",
                                         "pyserve", "--server-class", "ThreadPoolTCPServer"),
           probe=POOL_PROBE),
    Target("redis-server", "resp", ("redis-server", "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--port"), binary="redis-server"),
    Target("pyserve-resp", "resp", ("{py}", f"{SERVERS}/resp_server.py"), probe=RESP_PROBE),
    *_cpu("pyserve-pool", _echo("pyserve", ("--server-class", "ThreadPoolTCPServer")),
          POOL_PROBE),
    *_cpu("pyserve-thread", _echo("pyserve")),
    *_cpu("asyncio-proto", ("{py}", f"{SERVERS}/echo_asyncio.py")),
]
BASELINE = {"echo": "stdlib-thread", "http": "stdlib-http", "resp": "redis-server",
            "cpu": "pyserve-pool-gil"}

# scenario -> (family, client, parameters)
SCENARIOS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "echo-1": ("echo", "loadgen", {"mode": "echo", "conns": 1}),
    "echo-10": ("echo", "loadgen", {"mode": "echo", "conns": 10}),
    "echo-100": ("echo", "loadgen", {"mode": "echo", "conns": 100}),
    "connrate-10": ("echo", "loadgen", {"mode": "connrate", "conns": 10}),
    # every connection offered at once; the open phase ends when all are served
    "burst-2000": ("echo", "loadgen", {"mode": "idle", "conns": 2000, "inflight": 2000}),
    "idle-5000": ("echo", "loadgen", {"mode": "idle", "conns": 5000, "inflight": 64}),
    # CPU-bound echo (CPU_WORK per message) on 10 connections; the server may use
    # every CPU, since spreading the work over cores is what is measured
    "cpu-10": ("cpu", "loadgen", {"mode": "echo", "conns": 10}),
    "http": ("http", "wrk", {"conns": 10}),
    "resp-P1": ("resp", "redis-benchmark", {"pipeline": 1}),
    "resp-P16": ("resp", "redis-benchmark", {"pipeline": 16}),
}
# scenario -> (metric key, unit, higher is better)
PRIMARY: dict[str, tuple[str, str, bool]] = {
    "echo": ("rps", "round trips/s", True),
    "connrate": ("sps", "sessions/s", True),
    # The open phase ends when every connection was served or its time limit hit:
    # read it with the "served" count (the plots and tables show both).
    "burst": ("connect_s", "s until all served or given up", False),
    "idle": ("kib_per_conn", "KiB per idle connection", False),
    "http": ("rps", "requests/s", True),
    "resp": ("rps", "requests/s", True),
}


def kind(scenario: str) -> str:
    if scenario.startswith("burst"):
        return "burst"
    if scenario.startswith("idle"):
        return "idle"
    if scenario.startswith("resp"):
        return "resp"
    return SCENARIOS[scenario][2].get("mode", scenario)


def python_for(target: Target, opts: Any) -> Optional[str]:
    """The interpreter that runs ``target`` (None: not configured here)."""
    if target.python == "gil":
        return opts.gil_python
    if target.python == "free-threaded":
        return opts.free_threaded_python
    return str(opts.python)


def available(target: Target, python: Optional[str], env: dict[str, str]) -> Optional[str]:
    """None if the target can run here, else why not (shown as n/a)."""
    if python is None:
        return f"no {target.python} Python (see --{target.python}-python)"
    if target.binary and shutil.which(target.binary) is None:
        return f"{target.binary} not installed"
    if target.probe:
        done = subprocess.run([python, "-c", target.probe], env=env, capture_output=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            return "not available in this Python/pyserve"
    return None


def server_argv(target: Target, python: str, port: int, backlog: Optional[int]) -> list[str]:
    argv = [a.format(py=python) for a in target.argv] + [str(port)]
    if backlog is not None:
        if target.name == "c-epoll":
            argv.append(str(backlog))
        elif target.name == "redis-server":
            argv += ["--tcp-backlog", str(backlog)]
        else:
            argv += ["--backlog", str(backlog)]
    return argv


def _loadgen(params: dict[str, Any], port: int, opts: Any) -> tuple[list[str], float]:
    mode = params["mode"]
    argv = [LOADGEN, mode, "-p", str(port), "-c", str(params["conns"]), "-m",
            "-d", str(opts.duration), "-w", str(opts.warmup)]
    if mode == "connrate":
        argv += ["-P", "10000:30999"]  # explicit source ports: see src/loadgen.c
    if mode == "idle":
        hold = 0.2 if params["inflight"] == params["conns"] else opts.duration
        argv[argv.index("-d") + 1] = str(hold)
        argv += ["-i", str(params["inflight"]), "-C", "20", "-S", "5", "-V", "10"]
    return argv, opts.warmup + opts.duration + 60


def _drive_loadgen(argv: list[str], limit: float, cpu: Optional[int],
                   server_pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    proc = subprocess.Popen(machine.pinned(argv, cpu), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marks: dict[str, Any] = {}

    def watch_marks() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("#mark "):
                marks[line.split()[1]] = machine.sample(server_pid)

    watcher = threading.Thread(target=watch_marks, daemon=True)
    watcher.start()
    try:
        # Only the watcher reads stderr; stdout is one JSON line, far below a pipe's
        # buffer, so waiting first cannot deadlock.
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    watcher.join(5)
    if proc.stderr is not None:
        proc.stderr.close()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), marks


def _wrk(port: int, params: dict[str, Any], opts: Any, cpu: Optional[int]) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{params['conns']}", f"-d{max(1, round(opts.duration))}s",
            f"http://127.0.0.1:{port}/hello.txt"]
    out = subprocess.run(machine.pinned(argv, cpu), capture_output=True, text=True,
                         timeout=opts.duration + 60, check=False).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result: dict[str, Any] = {"rps": float(found.group(1)) if found else None}
    result["errors"] = (sum(int(g) for g in errors.groups()) if errors else 0) + (
        int(non2xx.group(1)) if non2xx else 0)
    return result


#: The commands the RESP scenarios time: strings, a list and a hash, as the issue's
#: comparison with redis-server does ("ping" is PING_INLINE and PING_MBULK).
RESP_TESTS = "ping,set,get,lpush,lpop,hset"


def _redis_benchmark(port: int, params: dict[str, Any], opts: Any,
                     cpu: Optional[int]) -> dict[str, Any]:
    pipeline = params["pipeline"]
    requests = opts.resp_requests * (4 if pipeline > 1 else 1)
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", RESP_TESTS,
            "-c", "50", "-n", str(requests), "-P", str(pipeline), "--csv"]
    out = subprocess.run(machine.pinned(argv, cpu), capture_output=True, text=True,
                         timeout=300, check=False).stdout
    tests = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] and not cells[0].startswith("test"):
            try:
                tests[cells[0]] = float(cells[1])
            except ValueError:
                continue
    rps = sum(tests.values()) / len(tests) if tests else None
    return {"rps": rps, "tests": tests, "errors": 0 if tests else 1}


def run_one(target: Target, scenario: str, *, opts: Any, env: dict[str, str], logdir: str,
            rnd: int) -> dict[str, Any]:
    _, client, params = SCENARIOS[scenario]
    port = machine.free_port()
    result: dict[str, Any] = {"scenario": scenario, "target": target.name, "round": rnd}
    argv = server_argv(target, python_for(target, opts) or "python3", port, opts.backlog)
    logpath = os.path.join(logdir, f"{scenario}.{target.name}.r{rnd}.log")
    # CPU-bound servers get every CPU (their point is to use more than one);
    # the others one, with the load generator on another.
    cpus = opts.all_cpus if target.family == "cpu" else opts.server_cpu
    with open(logpath, "wb") as log:
        proc, error = machine.start_server(argv, port, cpus, log, env)
        try:
            if error:
                result["error"] = error
                return result
            base = machine.sample(proc.pid)
            if client == "loadgen":
                lg_argv, limit = _loadgen(params, port, opts)
                lg, marks = _drive_loadgen(lg_argv, limit, opts.client_cpu, proc.pid)
                result.update(lg)
                if "start" in marks and "end" in marks:
                    _attribute(result, base, marks["start"], marks["end"])
            elif client == "wrk":
                result.update(_wrk(port, params, opts, opts.client_cpu))
            else:
                result.update(_redis_benchmark(port, params, opts, opts.client_cpu))
            if client == "loadgen" and "mode" not in result:
                result["error"] = "the load generator reported nothing"
            elif client != "loadgen" and result.get("rps") is None:
                result["error"] = f"{client} reported no rate"
            if proc.poll() is not None:
                result["error"] = f"server exited with status {proc.returncode} during the run"
            return result
        finally:
            machine.stop_server(proc)
            time.sleep(0.2)  # let the port's sockets settle before the next server


def _attribute(result: dict[str, Any], base: dict[str, Any], start: dict[str, Any],
               end: dict[str, Any]) -> None:
    """Server CPU, memory and threads during the load generator's window."""
    wall = end["t"] - start["t"]
    cpu = end["cpu_s"] - start["cpu_s"]
    result["server_cpu_util"] = round(cpu / wall, 3) if wall > 0 else None
    result["rss_mib"] = round(end["rss_kib"] / 1024, 1)
    result["threads"] = end["threads"]
    served = result.get("served")
    if served:
        result["kib_per_conn"] = round((end["pss_kib"] - base["pss_kib"]) / served, 1)
