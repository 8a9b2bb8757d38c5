"""What one short connection costs a thread-pool server, counted rather than timed.

Starts a server in this process on 127.0.0.1 port 0, makes ``--warmup``
connections, then ``N`` more, one after another: connect, send 64 bytes, read
the echo, close (the bench's ``connrate`` session, from one client). Every
client socket has a timeout; the run ends after N connections or ``--budget``
seconds, whichever comes first. Nothing is printed but one summary line.

``--server pool`` is ``pyserve.ThreadPoolTCPServer`` with a raw
``BaseRequestHandler`` echo (bench/servers/echo_socketserver.py's ``raw``
handler); ``--server floor`` is the framework-free floor of
bench/servers/echo_floor.py (bare threads blocking in ``accept()``), with the
same client, so pool minus floor is what the framework adds.

Wall-clock rates on a shared machine are noise; instruction counts are not.
Run it from the repository root with ``PYTHONPATH=.``, under callgrind, for
N=K and N=0, and divide the difference by K (name the interpreter's real
binary: a pyenv shim is a shell script, and callgrind would measure the shell)::

    PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/tmp/pc.%p \\
        python3 bench/pool_connection.py 2000 --server pool
    PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/tmp/pc0.%p \\
        python3 bench/pool_connection.py 0 --server pool
    # instructions per connection = (Ir of the first - Ir of the second) / 2000

(The figure includes the in-process client's own work, the same for both
servers.) ``--calls`` instead counts the Python function calls made per
measured connection, in every thread, and lists the most frequent;
``--syscalls`` is for ``strace -f -c`` runs (it only marks the measured
stretch in the output with two ``getpid()`` calls). Thread scheduling varies
between runs (how often two workers wake for one connection), so one figure
moves by about 3,000 instructions per connection: compare medians of a few.

What the pool pays beyond the floor, and why it stays
-----------------------------------------------------
Measured on CPython 3.11 with 2,000 connections (the client's share included
in both): the floor ~81,600 instructions per connection, the pool ~132,000
(~140,100 before the registry and gate did their bookkeeping in fewer steps).
Server-side system calls per connection beyond the floor's ``accept4``,
``recvfrom`` x2, ``sendto``, ``close`` (``strace -f -c``, N=1000 minus N=0):

* ``epoll_wait`` (1) and, for about one connection in three, a second
  ``epoll_wait`` plus an ``accept4`` failing with EAGAIN: workers wait in an
  epoll that also watches the pool's gate, so ``shutdown()``, drain and the
  accept back-off can stop them (a thread blocked in ``accept()`` cannot be
  stopped without closing the listener for everyone); a worker back from a
  request that re-enters ``epoll_wait`` while the connection the kernel just
  gave another worker is still queued sees it too, and loses the race;
* ``ioctl(FIONBIO)`` (1) and a ``poll`` before each ``recv``/``send`` (3 in
  this echo): ``idle_timeout`` (60 s by default in the pool) becomes the
  socket's timeout, so a handler reading the raw socket cannot be held for
  ever by a silent peer; CPython implements a socket timeout as a non-blocking
  descriptor plus ``poll()`` before each call;
* ``shutdown(SHUT_WR)`` (1): the stdlib's ``shutdown_request()`` contract
  (the peer reads every byte written before the close);
* ``futex``: about four more per connection, thread wake-ups: a worker that
  takes a connection while nobody else waits on the listener wakes a parked
  one (the pool grows and answers a second client at once), and the lost
  races above.

In Python, what remains is one call per hook of the stdlib's request path
(``get_request``, ``verify_request``, ``process_request``,
``process_request_thread``, ``finish_request``, ``shutdown_request``,
``close_request``), each of which a subclass may override, and one locked
step each for the accept gate's critical section (the drain barrier), the
registry's admission (limits and counters), start and removal.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import pyserve  # from the checkout: run with PYTHONPATH=. (see above)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers"))
from echo_floor import THREADS, echo_until_closed  # bench/servers is a script folder

PAYLOAD = b"x" * 64


def pool_server() -> tuple[Callable[[], None], int, Callable[[], None]]:
    class RawEcho(pyserve.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            echo_until_closed(self.request)

    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), RawEcho)
    port = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return server.serve_forever, port, stop


def floor_server() -> tuple[Callable[[], None], int, Callable[[], None]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(socket.SOMAXCONN)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                echo_until_closed(conn)

    def run() -> None:
        threads = [threading.Thread(target=serve, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        done.wait()

    def stop() -> None:
        done.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in accept()
        listener.close()

    return run, port, stop


def session(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(PAYLOAD)
        got = b""
        while len(got) < len(PAYLOAD):
            chunk = client.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed before echoing")
            got += chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="measured connections (0: only the warm-up)")
    parser.add_argument("--server", choices=("pool", "floor"), default="pool")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds, at most")
    parser.add_argument("--calls", action="store_true", help="count Python calls per connection")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--syscalls", action="store_true", help="mark the measured stretch")
    args = parser.parse_args()

    counts: collections.Counter[str] = collections.Counter()
    counting = False

    def profile(frame: Any, event: str, arg: Any) -> None:
        if not counting:
            return
        if event == "call":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}"] += 1
        elif event == "c_call":
            counts[f"C:{getattr(arg, '__qualname__', repr(arg))}"] += 1

    if args.calls:  # before any thread starts: threading.setprofile covers new threads
        threading.setprofile(profile)
        sys.setprofile(profile)
    run, port, stop = (pool_server if args.server == "pool" else floor_server)()
    serving = threading.Thread(target=run, daemon=True)
    serving.start()
    deadline = time.monotonic() + args.budget
    done = 0
    try:
        for _ in range(args.warmup):
            session(port)
        if args.syscalls:
            os.getpid()
        counting = args.calls
        for _ in range(args.count):
            if time.monotonic() > deadline:
                break
            session(port)
            done += 1
        counting = False
        if args.syscalls:
            os.getpid()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        stop()
        serving.join(10)
    print(f"{args.server}: {done} connections measured")
    if args.calls and done:
        python = sum(n for name, n in counts.items() if not name.startswith("C:"))
        builtin = sum(n for name, n in counts.items() if name.startswith("C:"))
        print(f"Python calls per connection: {python / done:.1f}; C calls: {builtin / done:.1f}")
        for name, number in counts.most_common(args.top):
            print(f"  {number / done:6.2f}  {name}")


if __name__ == "__main__":
    main()
