"""Fault matrix: every user hook raising, on every strategy (issue "Core you can trust").

Each cell serves one faulty client (the hook raises for it alone, see
tests/faults.py), then classifies the server: ``serve_forever()`` ended with the
exception, or it still serves a new client. The expected outcome is the
stdlib's, taken from its ``_handle_request_noblock()`` and mix-ins:

* ``get_request()`` and ``verify_request()`` run in the loop outside any
  ``try``: their exception ends ``serve_forever()``;
* ``process_request()``, ``finish_request()``, the handler's ``handle()`` and
  ``finish()``, and ``shutdown_request()`` are inside the request's ``try`` (in the
  loop, the request thread or the child): the exception is reported and serving
  goes on;
* ``handle_error()`` raising: in the synchronous server it escapes the loop's
  ``except`` clause and ends ``serve_forever()``; in a request thread or a child
  it ends only that request.

The pool (either mode) behaves as the threading server, and the multiplexing
server as the threading server on its callbacks (``data_received`` plays
``handle``, ``connection_lost`` plays ``finish``; it never calls
``finish_request``). Where the stdlib has the strategy, the same cell runs on it
and must agree with the table: the table is checked, not assumed.

Whatever the outcome, never deaf, and nothing leaks: no thread, descriptor, child
process or (pyserve) registry entry outlives the server.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import pytest
from faults import (
    ALL_HOOKS,
    DEAF,
    ENDED,
    IMPLEMENTATIONS,
    SERVES,
    STRATEGIES,
    HookFault,
    Leaks,
    Running,
    build_server,
    cells,
    fault_client,
    outcome_after,
    round_trip,
    thread_exceptions,
)

import pyserve

# Forking from a process that runs threads (pytest's, the servers') is the point.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def expected_outcome(strategy: str, hook: str) -> str:
    if hook in ("get_request", "verify_request"):
        return ENDED
    if hook == "handle_error" and strategy == "sync":
        return ENDED
    return SERVES


def _matrix() -> list[object]:
    params = []
    for impl, strategy in cells():
        for hook in ALL_HOOKS:
            if hook == "finish_request" and STRATEGIES[strategy].multiplexed:
                continue  # a multiplexing server never calls it
            params.append(pytest.param(impl, strategy, hook, id=f"{impl}-{strategy}-{hook}"))
    return params


@pytest.mark.parametrize(("impl_name", "strategy_name", "hook"), _matrix())
def test_hook_exception_ends_serving_loudly_or_is_reported_and_serving_goes_on(
    impl_name: str, strategy_name: str, hook: str
) -> None:
    strategy = STRATEGIES[strategy_name]
    leaks = Leaks()
    server = build_server(IMPLEMENTATIONS[impl_name], strategy, hook)
    with thread_exceptions() as thread_errors, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        running = Running(server)
        try:
            with fault_client(server) as client:
                client.sendall(b"fault\n")
                outcome = outcome_after(
                    running, client, lambda: server.reported or thread_errors
                )
        finally:
            running.stop()
    expected = expected_outcome(strategy_name, hook)
    assert outcome != DEAF, "alive but deaf: serve_forever() runs and nobody accepts"
    assert outcome == expected, f"{outcome} (serve_forever raised {running.error!r})"
    if outcome == ENDED:
        assert isinstance(running.error, HookFault), running.error
    else:
        assert running.error is None
        if not strategy.forks:  # a child reports in its own process
            reported = server.reported + thread_errors
            assert any("injected fault" in text for text in reported), reported
    leaks.check(server)


@pytest.mark.parametrize("hook", ["verify_request", "get_request"])
def test_workers_accept_pool_hook_exception_ends_serve_forever_not_a_deaf_server(
    hook: str,
) -> None:
    """Bug 1 ("deaf but alive"): in the pool's default workers-accept mode the
    exception killed the worker at the listener while serve_forever() kept running
    and nobody accepted again. As in the stdlib, the threading server and the
    hand-off pool, the exception must end serve_forever()."""
    leaks = Leaks()
    server = build_server(pyserve, STRATEGIES["pool-accept"], hook)
    running = Running(server)
    try:
        with fault_client(server) as client:
            client.sendall(b"fault\n")
            outcome = outcome_after(running, client)
    finally:
        running.stop()
    assert outcome == ENDED, f"{outcome}: serve_forever() must end with the hook's exception"
    assert isinstance(running.error, HookFault)
    leaks.check(server)


class HookOverlap:
    """Who is inside one connection's accept-path hooks, from ``get_request()``'s
    entry to ``verify_request()``'s return, and the most threads ever in at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.connections = 0
        self.threads: set[int] = set()

    def enter(self) -> None:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.threads.add(threading.get_ident())

    def leave(self, connection: bool) -> None:
        with self.lock:
            self.inside -= 1
            self.connections += connection


#: Long enough that a second thread in the hooks would be caught inside with the
#: first (they release the GIL while they sleep); short enough for 40 connections.
HOOK_PAUSE = 0.002
CLIENTS, CONNECTS_EACH = 8, 5


def _overlap_cells() -> list[object]:
    params = [pytest.param(i, s, False, id=f"{i}-{s}") for i, s in cells()]
    # The pool as shipped (workers_accept=None): these overrides keep it in the loop.
    params.append(pytest.param("pyserve", "pool-accept", True, id="pyserve-pool-default"))
    return params


@pytest.mark.parametrize(("impl_name", "strategy_name", "pool_default"), _overlap_cells())
def test_accept_path_hooks_run_one_connection_at_a_time_under_concurrent_connects(
    impl_name: str, strategy_name: str, pool_default: bool
) -> None:
    """As in the stdlib, where the loop thread calls them: ``get_request()`` then
    ``verify_request()`` of one connection end before the next connection's
    ``get_request()`` begins, however many clients connect at once. Where pool
    workers accept (``workers_accept=True``) they take turns; the pool as shipped
    leaves overridden accept hooks to the loop thread, as the stdlib does."""
    strategy = STRATEGIES[strategy_name]
    impl = IMPLEMENTATIONS[impl_name]
    base = strategy.server_class(impl)
    record = HookOverlap()

    def get_request(self: Any) -> Any:
        record.enter()
        try:
            taken = base.get_request(self)
        except BaseException:
            record.leave(connection=False)  # nothing taken (a lost race: EAGAIN)
            raise
        time.sleep(HOOK_PAUSE)
        return taken

    def verify_request(self: Any, request: Any, client_address: Any) -> bool:
        try:
            time.sleep(HOOK_PAUSE)
            return bool(base.verify_request(self, request, client_address))
        finally:
            record.leave(connection=True)

    leaks = Leaks()
    hooks = {"get_request": get_request, "verify_request": verify_request}
    if pool_default:
        hooks["workers_accept"] = None
    server = build_server(impl, strategy, extra=hooks)
    replies: list[bytes] = []

    def client(index: int) -> None:
        for turn in range(CONNECTS_EACH):
            replies.append(round_trip(server.server_address, f"{index}-{turn}\n".encode()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        running = Running(server)
        try:
            clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join(60)
            assert not any(thread.is_alive() for thread in clients), "a client hung"
        finally:
            running.stop()
    assert running.error is None
    assert len(replies) == CLIENTS * CONNECTS_EACH
    assert record.connections == CLIENTS * CONNECTS_EACH
    assert record.most == 1, f"{record.most} threads were inside the accept-path hooks at once"
    if pool_default:  # the stdlib's threads too: the loop ran every one of them
        assert record.threads == {running.thread.ident}
    elif strategy_name == "pool-accept":  # its workers ran them, taking turns
        assert running.thread.ident not in record.threads
    leaks.check(server)
