"""The floor for a RESP store in Python: one epoll loop, no parser, no checks.

Answers what ``redis-benchmark -t get,set,ping -P 16`` sends and nothing else:
each ``recv()`` is taken to hold whole commands of one kind, cut at every CRLF,
and answered by position (the key is every fifth piece of a GET batch). No
framing is checked, no partial command is kept, no limit, no lock, no memory
accounting, no TTL: nothing a real server needs, and a wrong answer for anything
else. What this reaches is the most a Python server answering pipelined commands
from one thread can reach on this machine, so it separates the interpreter's cost
(the loop, the system calls, one bytes object per line) from the store's. It is a
measuring stick, not a server to copy.

    python bench/servers/resp_floor.py PORT
"""

from __future__ import annotations

import select
import socket

from _common import parse_args


def serve(listener: socket.socket) -> None:
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    clients: dict[int, socket.socket] = {}
    store: dict[bytes, bytes] = {}
    get = store.get
    while True:
        for fd, _events in poller.poll():
            if fd == listener.fileno():
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[conn.fileno()] = conn
                poller.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = clients[fd]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                poller.unregister(fd)
                del clients[fd]
                conn.close()
                continue
            pieces = data.split(b"\r\n")
            name = pieces[2].upper() if len(pieces) > 2 else b""
            if name == b"GET":
                replies = []
                for key in pieces[4::5]:
                    value = get(key)
                    if value is None:
                        replies.append(b"$-1\r\n")
                    else:
                        replies.append(b"$%d\r\n%b\r\n" % (len(value), value))
                conn.send(b"".join(replies))
            elif name == b"SET":
                count = 0
                for at in range(4, len(pieces) - 1, 7):
                    store[pieces[at]] = pieces[at + 2]
                    count += 1
                conn.send(b"+OK\r\n" * count)
            else:  # PING, and the CONFIG GET redis-benchmark sends first
                conn.send(b"+PONG\r\n" * max(1, len(pieces) // 3))


def main() -> None:
    args = parse_args(__doc__)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(args.backlog or 512)
    listener.setblocking(False)
    serve(listener)


if __name__ == "__main__":
    main()
