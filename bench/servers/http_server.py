"""http.server's SimpleHTTPRequestHandler on the stdlib's socketserver or on pyserve.

With ``--module pyserve`` pyserve is installed as ``socketserver`` *before*
http.server is imported, so ``http.server.ThreadingHTTPServer`` is built on
pyserve exactly as a user's drop-in would build it.  ``--server-class
ThreadPoolTCPServer`` serves the same handler from pyserve's thread pool instead.
The served directory holds one small file, ``hello.txt``; request logging is off
(it would measure stderr, not the server).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

from _common import parse_args

BODY = b"Hello from the pyserve benchmark.\n" * 4


def main() -> None:
    def extra(parser):
        parser.add_argument("--module", default="socketserver")
        parser.add_argument("--server-class", default="ThreadingHTTPServer")

    args = parse_args(__doc__, extra)
    if args.module != "socketserver":
        sys.modules["socketserver"] = importlib.import_module(args.module)
    # Imported only now, so that http.server binds to the socketserver chosen above.
    import functools  # noqa: PLC0415
    import http.server  # noqa: PLC0415

    root = tempfile.mkdtemp(prefix="pyserve-bench-http-")
    with open(os.path.join(root, "hello.txt"), "wb") as f:
        f.write(BODY)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    if args.server_class == "ThreadingHTTPServer":
        base = http.server.ThreadingHTTPServer
    else:
        # The pool strategy of the module, mixed into the stdlib's HTTPServer.
        pool = importlib.import_module(args.module).ThreadPoolMixIn
        # One load-generating machine: no per-client limit (see echo_socketserver).
        base = type("PoolHTTPServer", (pool, http.server.HTTPServer),
                    {"daemon_threads": True, "max_connections_per_client": None})
    attrs = {} if args.backlog is None else {"request_queue_size": args.backlog}
    server_class = type("BenchHTTPServer", (base,), attrs)
    handler = functools.partial(QuietHandler, directory=root)
    try:
        with server_class(("127.0.0.1", args.port), handler) as server:
            server.serve_forever()
    finally:
        os.remove(os.path.join(root, "hello.txt"))
        os.rmdir(root)


if __name__ == "__main__":
    main()
