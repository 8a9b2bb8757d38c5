"""Smoke tests of bench/: its pieces run and its report says what it measured.

Fast (a few seconds): the C load generator is built with make and drives a
pyserve echo server for 0.2 s; shutdown() is timed in-process a few times; the
report turns known numbers into the right ratios and pass/fail verdicts. The
benchmark itself (minutes of load) is run with ``python3 bench/run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

import pyserve
from pyserve.testing import serving

X = "\N{MULTIPLICATION SIGN}"  # the report writes a ratio as 1.50 then this sign

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import inproc  # noqa: E402 - bench/ is a directory of scripts, put on the path above
import report  # noqa: E402
from conftest import Echo  # noqa: E402
from peers import require_binary, require_matplotlib  # noqa: E402


@pytest.fixture(scope="module")
def loadgen() -> str:
    # bench/ builds its load generator with make and a C compiler.
    require_binary("make", "make")
    require_binary(os.environ.get("CC", "cc"), "gcc")
    subprocess.run(["make", "-s", "-C", BENCH], check=True, timeout=120)
    return os.path.join(BENCH, "build", "loadgen")


def test_loadgen_drives_a_pyserve_echo_server_without_errors(loadgen: str) -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    with serving(server):
        port = server.server_address[1]
        done = subprocess.run(
            [loadgen, "echo", "-p", str(port), "-c", "4", "-d", "0.2", "-w", "0"],
            capture_output=True, text=True, timeout=30, check=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["connected"] == 4
    assert result["rt"] > 0
    assert result["errors"] == 0


def test_shutdown_latency_is_measured_for_the_requested_count() -> None:
    measured = inproc.measure_shutdown(pyserve, "ThreadingTCPServer", count=3, budget=20.0)
    assert measured["samples"] == 3
    assert 0 < measured["median_ms"] <= measured["max_ms"]


def run_row(scenario: str, target: str, **values: Any) -> dict[str, Any]:
    return {"scenario": scenario, "target": target, "round": 1, **values}


def sample_run(tmp_path: Any) -> str:
    raw = [
        run_row("echo-10", "stdlib-thread", rps=1000.0),
        run_row("echo-10", "pyserve-thread", rps=1500.0),
        run_row("echo-10", "pyserve-thread-stream", rps=900.0),
        run_row("echo-10", "c-epoll", rps=5000.0, client_cpu_util=0.5),
        run_row("connrate-10", "stdlib-thread", sps=100.0),
        run_row("connrate-10", "pyserve-pool", error="server did not listen within 20 s"),
    ]
    inproc_rows = [{"module": "pyserve", "server_class": "ThreadingTCPServer", "round": 1,
                    "shutdown": {"samples": 9, "median_ms": 0.1, "p99_ms": 0.2, "max_ms": 0.3},
                    "drain": None}]
    meta = {"started": "now", "facts": {"cpu": "test"}, "rounds": 1, "duration": 1,
            "backlog": 128, "targets": ["stdlib-thread", "pyserve-thread",
                                        "pyserve-thread-stream", "pyserve-pool", "c-epoll"],
            "scenarios": ["echo-10", "connrate-10"], "unavailable": {"uvloop-proto": "absent"}}
    for name, rows in (("raw.jsonl", raw), ("inproc.jsonl", inproc_rows)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return str(tmp_path)


def verdicts(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[3] in ("PASS", "FAIL", "n/a"):
            out[cells[0]] = f"{cells[1]} {cells[3]}"
    return out


def test_report_marks_each_target_from_ratios_of_the_same_run(tmp_path: Any) -> None:
    text = report.render(sample_run(tmp_path))
    marks = verdicts(text)
    assert marks["raw echo, echo-10: pyserve / stdlib ThreadingTCPServer"] == f"1.50{X} PASS"
    stream = "StreamRequestHandler echo, echo-10: pyserve stream / stdlib raw"
    assert marks[stream] == f"0.90{X} FAIL"
    assert marks["pool connrate-10: ThreadPoolTCPServer / stdlib"] == "n/a n/a"
    assert marks["shutdown() latency, pyserve (median)"] == "0.100 ms PASS"
    assert "uvloop-proto: absent" in text
    assert text.startswith((tmp_path / "results.md").read_text())


def test_report_says_when_the_load_generator_has_headroom(tmp_path: Any) -> None:
    text = report.render(sample_run(tmp_path))
    row = f"| echo-10 | 5,000 | 1,500 (pyserve-thread) | 3.33{X} | 0.50 | the load generator "
    assert row + "has headroom |" in text


def test_report_draws_png_plots_when_matplotlib_is_installed(tmp_path: Any) -> None:
    require_matplotlib()
    report.render(sample_run(tmp_path))
    for name in ("echo.png", "connections.png", "shutdown.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
