"""Echo on a socketserver-style server: the stdlib's, or pyserve's (same code).

``--module`` picks the module (``socketserver`` or ``pyserve``), ``--server-class``
the ready server (ThreadingTCPServer, ThreadPoolTCPServer, ...), ``--handler`` the
handler style: ``raw`` (recv/sendall on the socket) or ``stream``
(StreamRequestHandler's rfile.readline / wfile.write; the load generator's
messages end in a newline).
"""

from __future__ import annotations

import importlib

from _common import parse_args


def main() -> None:
    def extra(parser):
        parser.add_argument("--module", default="socketserver")
        parser.add_argument("--server-class", default="ThreadingTCPServer")
        parser.add_argument("--handler", choices=("raw", "stream"), default="raw")

    args = parse_args(__doc__, extra)
    socketserver = importlib.import_module(args.module)

    class RawEcho(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)

    class StreamEcho(socketserver.StreamRequestHandler):
        def handle(self):
            rfile, wfile = self.rfile, self.wfile
            while True:
                line = rfile.readline()
                if not line:
                    break
                wfile.write(line)

    base = getattr(socketserver, args.server_class)
    attrs = {} if args.backlog is None else {"request_queue_size": args.backlog}
    server_class = type("BenchServer", (base,), attrs)
    handler = RawEcho if args.handler == "raw" else StreamEcho
    with server_class(("127.0.0.1", args.port), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
