"""docs/internals.rst says what the code does: its tables are checked against the code.

A learner reads internals.rst as the map of the source. Three of its claims are
facts about the code that can drift as the code changes, so they are read from
the page and compared with the classes themselves:

* "What each strategy overrides": the hooks each strategy mix-in defines (in its
  own class or a base of its own) are exactly the ones the table lists;
* "One request's path": each step is defined in the module the diagram names,
  for a ``TCPServer`` with a ``StreamRequestHandler``, and the connection limits
  come where the diagram puts them relative to ``verify_request()``;
* "The accept gate": every reason the code holds the gate for is in the table
  of who holds, and why.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import pyserve
from pyserve.explain import SERVER_HOOKS
from pyserve.multiplex.server import MultiplexingMixIn
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.testing import serving

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "internals.rst").read_text()

# The server hooks a strategy may override: those explain traces (the stdlib's
# and the loop's own), and the two it does not trace (no request passes them).
HOOKS = (set(SERVER_HOOKS) - {"handle_request", "_child_exited"}) | {
    "handle_timeout",
    "server_close",
}


STRATEGIES = {
    "ThreadingMixIn": pyserve.ThreadingMixIn,
    "ThreadPoolMixIn": ThreadPoolMixIn,
    "ForkingMixIn": pyserve.ForkingMixIn,
    "MultiplexingMixIn": MultiplexingMixIn,
}


def _section(title: str) -> str:
    """The text of the section with this title, up to the next section."""
    start = PAGE.index(f"\n{title}\n") + 1
    following = re.search(r"\n[^\n]+\n-{3,}\n", PAGE[start + len(title) + 1 :])
    end = start + len(title) + 1 + following.start() if following else len(PAGE)
    return PAGE[start:end]


def _overrides_table() -> dict[str, set[str]]:
    """Strategy -> the hooks its row lists (second column of the simple table)."""
    section = _section("What each strategy overrides")
    lines = section.splitlines()
    border = next(line for line in lines if line.startswith("====="))
    columns = [match.span() for match in re.finditer(r"=+", border)]
    (first_start, first_end), (second_start, second_end) = columns[0], columns[1]
    rows: dict[str, set[str]] = {}
    current = ""
    body = [line for line in lines if line.strip() and not line.startswith("=")][1:]
    for line in body:  # the first line is the header
        name = line[first_start:first_end].strip()
        if name:
            current = name.strip("`")
            rows[current] = set()
        rows[current].update(re.findall(r"``(\w+)``", line[second_start:second_end]))
    return rows


def test_the_overrides_table_has_a_row_per_strategy() -> None:
    assert set(STRATEGIES) <= set(_overrides_table())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_overrides_exactly_what_the_table_says(name: str) -> None:
    strategy = STRATEGIES[name]
    own = [klass for klass in strategy.__mro__ if klass is not object]
    defined = set().union(*(vars(klass) for klass in own)) & HOOKS
    assert _overrides_table()[name] == defined


def _path_steps() -> list[tuple[str, str]]:
    """(hook, module file) pairs from the diagram of one request's path."""
    section = _section("One request's path")
    diagram = section[section.rindex("\n", 0, section.index("serve_forever()")) :]
    diagram = diagram[: diagram.index("\n\n")]
    return re.findall(r"^\s+(\w+)\(\)\s+(\w+)\.py\b", diagram, re.MULTILINE)


def test_the_path_diagram_names_its_steps() -> None:
    hooks = [hook for hook, _ in _path_steps()]
    assert {"serve_forever", "_handle_request_noblock", "service_actions"} <= set(hooks)


@pytest.mark.parametrize(("hook", "module"), _path_steps())
def test_each_step_of_the_path_lives_in_the_module_the_diagram_names(
    hook: str, module: str
) -> None:
    owner = pyserve.StreamRequestHandler if hook in ("setup", "handle", "finish") else (
        pyserve.TCPServer
    )
    defined_in = getattr(owner, hook).__module__
    assert defined_in == f"pyserve.{module}", f"{hook}() is defined in {defined_in}"


DEADLINE = 10.0  # seconds for any socket operation


def _limits_checked_before_verify_request() -> bool:
    """Observed: does a connection over ``max_connections`` reach ``verify_request()``?"""
    started = threading.Event()
    release = threading.Event()
    verified: list[Any] = []

    class Hold(pyserve.BaseRequestHandler["Server"]):
        def handle(self) -> None:
            started.set()
            release.wait(DEADLINE)

    class Server(pyserve.ThreadingTCPServer):
        max_connections = 1

        def verify_request(self, request: Any, client_address: Any) -> bool:
            verified.append(client_address)
            return True

    with serving(Server(("127.0.0.1", 0), Hold)) as server:
        address = server.server_address[:2]
        try:
            with socket.create_connection(address, timeout=DEADLINE) as first:
                assert started.wait(DEADLINE)
                with socket.create_connection(address, timeout=DEADLINE) as second:
                    assert second.recv(1) == b""  # over the limit: closed unserved
                assert first.fileno() >= 0
        finally:
            release.set()
    assert len(verified) in (1, 2)
    return len(verified) == 1


def test_the_diagram_puts_the_connection_limits_where_they_are_checked() -> None:
    section = _section("One request's path")
    limits = section.index("(connection limits)")
    verify = section.index("verify_request()")
    assert (limits < verify) == _limits_checked_before_verify_request()


def _hold_reasons_in_code() -> set[str]:
    """Every reason the source holds or closes an accept gate for."""
    reasons: set[str] = set()
    call = re.compile(r"(?:_hold_accept|accept_gate\.hold|accept_gate\.close)\(\s*([^)\s]+)\s*\)")
    for path in (ROOT / "pyserve").rglob("*.py"):
        source = path.read_text()
        for argument in call.findall(source):
            literal = re.fullmatch(r"[\"']([^\"']+)[\"']", argument)
            if literal:
                reasons.add(literal[1])
                continue
            if not re.fullmatch(r"_?[A-Z][A-Z0-9_]*", argument):
                continue  # a wrapper passing its parameter on (loop.py), or a docstring
            constant = re.search(rf"^{re.escape(argument)}\s*=\s*[\"']([^\"']+)[\"']", source, re.M)
            assert constant, f"{path.name}: cannot resolve the hold reason {argument}"
            reasons.add(constant[1])
    return reasons


def test_the_gate_table_lists_every_reason_the_code_holds_it_for() -> None:
    section = _section("The accept gate: one owner of the listener")
    table = section[section.index("Who holds, and why") :]
    listed = set(re.findall(r'^``"([\w-]+)"``', table, re.MULTILINE))
    in_code = _hold_reasons_in_code()
    assert {"pool-full", "draining"} <= in_code  # the scan finds what it should
    assert sorted(in_code - listed) == []
