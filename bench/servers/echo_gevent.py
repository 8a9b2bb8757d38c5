"""Echo on gevent's StreamServer: one greenlet per connection, recv/sendall."""

from __future__ import annotations

from _common import parse_args
from gevent.server import StreamServer


def handle(sock, _address):
    while True:
        data = sock.recv(65536)
        if not data:
            break
        sock.sendall(data)


def main() -> None:
    args = parse_args(__doc__)
    backlog = {} if args.backlog is None else {"backlog": args.backlog}
    StreamServer(("127.0.0.1", args.port), handle, **backlog).serve_forever()


if __name__ == "__main__":
    main()
