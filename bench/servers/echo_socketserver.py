"""Echo on a socketserver-style server: the stdlib's, or pyserve's (same code).

``--module`` picks the module (``socketserver`` or ``pyserve``), ``--server-class``
the ready server (ThreadingTCPServer, ThreadPoolTCPServer, ...), ``--handler`` the
handler style: ``raw`` (recv/sendall on the socket), ``stream``
(StreamRequestHandler's rfile.readline / wfile.write; the load generator's
messages end in a newline) or ``callback`` (a pyserve ConnectionHandler, for
MultiplexingTCPServer).

``--work N`` makes every request CPU-bound: before echoing a chunk the handler
runs N turns of pure-Python arithmetic (``work()`` in _common.py), the same
code on every server and interpreter.
"""

from __future__ import annotations

import importlib

from _common import parse_args, work


def main() -> None:
    def extra(parser):
        parser.add_argument("--module", default="socketserver")
        parser.add_argument("--server-class", default="ThreadingTCPServer")
        parser.add_argument("--handler", choices=("raw", "stream", "callback"), default="raw")
        parser.add_argument("--work", type=int, default=0, metavar="N")

    args = parse_args(__doc__, extra)
    socketserver = importlib.import_module(args.module)
    turns = args.work

    class RawEcho(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                if turns:
                    work(turns)
                sock.sendall(data)

    class StreamEcho(socketserver.StreamRequestHandler):
        def handle(self):
            rfile, wfile = self.rfile, self.wfile
            while True:
                line = rfile.readline()
                if not line:
                    break
                if turns:
                    work(turns)
                wfile.write(line)

    handlers = {"raw": RawEcho, "stream": StreamEcho}
    if args.handler == "callback":

        class CallbackEcho(socketserver.ConnectionHandler):
            def data_received(self, data):
                if turns:
                    work(turns)
                self.write(data)

        handlers["callback"] = CallbackEcho

    base = getattr(socketserver, args.server_class)
    attrs = {} if args.backlog is None else {"request_queue_size": args.backlog}
    if hasattr(base, "max_workers"):
        # A load test from one machine: every client shares 127.0.0.1, so the
        # pool's default per-client limit (a share of the pool) is turned off.
        attrs["max_connections_per_client"] = None
    server_class = type("BenchServer", (base,), attrs)
    handler = handlers[args.handler]
    with server_class(("127.0.0.1", args.port), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
