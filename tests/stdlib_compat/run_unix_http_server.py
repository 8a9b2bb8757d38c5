"""Serve HTTP over a Unix socket the way stdlib code spells it.

The idiom (asyncio's own test servers use it) is a class that puts
``UnixStreamServer`` before ``http.server.HTTPServer`` and, in its
``server_bind()``, calls ``UnixStreamServer.server_bind(self)`` by name to skip
``HTTPServer.server_bind``: that one reads ``server_address`` as ``(host, port)``
and resolves the host with ``getfqdn()``, which for a path is nonsense (a
relative path such as ``./http.sock`` even raises ``UnicodeError``).

Run as ``run_unix_http_server.py pyserve`` it installs pyserve as
``sys.modules["socketserver"]`` first; as ``run_unix_http_server.py stdlib`` it
runs the same code on the stdlib, to show what the contract is. It binds a
relative path inside a fresh temporary directory, serves one real HTTP request
from a thread, and exits 0 only if the reply is right and ``HTTPServer``'s own
``server_bind`` never ran.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

TIMEOUT = 10.0  # seconds, for the client socket and the join

if sys.argv[1:] == ["pyserve"]:
    import pyserve

    sys.modules["socketserver"] = pyserve
    print(f"socketserver under test: pyserve from {Path(pyserve.__file__).resolve()}")
elif sys.argv[1:] != ["stdlib"]:
    sys.exit("usage: run_unix_http_server.py pyserve|stdlib")

import http.server  # noqa: E402
import socketserver  # noqa: E402

http_server_binds = []


class WatchedHTTPServer(http.server.HTTPServer):
    def server_bind(self) -> None:
        http_server_binds.append(self.server_address)
        super().server_bind()


class UnixHTTPServer(socketserver.UnixStreamServer, WatchedHTTPServer):
    def server_bind(self) -> None:
        socketserver.UnixStreamServer.server_bind(self)  # not HTTPServer's
        self.server_name = "localhost"
        self.server_port = 80


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a Unix client has no (host, port) for address_string()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        server = UnixHTTPServer("./http.sock", Hello)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(TIMEOUT)
                client.connect("./http.sock")
                client.sendall(b"GET /unix HTTP/1.0\r\n\r\n")
                reply = b""
                for _ in range(100):  # bounded: the reply is a few hundred bytes
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
            server.server_close()
        os.chdir("/")
    assert not thread.is_alive(), "serve_forever() did not return"
    assert reply.startswith(b"HTTP/1.0 200 "), reply
    assert reply.endswith(b"\r\n\r\nhello /unix"), reply
    assert http_server_binds == [], f"HTTPServer.server_bind ran: {http_server_binds}"
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
