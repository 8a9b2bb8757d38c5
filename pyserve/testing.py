"""Helpers for testing servers and handlers, for pyserve's tests and for yours.

Two ways to test, from the outside in:

* :func:`serving` runs a real server's ``serve_forever()`` in a thread for the
  length of a ``with`` block. It yields once the loop runs (readiness by
  construction: no sleeps), and on exit shuts down, joins with a deadline, closes,
  and raises :class:`LeakError` if a thread or a socket outlived the block::

      with serving(ThreadingTCPServer(("127.0.0.1", 0), Echo)) as server:
          with socket.create_connection(server.server_address, timeout=5) as c:
              ...

* :class:`StreamHarness` / :func:`run_stream_handler` drive a handler class over a
  ``socket.socketpair()``, and :func:`run_datagram_handler` over a fake datagram
  socket: no port is bound and no loop runs, so a protocol test is a few lines.

The pytest plugin (:mod:`pyserve.pytest_plugin`) wraps both as fixtures.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar

from pyserve.base import BaseServer

__all__ = [
    "LeakError",
    "StreamHarness",
    "open_sockets",
    "run_datagram_handler",
    "run_stream_handler",
    "serving",
]

#: Any server: :func:`serving` yields the very server it was given.
ServerT = TypeVar("ServerT", bound=BaseServer)


class LeakError(AssertionError):
    """A thread or socket outlived the server that made it."""


def open_sockets() -> Optional[set[str]]:
    """The socket inodes this process holds (Linux), or None where unknown."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return None
    found = set()
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed while we looked (the listdir fd itself)
        if target.startswith("socket:"):
            found.add(target)
    return found


def _wait_for_threads(threads: set[threading.Thread], deadline: float) -> list[str]:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in threads if t.is_alive())


@contextmanager
def serving(
    server: ServerT,
    *,
    poll_interval: float = 0.5,
    join_timeout: float = 5.0,
    check_leaks: bool = True,
) -> Iterator[ServerT]:
    """Run ``server.serve_forever()`` in a thread for the ``with`` block.

    Yields the server once its loop is running. On exit: ``shutdown()``, join the
    loop thread (at most ``join_timeout`` seconds), ``server_close()``, and then,
    if the block itself succeeded and ``check_leaks`` is true, raise
    :class:`LeakError` naming any thread still alive or socket still open that the
    block created.
    """
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            server.serve_forever(poll_interval=poll_interval)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=loop, name=f"pyserve serving {server!r}", daemon=True)
    thread.start()
    deadline = time.monotonic() + join_timeout
    while not server._loop_running.wait(0.05):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.server_close()
            raise RuntimeError("serve_forever() did not start") from (
                failure[0] if failure else None
            )
    body_failed = True
    try:
        yield server
        body_failed = False
    finally:
        server.shutdown()
        thread.join(join_timeout)
        server.server_close()
        if thread.is_alive() and not body_failed:
            raise LeakError(f"serve_forever() still running {join_timeout}s after shutdown()")
        if failure and not body_failed:
            raise failure[0]
        if check_leaks and not body_failed:
            _check_leaks(threads_before, sockets_before, join_timeout)


def _check_leaks(
    threads_before: set[threading.Thread], sockets_before: Optional[set[str]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    extra = {t for t in threading.enumerate() if t not in threads_before}
    alive = _wait_for_threads(extra, deadline)
    if alive:
        raise LeakError(f"threads still alive after the server closed: {alive}")
    if sockets_before is not None:
        leaked = (open_sockets() or set()) - sockets_before
        if leaked:
            # Unreachable socket objects are garbage, not leaks: CPython closes them
            # at once, PyPy only when its collector runs. Ask it, then look again.
            gc.collect()
            leaked = (open_sockets() or set()) - sockets_before
        if leaked:
            raise LeakError(f"sockets still open after the server closed: {sorted(leaked)}")


class StreamHarness:
    """Run one stream handler over a socket pair; the ``with`` block is its client.

    ::

        with StreamHarness(EchoHandler) as client:
            client.sendall(b"hi\\n")
            assert client.recv(100) == b"hi\\n"

    On exit the client's side is closed, the handler thread joined (at most
    ``timeout`` seconds) and any exception the handler raised is re-raised.
    ``server`` defaults to an unbound :class:`~pyserve.base.BaseServer`.
    """

    def __init__(
        self,
        handler_class: Callable[..., Any],
        *,
        server: Optional[Any] = None,
        client_address: Any = ("127.0.0.1", 54321),
        timeout: float = 5.0,
    ) -> None:
        self.handler_class = handler_class
        self.server = server if server is not None else BaseServer(("harness", 0), handler_class)
        self.client_address = client_address
        self.timeout = timeout
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._client: Optional[socket.socket] = None

    def __enter__(self) -> socket.socket:
        client, served = socket.socketpair()
        client.settimeout(self.timeout)
        self._client = client

        def run() -> None:
            try:
                self.handler_class(served, self.client_address, self.server)
            except BaseException as exc:
                self.error = exc
            finally:
                with suppress(OSError):
                    served.shutdown(socket.SHUT_WR)
                served.close()

        self._thread = threading.Thread(target=run, name="pyserve handler harness", daemon=True)
        self._thread.start()
        return client

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._client is not None
        assert self._thread is not None
        self._client.close()
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            raise LeakError(f"handler still running {self.timeout}s after its client closed")
        if self.error is not None and exc_type is None:
            raise self.error


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (every recv bounded by the timeout)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            # The peer closed with our input unread: after its last byte, a socket
            # pair reports a reset instead of end-of-file. Same end for a reader.
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_stream_handler(
    handler_class: Callable[..., Any],
    data: bytes = b"",
    *,
    server: Optional[Any] = None,
    client_address: Any = ("127.0.0.1", 54321),
    timeout: float = 5.0,
) -> bytes:
    """Send ``data`` to a handler, close our sending side, return all it wrote."""
    harness = StreamHarness(
        handler_class, server=server, client_address=client_address, timeout=timeout
    )
    with harness as client:
        try:
            if data:
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the handler finished (and closed) before reading it all
        return read_until_eof(client)


class _RecordingDatagramSocket:
    """Stands in for a server's datagram socket: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, address: Any) -> int:
        self.sent.append((bytes(data), address))
        return len(data)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 0)


def run_datagram_handler(
    handler_class: Callable[..., Any],
    data: bytes,
    *,
    server: Optional[Any] = None,
    client_address: Any = ("127.0.0.1", 54321),
) -> list[bytes]:
    """Hand one datagram to a handler (synchronously); return the datagrams it sent."""
    sock = _RecordingDatagramSocket()
    if server is None:
        server = BaseServer(("harness", 0), handler_class)
    handler_class((data, sock), client_address, server)
    return [payload for payload, _address in sock.sent]

