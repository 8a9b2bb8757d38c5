"""The floor for any thread-pool server in Python: bare threads, no framework.

Sixteen threads block in ``accept()`` on one listener; each echoes what it reads
until the client closes, closes, and accepts again.  No registry, no limits, no
shutdown, no error handling: nothing a real server needs.  What this reaches in
``connrate-10`` is the most a pool written in Python can reach on this machine,
so it separates the interpreter's cost (threads, the GIL hand-over, socket
objects) from the framework's.  It is a measuring stick, not a server to copy.
"""

from __future__ import annotations

import socket
import threading

from _common import parse_args

THREADS = 16


def echo_until_closed(conn: socket.socket) -> None:
    """Send back what ``conn`` reads until its peer closes."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)


def main() -> None:
    args = parse_args(__doc__)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(args.backlog or socket.SOMAXCONN)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                echo_until_closed(conn)

    for _ in range(THREADS):
        threading.Thread(target=serve, daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
