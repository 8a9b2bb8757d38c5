"""pyserve's RESP key-value store (handlers.resp) on a pyserve server.

A server class exported by the module is used when there is one, with its own
default handler; else ``pyserve.ThreadingTCPServer`` with the one public class of
``handlers.resp`` that is a ``pyserve.BaseRequestHandler`` subclass.
``--handler NAME`` and ``--server-class NAME`` (of pyserve) choose explicitly.
Exits with status 3 and a message when handlers.resp is absent, which run.py
reports as "n/a".
"""

from __future__ import annotations

import importlib
import inspect
import sys

from _common import parse_args


def find_classes(module, base_server, base_handler):
    handlers, servers = [], []
    # handlers.resp is a package: its public names (``__all__``) are defined in
    # its submodules, so "defined here" means "in the package".
    public = getattr(module, "__all__", None)
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isclass(obj):
            continue
        if public is not None and name not in public:
            continue
        owner = getattr(obj, "__module__", "")
        if owner != module.__name__ and not owner.startswith(module.__name__ + "."):
            continue
        if issubclass(obj, base_handler):
            handlers.append(obj)
        elif issubclass(obj, base_server):
            servers.append(obj)
    return handlers, servers


def main() -> None:
    def extra(parser):
        parser.add_argument("--handler", default=None, help="handler class name in handlers.resp")
        parser.add_argument("--server-class", default=None)

    args = parse_args(__doc__, extra)
    import pyserve  # noqa: PLC0415 - after argument parsing, so --help always works

    try:
        module = importlib.import_module("handlers.resp")
    except ImportError as exc:
        print(f"n/a: handlers.resp is not available ({exc})", file=sys.stderr)
        sys.exit(3)
    handlers, servers = find_classes(module, pyserve.BaseServer, pyserve.BaseRequestHandler)
    own_server = len(servers) == 1 and not args.server_class
    handler = None
    if args.handler:
        handler = getattr(module, args.handler)
    elif not own_server:
        if len(handlers) != 1:
            names = [h.__name__ for h in handlers]
            print(f"n/a: cannot tell the RESP handler among {names}; use --handler",
                  file=sys.stderr)
            sys.exit(3)
        handler = handlers[0]
    if args.server_class:
        base = getattr(pyserve, args.server_class)
    else:
        base = servers[0] if own_server else pyserve.ThreadingTCPServer
    attrs = {} if args.backlog is None else {"request_queue_size": args.backlog}
    server_class = type("BenchRespServer", (base,), attrs)
    extra = () if handler is None else (handler,)
    with server_class(("127.0.0.1", args.port), *extra) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
