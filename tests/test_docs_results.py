"""The benchmark report the docs show (docs/results.rst) says what was measured.

bench/report.py writes the report twice: Markdown for a terminal and reST
(``report.inc``) for the docs page, as real tables. These tests feed it a small
known run and read what it wrote: the reST is valid (parsed by docutils), every
target keeps its PASS/FAIL cell, the machine's load average is on the page, and
the plots' labels say how many burst connections were served and never show
"-0.00".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from peers import require_matplotlib, require_module

BENCH = Path(__file__).resolve().parent.parent / "bench"
DOCS_RESULTS = BENCH.parent / "docs" / "results"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402 - bench/ is a directory of scripts, put on the path above

X = "\N{MULTIPLICATION SIGN}"


def sample_run(directory: Path) -> str:
    raw = [
        {"scenario": "echo-10", "target": "stdlib-thread", "round": 1, "rps": 1000.0},
        {"scenario": "echo-10", "target": "pyserve-thread", "round": 1, "rps": 1500.0},
        {"scenario": "echo-10", "target": "c-epoll", "round": 1, "rps": 5000.0,
         "client_cpu_util": 0.5},
        {"scenario": "burst-2000", "target": "stdlib-thread", "round": 1, "connect_s": 0.9,
         "served": 2000, "threads": 2001},
        {"scenario": "burst-2000", "target": "pyserve-pool", "round": 1, "connect_s": 5.07,
         "served": 32, "threads": 33},
        {"scenario": "idle-5000", "target": "c-epoll", "round": 1, "kib_per_conn": -0.001,
         "served": 5000},
        {"scenario": "idle-5000", "target": "stdlib-thread", "round": 1, "kib_per_conn": 23.0,
         "served": 5000},
    ]
    inproc = [{"module": "pyserve", "server_class": "ThreadingTCPServer", "round": 1,
               "shutdown": {"samples": 9, "median_ms": 0.1, "p99_ms": 0.2, "max_ms": 0.3},
               "drain": None}]
    meta = {"started": "20261206-120000",
            "facts": {"cpu": "test_cpu*", "cores": 2,
                      "loadavg_before": "7.50 3.25 1.00 2/99 123",
                      "loadavg_after": "1.25 2.50 1.10 1/98 456"},
            "rounds": 1, "duration": 1, "backlog": 4096,
            "targets": ["stdlib-thread", "pyserve-thread", "pyserve-pool", "c-epoll"],
            "scenarios": ["echo-10", "burst-2000", "idle-5000"],
            "unavailable": {"uvloop-proto": "uvloop is not installed"}}
    for name, rows in (("raw.jsonl", raw), ("inproc.jsonl", inproc)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "meta.json").write_text(json.dumps(meta))
    return str(directory)


def rendered_rst(tmp_path: Path) -> str:
    report.render(sample_run(tmp_path))
    return (tmp_path / "report.inc").read_text()


def test_rst_report_is_valid_restructuredtext(tmp_path: Path) -> None:
    docutils_core = require_module("docutils.core", "docutils: tox.ini installs it")
    text = "Results\n=======\n\n" + rendered_rst(tmp_path)
    problems: list[str] = []

    class Collect:
        def write(self, message: str) -> None:
            problems.append(message)

    docutils_core.publish_doctree(
        text, settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": Collect()})
    assert problems == []


def list_table_rows(block: str, columns: int) -> list[list[str]]:
    cells = [m[1] or "" for m in re.finditer(r"^   (?:\* |  )-(?: (.*))?$", block, re.MULTILINE)]
    return [cells[i:i + columns] for i in range(0, len(cells), columns)]


def test_rst_report_keeps_every_target_verdict_in_a_table_cell(tmp_path: Path) -> None:
    text = rendered_rst(tmp_path)
    targets = text.split(".. list-table::")[2]  # the machine's table, then the targets'
    rows = list_table_rows(targets.split("\n\n", 2)[1], 4)
    assert rows[0] == ["target", "measured", "goal", "result"]
    verdicts = {row[0]: row[3] for row in rows[1:]}
    assert verdicts["raw echo, echo-10: pyserve / stdlib ThreadingTCPServer"] == "PASS"
    assert verdicts["pool, burst-2000 held open: threads"] == "PASS"
    assert set(verdicts.values()) <= {"PASS", "FAIL", "n/a"}


def test_rst_report_shows_the_load_average_before_and_after(tmp_path: Path) -> None:
    text = rendered_rst(tmp_path)
    assert "7.50 / 3.25 / 1.00 when the run began" in text
    assert "1.25 / 2.50 / 1.10 when it ended" in text
    assert ".. warning::" in text  # 7.5 on 2 cores: busy


def test_rst_report_escapes_markup_from_the_data(tmp_path: Path) -> None:
    text = rendered_rst(tmp_path)
    assert "test\\_cpu\\*" in text


def test_markdown_report_shows_the_load_average_too(tmp_path: Path) -> None:
    text = report.render(sample_run(tmp_path))
    assert "7.50 / 3.25 / 1.00 when the run began" in text


def test_burst_label_says_how_many_were_served() -> None:
    require_matplotlib()
    import plots  # noqa: PLC0415 - imports matplotlib

    raw = [
        {"scenario": "burst-2000", "target": "pyserve-pool", "round": 1, "connect_s": 5.07,
         "served": 32},
        {"scenario": "burst-2000", "target": "stdlib-thread", "round": 1, "connect_s": 0.9,
         "served": 2000},
    ]
    table = report.Table(raw)
    assert plots.label(table, "burst-2000", "pyserve-pool", 5.07) == (
        "5.07 s, gave up: 32 of 2,000 served")
    assert plots.label(table, "burst-2000", "stdlib-thread", 0.9) == "0.90 s, all 2,000 served"


def test_a_tiny_negative_figure_is_labelled_zero() -> None:
    require_matplotlib()
    import plots  # noqa: PLC0415

    assert plots.number(-0.001) == "0"
    assert plots.number(-0.004) == "0"
    assert plots.number(23.0) == "23.00"
    assert plots.number(1234.5) == "1,234"


def test_publish_puts_report_plots_and_raw_data_where_the_page_reads_them(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    docs = tmp_path / "docs-results"
    report.publish(sample_run(run), str(docs))
    assert (docs / "report.inc").read_text().startswith(".. This file is generated")
    for name in report.RAW_FILES:
        assert (docs / name).read_bytes() == (run / name).read_bytes()
    assert not (docs / "results.md").exists()
    again = report.publish(str(docs), str(docs))  # the page renders again from itself
    assert "raw echo, echo-10" in again


def test_the_docs_page_includes_the_generated_report() -> None:
    page = (BENCH.parent / "docs" / "results.rst").read_text()
    assert ".. include:: results/report.inc" in page
    assert (DOCS_RESULTS / "report.inc").exists()
    for name in report.RAW_FILES:
        assert (DOCS_RESULTS / name).exists(), f"no docs/results/{name}: cannot be re-rendered"
    assert "literalinclude" not in page


def test_resp_targets_are_judged_per_test_with_the_issues_goals() -> None:
    rows = [
        {"scenario": scenario, "target": target, "round": 1, "rps": 1.0,
         "tests": {"SET": rate, "GET": rate * factor}}
        for scenario, factor in (("resp-P1", 0.5), ("resp-P16", 1.0))
        for target, rate in (("redis-server", 100.0), ("pyserve-resp", 72.0))
    ]
    targets = report.targets_table(report.Table(rows), [])
    verdicts = {name: (goal, verdict) for name, _, goal, verdict in targets
                if name.startswith("RESP")}
    # 0.72 of redis-server passes -P 1's 0.7 and -P 16's 0.5; GET at -P 1 is not
    # compared with SET's figure but with redis-server's GET.
    assert verdicts == {
        "RESP resp-P1 SET: pyserve store / redis-server": (f"≥ 0.7{X}", "PASS"),
        "RESP resp-P1 GET: pyserve store / redis-server": (f"≥ 0.7{X}", "PASS"),
        "RESP resp-P16 SET: pyserve store / redis-server": (f"≥ 0.5{X}", "PASS"),
        "RESP resp-P16 GET: pyserve store / redis-server": (f"≥ 0.5{X}", "PASS"),
    }
    rows[1]["tests"]["GET"] = 30.0  # pyserve's -P 1 GET: 0.6 of redis-server's 50
    targets = report.targets_table(report.Table(rows), [])
    assert [verdict for name, _, _, verdict in targets if "P1 GET" in name] == ["FAIL"]
