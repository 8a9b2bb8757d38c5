"""Races around the listener: holds from many threads, and shutdown() from a signal.

Read from the code (issue "Core you can trust", item 7) and proved or disproved
here by stress, bounded in count and time:

* holding and releasing the listener (``_hold_accept``/``_release_accept``, which
  the pool, the fork table, accept back-off and drain call from their threads) is
  check-then-act; whatever the interleaving, once every holder has released, the
  loop must watch the listener again: a client is served;
* accept back-off in the workers-accept pool: a worker's EMFILE back-off
  (schedule a resume, then hold) may interleave with the loop's release of an
  expired back-off, leaving the listener held with no resume scheduled;
* ``shutdown()`` called by a signal handler that interrupts the serving thread
  while it holds the loop's (non-reentrant) wake-up lock must not deadlock.

A deadlock must fail, not hang CI: the signal case runs in a subprocess whose
own watchdog (faulthandler) dumps every thread and exits, under the scenario's
kill deadline.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any, Callable

import pytest
from conftest import ScenarioResult
from faults import (
    SERVE_DEADLINE,
    STRATEGIES,
    TIMEOUT,
    Leaks,
    Running,
    build_server,
    round_trip,
    serves,
    wait_until,
)

import pyserve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads

HOLDERS = 8
ROUNDS = 500
ROUNDS_SIGNAL = 20


@pytest.mark.parametrize(
    "strategy_name", ["thread", "pool-accept", "pool-handoff", "fork", "multiplex", "multiplex-io"]
)
def test_listener_is_watched_again_after_concurrent_holds_and_releases(
    strategy_name: str,
) -> None:
    leaks = Leaks()
    server = build_server(pyserve, STRATEGIES[strategy_name])
    running = Running(server)
    try:
        start = threading.Barrier(HOLDERS)

        def hold_and_release(index: int) -> None:
            reasons = (f"stress-{index}", f"stress-shared-{index % 2}")
            start.wait(TIMEOUT)
            for round_ in range(ROUNDS):
                reason = reasons[round_ % 2]
                server._hold_accept(reason)
                server._release_accept(reason)

        holders = [
            threading.Thread(target=hold_and_release, args=(i,), daemon=True)
            for i in range(HOLDERS)
        ]
        for thread in holders:
            thread.start()
        for thread in holders:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in holders)
        assert serves(running), "every hold was released, yet nobody accepts"
    finally:
        running.stop()
    leaks.check(server)


def _emfile_storm_get_request(self: Any) -> Any:
    with self.emfile_lock:
        fail = self.emfile_left > 0
        self.emfile_left -= fail
    if fail:
        raise OSError(errno.EMFILE, "Too many open files")
    return super(type(self), self).get_request()


@pytest.mark.parametrize(
    "strategy_name", ["pool-accept", "pool-handoff", "thread", "multiplex", "multiplex-io"]
)
def test_accept_backoff_storm_from_many_threads_never_leaves_the_listener_held(
    strategy_name: str,
) -> None:
    leaks = Leaks()
    server = build_server(
        pyserve,
        STRATEGIES[strategy_name],
        extra={
            "get_request": _emfile_storm_get_request,
            "accept_backoff_initial": 0.0001,
            "accept_backoff_max": 0.001,
        },
    )
    server.emfile_lock = threading.Lock()
    server.emfile_left = 400
    running = Running(server)
    failures: list[str] = []
    try:

        def client(index: int) -> None:
            for round_ in range(5):
                payload = b"%d-%d\n" % (index, round_)
                try:
                    if round_trip(server.server_address, payload, SERVE_DEADLINE) != payload:
                        failures.append(f"client {index} round {round_}: wrong echo")
                except OSError as exc:
                    failures.append(f"client {index} round {round_}: {exc!r}")

        clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(TIMEOUT * 3)
        assert failures == []
        assert serves(running), "the listener stayed held after the EMFILE storm"
    finally:
        running.stop()
    leaks.check(server)


def _slow_verify_request(self: Any, request: Any, client_address: Any) -> bool:
    time.sleep(0.01)  # workers that accept queue behind it for their turn at the hooks
    return True


#: shutdown() with workers waiting their turn at the hooks: a few hooks' worth of
#: waiting, plus a loaded CI machine's scheduling.
SHUTDOWN_BOUND = 2.0


@pytest.mark.parametrize("strategy_name", ["pool-accept", "pool-handoff", "thread"])
def test_shutdown_is_prompt_while_clients_keep_connecting_through_a_slow_verify_request(
    strategy_name: str,
) -> None:
    """Clients connect without pause and verify_request() takes 10 ms, so workers
    that accept wait on one another at the hooks; shutdown() still returns
    promptly, serve_forever() ends without an error, and nothing leaks."""
    leaks = Leaks()
    server = build_server(
        pyserve, STRATEGIES[strategy_name], extra={"verify_request": _slow_verify_request}
    )
    running = Running(server)
    stop_clients = threading.Event()
    served = [0]

    def client() -> None:
        for _ in range(1000):  # bounded; stopped long before
            if stop_clients.is_set():
                return
            try:
                round_trip(server.server_address, b"x\n", SERVE_DEADLINE)
                served[0] += 1
            except OSError:
                return  # the listener closed under it: the test is over

    clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: served[0] >= 20, what="20 connections served")
        started = time.monotonic()
        server.shutdown()
        took = time.monotonic() - started
        running.thread.join(TIMEOUT)
        assert running.ended
        assert running.error is None
        assert took < SHUTDOWN_BOUND, f"shutdown() took {took:.2f} s"
    finally:
        stop_clients.set()
        running.stop()
        for thread in clients:
            thread.join(TIMEOUT)
    leaks.check(server)


SIGNAL_SCENARIO = """
import faulthandler, signal
# The watchdog: a deadlock dumps every thread's stack and fails the scenario.
faulthandler.dump_traceback_later(40, exit=True)

# Every lock the server makes signals this process right after the serving
# (main) thread takes it, once per arming: the signal handler then runs while
# the loop holds that lock, which a random timer hits only once in thousands.
RealLock = threading.Lock
MAIN = threading.get_ident()
armed = [False]

class SignallingLock:
    def __init__(self):
        self._lock = RealLock()

    def acquire(self, blocking=True, timeout=-1):
        got = self._lock.acquire(blocking, timeout)
        if got and armed[0] and threading.get_ident() == MAIN:
            armed[0] = False
            os.kill(os.getpid(), signal.SIGUSR1)
        return got

    def release(self):
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

class Quiet(socketserver.BaseRequestHandler):
    def handle(self):
        pass

stopped = 0
for round_ in range({rounds}):
    threading.Lock = SignallingLock
    try:
        server = socketserver.{server_class}(("127.0.0.1", 0), Quiet)
    finally:
        threading.Lock = RealLock

    def service_actions(server=server):
        # Arm, then take the loop's locks as a busy server does (a hold and a
        # release: pool backpressure, accept back-off, the fork table).
        armed[0] = True
        server._hold_accept("signal-stress")
        server._release_accept("signal-stress")

    server.service_actions = service_actions
    stop = lambda signum, frame, server=server: server.shutdown()
    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGALRM, stop)  # in case no lock is ever taken
    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)
    try:
        server.serve_forever(poll_interval=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        armed[0] = False
        server.server_close()
    stopped += 1
faulthandler.cancel_dump_traceback_later()
report(stopped=stopped)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("server_class", ["TCPServer", "ThreadPoolTCPServer"])
def test_shutdown_from_a_signal_handler_on_the_serving_thread_never_deadlocks(
    server_class: str, run_scenario: Callable[..., ScenarioResult]
) -> None:
    """``shutdown()`` from the serving thread returns at once (DESIGN: it cannot
    deadlock); a signal handler runs on that thread at any bytecode, including
    while the loop holds its wake-up lock, so shutdown() must not take that lock
    again. (The stdlib always deadlocks here: its shutdown() waits for the loop
    it runs on.)"""
    result = run_scenario(
        pyserve, SIGNAL_SCENARIO.format(rounds=ROUNDS_SIGNAL, server_class=server_class), timeout=60
    )
    assert result.check() == {"stopped": ROUNDS_SIGNAL}
