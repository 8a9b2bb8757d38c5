"""Fault injection for the tests/test_faults_*.py matrix ("Core you can trust").

Theory of operation
-------------------
Every test in the matrix takes one *strategy* (how a server runs a request: the
loop's own thread, a thread per request, the thread pool in either mode, a child
process per request, one I/O thread for all, accepting in the serve loop for the
first connection or in the I/O thread itself) and one *fault* (a hook that raises,
a thread that cannot start, an accept that runs out of descriptors, a client
that resets), runs it on a live loopback server and classifies what it sees:

* ``ENDED``: ``serve_forever()`` raised (loudly) after the fault;
* ``SERVES``: the server is still alive and a *new* client gets its echo;
* ``DEAF``: neither: the loop runs, but nobody accepts any more. Never allowed.

Where the stdlib has the same strategy, the same scenario runs on its
``socketserver`` class too (the ``impl`` fixture of tests/conftest.py), and the
expected outcome comes from one table, :func:`expected_outcome`, that both must
match. Whatever the outcome, :class:`Leaks` then checks that the server left no
thread, descriptor or child process behind, and a pyserve server no entry in its
registry of requests in flight.

Which client a fault hits is decided by the client's own port: a
:class:`FaultClient` binds its socket first, writes that port into the server's
``fault_port`` and only then connects, so a hook (in the server, a worker, or a
forked child) can tell the faulty client from the healthy ones that follow.
Each hook raises at most once per request, so a shutdown_request() that is
retried after the failure closes the connection as it would in real code.

Readiness is by construction (the listener queues connections from the
constructor on; a pyserve loop says when it runs); every socket has a timeout;
every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Optional

import pyserve

try:
    import fcntl
    import termios
except ImportError:  # not POSIX: server_has_read() is for Linux
    fcntl = termios = None  # type: ignore[assignment]

HOST = "127.0.0.1"
TIMEOUT = 10.0  # the deadline of every wait
# How long a new client may take to be served before the server counts as deaf:
# generous for a loaded 2-core CI machine, short enough that a deaf cell fails fast.
SERVE_DEADLINE = 5.0
PYPY = platform.python_implementation() == "PyPy"

ENDED, SERVES, DEAF = "ended", "serves", "deaf"


class HookFault(RuntimeError):
    """What an injected hook raises: a programmer's bug, not a peer's fault."""


# -- strategies ------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """How a server runs a request, and how to build one of either implementation."""

    name: str
    class_name: str  # the server class in the implementation module
    in_stdlib: bool  # socketserver has the same class
    attributes: dict[str, Any] = field(default_factory=dict)
    multiplexed: bool = False  # the handler must be a pyserve.ConnectionHandler
    forks: bool = False
    # Multiplexing: the I/O thread runs before serving, so it accepts every
    # connection (otherwise the serve loop accepts the first, which starts it).
    io_accepts: bool = False

    def server_class(self, impl: ModuleType) -> type:
        return getattr(impl, self.class_name)  # type: ignore[no-any-return]


def _pool(workers_accept: bool) -> dict[str, Any]:
    return {"workers_accept": workers_accept, "max_workers": 4}


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("sync", "TCPServer", True),
        Strategy("thread", "ThreadingTCPServer", True),
        Strategy("pool-accept", "ThreadPoolTCPServer", False, _pool(workers_accept=True)),
        Strategy("pool-handoff", "ThreadPoolTCPServer", False, _pool(workers_accept=False)),
        Strategy("fork", "ForkingTCPServer", True, forks=True),
        Strategy("multiplex", "MultiplexingTCPServer", False, multiplexed=True),
        Strategy("multiplex-io", "MultiplexingTCPServer", False, multiplexed=True, io_accepts=True),
    )
    if hasattr(os, "fork") or not s.forks
}


def cells(strategies: Optional[list[str]] = None) -> list[tuple[str, str]]:
    """``(implementation, strategy)`` pairs: pyserve always, the stdlib where it has
    the strategy."""
    found = []
    for name in strategies or list(STRATEGIES):
        if name not in STRATEGIES:
            continue
        found.append(("pyserve", name))
        if STRATEGIES[name].in_stdlib:
            found.append(("socketserver", name))
    return found


IMPLEMENTATIONS = {"pyserve": pyserve, "socketserver": socketserver}


# -- handlers ----------------------------------------------------------------------


def _is_fault(server: Any, client_address: Any) -> bool:
    return (
        isinstance(client_address, tuple)
        and len(client_address) >= 2
        and client_address[1] == getattr(server, "fault_port", None)
    )


def _raise_once(server: Any, hook: str, client_address: Any) -> None:
    """Raise HookFault if ``hook`` is the server's fault and this is the faulty client,
    once per request (per process: a forked child has its own copy)."""
    wanted = getattr(server, "fault_hook", None)
    if wanted == "handle_error" and hook == "handle":
        wanted = "handle"  # a handle_error() fault needs an error to report first
    if wanted != hook or not _is_fault(server, client_address):
        return
    raised: set[str] = server.fault_raised
    if hook in raised:
        return
    raised.add(hook)
    raise HookFault(f"injected fault in {hook}()")


def echo_handler(impl: ModuleType) -> type:
    """A blocking handler: echo one line, then return. ``handle``/``finish`` faults."""

    class LineEcho(impl.BaseRequestHandler):  # type: ignore[misc,name-defined]
        def handle(self) -> None:
            _raise_once(self.server, "handle", self.client_address)
            data = b""
            while not data.endswith(b"\n"):
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.request.sendall(data)

        def finish(self) -> None:
            _raise_once(self.server, "finish", self.client_address)

    return LineEcho


class ConnectionEcho(pyserve.ConnectionHandler):  # type: ignore[type-arg]
    """The multiplexed echo: ``handle`` faults in data_received, ``finish`` faults in
    connection_lost (the callbacks that play those roles)."""

    def data_received(self, data: bytes) -> None:
        _raise_once(self.server, "handle", self.client_address)
        self.write(data)
        if data.endswith(b"\n"):
            self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        _raise_once(self.server, "finish", self.client_address)


def _ready_then_echo(impl: ModuleType) -> type:
    class ReadyThenEcho(impl.BaseRequestHandler):  # type: ignore[misc,name-defined]
        """Say ``ready``, then echo one line: the client decides when the request ends."""

        def handle(self) -> None:
            self.request.sendall(b"ready\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.request.sendall(data)

    return ReadyThenEcho


class ReadyThenEchoConnection(pyserve.ConnectionHandler):  # type: ignore[type-arg]
    """The multiplexed ReadyThenEcho."""

    def connection_made(self) -> None:
        self.write(b"ready\n")
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"\n"):
            self.write(self.buffer)
            self.close()


def ready_then_echo_handler(impl: ModuleType, strategy: Strategy) -> type:
    return ReadyThenEchoConnection if strategy.multiplexed else _ready_then_echo(impl)


def handler_for(impl: ModuleType, strategy: Strategy) -> type:
    return ConnectionEcho if strategy.multiplexed else echo_handler(impl)


# -- faulty servers ----------------------------------------------------------------

#: The server hooks a fault may hit, each overridden to raise for the faulty client.
SERVER_HOOKS = (
    "get_request",
    "verify_request",
    "process_request",
    "finish_request",
    "shutdown_request",
    "handle_error",
)
HANDLER_HOOKS = ("handle", "finish")
ALL_HOOKS = SERVER_HOOKS[:4] + HANDLER_HOOKS + SERVER_HOOKS[4:]


def _peer_address(request: Any) -> Any:
    try:
        return request.getpeername()
    except (OSError, AttributeError):
        return None


def faulty_class(base: type, hook: Optional[str], extra: Optional[dict[str, Any]] = None) -> type:
    """A subclass of ``base`` whose hooks raise for the faulty client (see module doc).

    A ``handle_error`` fault needs an error first: the handler's ``handle``
    raises for that client too. ``reported`` collects what ``handle_error``
    was called for (as text: an exception object would keep its request alive).
    """

    def get_request(self: Any) -> Any:
        request, client_address = base.get_request(self)
        if self.fault_hook == "get_request" and _is_fault(self, client_address):
            request.close()  # as if the failure happened while accepting
        _raise_once(self, "get_request", client_address)
        return request, client_address

    def verify_request(self: Any, request: Any, client_address: Any) -> bool:
        _raise_once(self, "verify_request", client_address)
        return bool(base.verify_request(self, request, client_address))

    def process_request(self: Any, request: Any, client_address: Any) -> None:
        _raise_once(self, "process_request", client_address)
        base.process_request(self, request, client_address)

    def finish_request(self: Any, request: Any, client_address: Any) -> None:
        _raise_once(self, "finish_request", client_address)
        base.finish_request(self, request, client_address)

    def shutdown_request(self: Any, request: Any) -> None:
        if self.fault_hook == "shutdown_request":
            _raise_once(self, "shutdown_request", _peer_address(request))
        base.shutdown_request(self, request)

    def handle_error(self: Any, request: Any, client_address: Any) -> None:
        self.reported.append(repr(sys.exc_info()[1]))
        _raise_once(self, "handle_error", client_address)
        base.handle_error(self, request, client_address)

    namespace: dict[str, Any] = {
        "fault_hook": hook,
        "get_request": get_request,
        "verify_request": verify_request,
        "process_request": process_request,
        "shutdown_request": shutdown_request,
        "handle_error": handle_error,
        **(extra or {}),
    }
    if not getattr(base, "_io_loop", None):  # multiplexing refuses finish_request overrides
        namespace["finish_request"] = finish_request
    return type(f"Faulty{base.__name__}", (base,), namespace)


def build_server(
    impl: ModuleType,
    strategy: Strategy,
    hook: Optional[str] = None,
    handler: Optional[type] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Any:
    """A live (listening) server of ``strategy`` in ``impl`` with ``hook`` faulty."""
    base = strategy.server_class(impl)
    cls = faulty_class(base, hook, {**strategy.attributes, **(extra or {})})
    if handler is None:
        handler = handler_for(impl, strategy)
    server = cls((HOST, 0), handler)
    # A server that cannot finish a request must not hold a test for the default
    # 30 s when it closes (the stdlib has no such setting; it ignores this one).
    server.close_timeout = 1.0
    server.drain_force_timeout = 0.5
    server.fault_port = -1
    server.fault_raised = set()
    server.reported = []
    if strategy.io_accepts:
        start_io_thread(server)
    return server


def start_io_thread(server: Any) -> None:
    """Start a multiplexing server's I/O thread now (call_soon() starts it), so
    that from the first connection on, the I/O thread accepts."""
    started = threading.Event()
    server.call_soon(started.set)
    assert started.wait(TIMEOUT), "the I/O thread did not run"


# -- clients -------------------------------------------------------------------------


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    return sock


@contextlib.contextmanager
def fault_client(server: Any) -> Iterator[socket.socket]:
    """A connected client whose port the server's hooks treat as the faulty one."""
    sock = client_socket()
    try:
        sock.bind((HOST, 0))
        server.fault_port = sock.getsockname()[1]
        sock.connect(server.server_address)
        yield sock
    finally:
        sock.close()


def round_trip(address: Any, payload: bytes = b"ping\n", timeout: float = TIMEOUT) -> bytes:
    """Send one line; read the echo until EOF or the whole line came back."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def connection_ended(sock: socket.socket) -> bool:
    """True once the peer closed or reset ``sock`` (reading whatever is left)."""
    sock.settimeout(0.05)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True  # reset
    finally:
        sock.settimeout(TIMEOUT)


def linger_reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the peer gets a reset (RST), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def reset_mid_request(address: Any) -> None:
    """From a forked client process: connect, read ``ready``, send half a request,
    then reset. A forked one, because a forking server's child inherits every
    descriptor of this process: an in-process client socket would stay open in
    it, so closing ours would send no reset at all."""
    pid = os.fork()
    if pid == 0:  # the client process: sockets only, then _exit
        status = 1
        try:
            sock = socket.create_connection(address, timeout=TIMEOUT)
            if sock.recv(6) == b"ready\n":
                sock.sendall(b"half a req")
                linger_reset(sock)
                status = 0
        finally:
            os._exit(status)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status), status
            assert os.WEXITSTATUS(status) == 0, status
            return
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the resetting client did not finish")
        time.sleep(0.005)


# -- running a server ------------------------------------------------------------------


def _queued(sock: Any, request: int) -> int:
    found = fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")
    return int.from_bytes(found, sys.byteorder)


def server_has_read(server: Any, client: socket.socket) -> bool:
    """Whether the bytes ``client`` sent left its send queue and the server's
    receive queue, so the handler (or I/O thread) of the server's one request in
    flight has read them (Linux ioctls; readiness without a sleep)."""
    entries = server.registry.entries()
    if len(entries) != 1:
        return False
    request = entries[0].request
    # Under TLS the registry holds the plain socket; the TLS one has its descriptor.
    request = getattr(server, "_tls_sockets", {}).get(request, request)
    if request.fileno() < 0:
        return False  # not this process's (a forked child's), or a handshake goes on
    if _queued(client, termios.TIOCOUTQ):
        return False
    return _queued(request, termios.FIONREAD) == 0


def peer_process_has_read(client: socket.socket) -> bool:
    """Whether the bytes ``client`` (IPv4, loopback) sent were read by the process
    at the other end, wherever it runs: they left ``client``'s send queue, and the
    peer socket's receive queue in /proc/net/tcp is empty (Linux)."""
    if _queued(client, termios.TIOCOUTQ):
        return False

    def hex_address(address: tuple[str, int]) -> str:
        packed = socket.inet_aton(address[0])
        return f"{int.from_bytes(packed, 'little'):08X}:{address[1]:04X}"

    # The peer's socket: its local address is our remote one, and the other way round.
    wanted = (hex_address(client.getpeername()), hex_address(client.getsockname()))
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == wanted:
                return int(fields[4].split(":")[1], 16) == 0
    return False


def wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.1f} s: {what or condition}")
        time.sleep(0.005)


class Running:
    """``serve_forever()`` in a thread; what it raised; a bounded stop."""

    def __init__(self, server: Any, poll_interval: float = 0.05) -> None:
        self.server = server
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(
            target=self._serve, args=(poll_interval,), name="faults serve_forever", daemon=True
        )
        self.thread.start()
        running = getattr(server, "_loop_running", None)
        if isinstance(running, threading.Event):  # pyserve says when its loop runs
            deadline = time.monotonic() + TIMEOUT
            while not running.wait(0.02) and self.thread.is_alive():
                assert time.monotonic() < deadline, "serve_forever() did not start"

    def _serve(self, poll_interval: float) -> None:
        try:
            self.server.serve_forever(poll_interval=poll_interval)
        except BaseException as exc:
            # Without tracebacks: their frames would keep the request alive, and
            # a socket only this test holds is not the server's leak.
            self.error = _without_tracebacks(exc)

    @property
    def ended(self) -> bool:
        return not self.thread.is_alive()

    def stop(self) -> None:
        """shutdown() (unless the loop ended), join, server_close(), all bounded."""
        if not self.ended:
            stopper = threading.Thread(target=self.server.shutdown, daemon=True)
            stopper.start()
            stopper.join(TIMEOUT)
            assert not stopper.is_alive(), "shutdown() did not return"
        self.thread.join(TIMEOUT)
        assert self.ended, "serve_forever() still runs after shutdown()"
        self.server.server_close()


def _without_tracebacks(exc: BaseException) -> BaseException:
    seen: set[int] = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def serves(running: Running, timeout: float = SERVE_DEADLINE) -> bool:
    """A new client gets its echo (the server is alive and accepting).

    Gives up early if the loop ends meanwhile: its listener stays open until
    server_close(), so the kernel would accept a connection nobody serves.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(running.server.server_address, timeout=timeout) as sock:
            sock.sendall(b"alive?\n")
            sock.settimeout(0.05)
            data = b""  # the echo, perhaps after a greeting line
            while b"alive?\n" not in data:
                if running.ended or time.monotonic() > deadline:
                    return False
                try:
                    chunk = sock.recv(4096)
                except socket.timeout:
                    continue
                if not chunk:
                    return False
                data += chunk
            return True
    except OSError:
        return False


def outcome_after(
    running: Running,
    faulty: Optional[socket.socket] = None,
    reported: Callable[[], Any] = lambda: False,
) -> str:
    """ENDED, SERVES or DEAF, once the fault has had its effect.

    First wait (bounded) until the loop ended, the faulty client's connection
    ended or ``reported()`` says the fault was reported; then probe with a new
    client.
    """
    if faulty is not None:
        deadline = time.monotonic() + TIMEOUT
        while not (running.ended or reported() or connection_ended(faulty)):
            if PYPY:
                gc.collect()  # a dropped request socket closes only when collected
            if time.monotonic() > deadline:
                break
    if running.ended:
        return ENDED
    if serves(running):
        return SERVES
    return ENDED if running.ended else DEAF


# -- leaks -------------------------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_pids() -> set[int]:
    """This process's children (Linux /proc), whatever thread started them."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as children:
            found.update(int(pid) for pid in children.read().split())
    return found


def _release_logged_tracebacks() -> None:
    """Format, then drop, the tracebacks that captured log records hold.

    pytest keeps every record of a test (to show it in a report); a record logged
    with ``exc_info`` holds the traceback, whose frames hold the request socket,
    which would count as the server's leak. The text stays for the report.
    """
    formatter = logging.Formatter()
    for handler in logging.getLogger().handlers:
        for record in getattr(handler, "records", ()):
            if record.exc_info and record.exc_info[0] is not None:
                if not record.exc_text:
                    record.exc_text = formatter.formatException(record.exc_info)
                record.exc_info = None


class Leaks:
    """Threads, descriptors and child processes before; compare after (bounded)."""

    def __init__(self) -> None:
        gc.collect()
        self.threads = set(threading.enumerate())
        self.fds = _fd_count()
        self.children = child_pids()

    def check(self, server: Any = None) -> None:
        if isinstance(server, pyserve.BaseServer):
            wait_until(lambda: not server.in_flight(), what="the registry to empty")
        extra: list[threading.Thread] = []

        def settled() -> bool:
            _release_logged_tracebacks()
            gc.collect()
            extra[:] = [t for t in threading.enumerate() if t not in self.threads]
            return not extra and _fd_count() <= self.fds and child_pids() <= self.children

        try:
            wait_until(settled, timeout=TIMEOUT)
        except AssertionError:
            raise AssertionError(
                f"leaked: threads {[t.name for t in extra]}, "
                f"descriptors {_fd_count()} (was {self.fds}), "
                f"children {sorted(child_pids() - self.children)}"
            ) from None


def process_group_gone(pgid: int, timeout: float = TIMEOUT) -> None:
    """Wait until no process of group ``pgid`` is left (a supervisor's workers,
    a forking server's children); fail at the deadline."""

    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout, what=f"every process of group {pgid} to exit")


@contextlib.contextmanager
def thread_exceptions() -> Iterator[list[str]]:
    """What request threads raised to ``threading.excepthook`` (as text)."""
    seen: list[str] = []
    previous = threading.excepthook

    def record(args: Any) -> None:
        seen.append(repr(args.exc_value))

    threading.excepthook = record
    try:
        yield seen
    finally:
        threading.excepthook = previous
