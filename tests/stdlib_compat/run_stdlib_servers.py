"""Run the stdlib's own servers with pyserve installed as ``socketserver``.

``http.server``, ``xmlrpc.server`` and ``wsgiref.simple_server`` build their
servers on ``socketserver``. Here pyserve becomes ``sys.modules["socketserver"]``
*before* any of them is imported, so their ``HTTPServer`` & co. are pyserve
servers; then each one serves a real client on 127.0.0.1 (port 0) from a
thread and is shut down and closed.

It runs in its own process (tests/test_stdlib_contract.py starts it) so the
module swap can never leak into the pytest process. Prints one ``PASS``/``FAIL``
line per check and a closing ``summary: N of M checks passed`` line; exits 0
only if every check passed.
"""

from __future__ import annotations

import contextlib
import http.client
import sys
import tempfile
import threading
import traceback
import urllib.request
import xmlrpc.client
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pyserve

# The swap, before anything imports the stdlib servers (none of the modules
# above does; check_issubclass() below proves it).
sys.modules["socketserver"] = pyserve

import http.server  # noqa: E402
import xmlrpc.server  # noqa: E402
from wsgiref import simple_server  # noqa: E402

TIMEOUT = 10.0  # seconds, for every socket and every join
HOST = "127.0.0.1"

# Direct connections only: a proxy from the environment must not see loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run ``server.serve_forever()`` in a thread; shut down and close after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
    if thread.is_alive():
        raise AssertionError("serve_forever() did not return after shutdown()")


def url(server: Any, path: str = "/") -> str:
    return f"http://{HOST}:{server.server_address[1]}{path}"


def fetch(address: str) -> bytes:
    with OPENER.open(address, timeout=TIMEOUT) as response:
        assert response.status == 200, response.status
        body: bytes = response.read()
        return body


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietWSGIHandler(simple_server.WSGIRequestHandler):
    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


def check_issubclass(_docroot: Path) -> None:
    assert issubclass(http.server.HTTPServer, pyserve.TCPServer), (
        http.server.HTTPServer.__mro__
    )
    assert issubclass(http.server.ThreadingHTTPServer, pyserve.ThreadingMixIn)
    assert issubclass(xmlrpc.server.SimpleXMLRPCServer, pyserve.TCPServer)
    assert issubclass(simple_server.WSGIServer, pyserve.TCPServer)


def check_http_server(server_class: type, docroot: Path) -> None:
    handler = partial(QuietFileHandler, directory=str(docroot))
    with serving(server_class((HOST, 0), handler)) as server:
        assert fetch(url(server, "/hello.txt")) == b"hello from pyserve\n"
        conn = http.client.HTTPConnection(HOST, server.server_address[1],
                                          timeout=TIMEOUT)
        try:
            conn.request("GET", "/missing.txt")
            response = conn.getresponse()
            response.read()
            assert response.status == 404, response.status
        finally:
            conn.close()


def check_http(docroot: Path) -> None:
    check_http_server(http.server.HTTPServer, docroot)


def check_threading_http(docroot: Path) -> None:
    check_http_server(http.server.ThreadingHTTPServer, docroot)


def check_xmlrpc(_docroot: Path) -> None:
    server = xmlrpc.server.SimpleXMLRPCServer((HOST, 0), logRequests=False)
    server.register_function(lambda a, b: a + b, "add")
    proxy = xmlrpc.client.ServerProxy(url(server, "/RPC2"), transport=TimeoutTransport())
    with serving(server), proxy:
        assert proxy.add(2, 3) == 5
        try:
            proxy.no_such_method()
        except xmlrpc.client.Fault:
            pass
        else:
            raise AssertionError("calling an unknown method gave no Fault")


class TimeoutTransport(xmlrpc.client.Transport):
    """``xmlrpc.client`` has no timeout argument; put one on the connection."""

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = TIMEOUT
        return conn


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"hello {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def check_wsgi(_docroot: Path) -> None:
    server = simple_server.make_server(HOST, 0, hello_app,
                                       handler_class=QuietWSGIHandler)
    with serving(server):
        assert isinstance(server, pyserve.TCPServer)
        assert fetch(url(server, "/wsgi")) == b"hello /wsgi"


CHECKS: list[tuple[str, Callable[[Path], None]]] = [
    ("stdlib server classes subclass pyserve's", check_issubclass),
    ("http.server.HTTPServer", check_http),
    ("http.server.ThreadingHTTPServer", check_threading_http),
    ("xmlrpc.server.SimpleXMLRPCServer", check_xmlrpc),
    ("wsgiref.simple_server.WSGIServer", check_wsgi),
]


def main() -> int:
    print(f"socketserver under test: pyserve from {Path(pyserve.__file__).resolve()}")
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        docroot = Path(tmp)
        (docroot / "hello.txt").write_bytes(b"hello from pyserve\n")
        for name, check in CHECKS:
            try:
                check(docroot)
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc(file=sys.stdout)
            else:
                passed += 1
                print(f"PASS {name}")
    print(f"summary: {passed} of {len(CHECKS)} checks passed")
    return 0 if failed == 0 and passed == len(CHECKS) else 1


if __name__ == "__main__":
    sys.exit(main())
