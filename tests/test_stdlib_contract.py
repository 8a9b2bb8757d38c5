"""pyserve keeps the stdlib's ``socketserver`` contract.

What these tests prove:

* CPython's own ``test.test_socketserver``, from the running interpreter and
  unchanged, passes with pyserve installed as ``socketserver`` (in a subprocess,
  see tests/stdlib_compat/). Its one test that checks objects' ``__module__``
  against the literal name "socketserver" is replaced here by checks of
  ``pyserve.__all__`` in pyserve's own terms.
* The stdlib's request handlers (``http.server``, ``xmlrpc.server``,
  ``wsgiref``) run unchanged on pyserve servers and answer their real clients.
* The stdlib's own servers keep working when ``socketserver`` *is* pyserve
  (in a subprocess, so the module swap cannot leak into this process).

Every server binds 127.0.0.1 port 0, is ready once constructed, and every
client socket and thread join has a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import inspect
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import xmlrpc.client
import xmlrpc.server
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar
from wsgiref import simple_server

import pytest
from peers import missing_peer

import pyserve

HOST = "127.0.0.1"
TIMEOUT = 10.0  # seconds: every client socket and every thread join
# Under pytest-timeout's per-test guard (120 s in pyproject.toml), so a hung
# suite fails here, with its output so far, rather than there. A healthy run of
# either script takes about a second.
SUBPROCESS_TIMEOUT = 100.0
COMPAT_DIR = Path(__file__).parent / "stdlib_compat"
EXIT_SKIP = 77  # run_cpython_socketserver_suite.py: no test.test_socketserver here

# Direct connections only: a proxy from the environment must not see loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ServerT = TypeVar("ServerT")


# --------------------------------------------------------------------- helpers


@contextlib.contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """Run ``server.serve_forever()`` in a thread for the ``with`` body.

    On exit: ``shutdown()``, join the thread with a deadline, ``server_close()``,
    and fail if the serving thread is still alive.
    """
    srv: Any = server
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        srv.shutdown()
        thread.join(TIMEOUT)
        srv.server_close()
    assert not thread.is_alive(), "serve_forever() did not return after shutdown()"


def port_of(server: Any) -> int:
    port: int = server.server_address[1]
    return port


def url(server: Any, path: str) -> str:
    return f"http://{HOST}:{port_of(server)}{path}"


def run_compat_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/stdlib_compat/<name> (with ``args``) on this interpreter and this pyserve.

    The directory this process imported pyserve from goes first on the child's
    PYTHONPATH, and the child must report that same pyserve back.
    """
    pyserve_file = Path(pyserve.__file__).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(pyserve_file.parent.parent), env.get("PYTHONPATH")) if p
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(COMPAT_DIR / name), *args],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            timeout=SUBPROCESS_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.output or b""  # bytes even in text mode
        if isinstance(partial, bytes):
            partial = partial.decode(errors="replace")
        pytest.fail(f"{name} still running after {SUBPROCESS_TIMEOUT:.0f} s\n"
                    f"----- subprocess output so far -----\n{partial}", pytrace=False)
    checks_pyserve = "stdlib" not in args
    if (
        checks_pyserve
        and proc.returncode != EXIT_SKIP
        and f"pyserve from {pyserve_file}\n" not in proc.stdout
    ):
        fail_with_output(f"{name} did not test {pyserve_file}", proc)
    return proc


def fail_with_output(why: str, proc: subprocess.CompletedProcess[str]) -> NoReturn:
    pytest.fail(
        f"{why} (exit code {proc.returncode})\n"
        f"----- subprocess output -----\n{proc.stdout}",
        pytrace=False,
    )


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler that does not log and cannot block forever."""

    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class KeepAliveFileHandler(QuietFileHandler):
    protocol_version = "HTTP/1.1"


class QuietXMLRPCHandler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    timeout = TIMEOUT


class QuietWSGIHandler(simple_server.WSGIRequestHandler):
    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class XMLRPCServerOnPyserve(pyserve.TCPServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    """What ``xmlrpc.server.SimpleXMLRPCServer`` is, built on pyserve."""

    def __init__(self, addr: tuple[str, int], allow_none: bool = False,
                 encoding: str | None = None) -> None:
        self.logRequests = False
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none, encoding)
        pyserve.TCPServer.__init__(self, addr, QuietXMLRPCHandler)


class WSGIServerOnPyserve(pyserve.TCPServer):
    """What ``WSGIRequestHandler`` needs from its server, built on pyserve:
    ``server_name``/``server_port``, ``base_environ`` and ``get_app()``."""

    application: Callable[..., Iterable[bytes]] | None = None

    def server_bind(self) -> None:
        super().server_bind()
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.base_environ = {
            "SERVER_NAME": self.server_name,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(self.server_port),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }

    def get_app(self) -> Callable[..., Iterable[bytes]] | None:
        return self.application

    def set_app(self, application: Callable[..., Iterable[bytes]]) -> None:
        self.application = application


class TimeoutTransport(xmlrpc.client.Transport):
    """``xmlrpc.client`` takes no timeout; put one on its connection."""

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = TIMEOUT
        return conn


def hello_app(environ: dict[str, Any],
              start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


HELLO = b"hello from pyserve\n"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[Any]:
    """A pyserve ThreadingTCPServer serving tmp_path with SimpleHTTPRequestHandler."""
    (tmp_path / "hello.txt").write_bytes(HELLO)
    handler = functools.partial(QuietFileHandler, directory=str(tmp_path))
    with serving(pyserve.ThreadingTCPServer((HOST, 0), handler)) as server:
        yield server


@pytest.fixture
def keepalive_file_server(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "hello.txt").write_bytes(HELLO)
    handler = functools.partial(KeepAliveFileHandler, directory=str(tmp_path))
    with serving(pyserve.ThreadingTCPServer((HOST, 0), handler)) as server:
        yield server


@pytest.fixture
def xmlrpc_server() -> Iterator[XMLRPCServerOnPyserve]:
    server = XMLRPCServerOnPyserve((HOST, 0))
    server.register_function(lambda a, b: a + b, "add")

    def fail(message: object) -> NoReturn:
        raise ValueError(message)

    server.register_function(fail, "fail")
    with serving(server):
        yield server


@contextlib.contextmanager
def http_connection(server: Any) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection(HOST, port_of(server), timeout=TIMEOUT)
    try:
        yield conn
    finally:
        conn.close()


# ------------------------------------------- A. CPython's suite as the contract


def test_cpython_socketserver_suite_passes_on_pyserve() -> None:
    proc = run_compat_script("run_cpython_socketserver_suite.py")
    if proc.returncode == EXIT_SKIP:
        found = re.search(r"^SKIP: (.*)$", proc.stdout, re.MULTILINE)
        reason = found.group(1) if found else "no test.test_socketserver"
        if sys.implementation.name == "cpython":
            # Every CPython CI runs (pyenv's builds) ships its test package.
            missing_peer(reason + " (CPython's test package)")
        pytest.skip(reason)  # Debian's pypy3 leaves lib-python's tests out
    if proc.returncode != 0:
        fail_with_output("test.test_socketserver failed on pyserve", proc)
    ran = re.search(r"^Ran (\d+) tests? in ", proc.stdout, re.MULTILINE)
    if ran is None or int(ran.group(1)) <= 20:
        fail_with_output("expected more than 20 tests to run", proc)
    if not re.search(r"^OK\b", proc.stdout, re.MULTILINE):
        fail_with_output("unittest did not report OK", proc)


def test_all_names_exist() -> None:
    missing = [name for name in pyserve.__all__ if not hasattr(pyserve, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(pyserve.__all__) == len(set(pyserve.__all__))


def test_all_lists_every_public_pyserve_class_and_function() -> None:
    unlisted = []
    for name in dir(pyserve):
        if name.startswith("_"):
            continue
        obj = getattr(pyserve, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        defined_here = str(getattr(obj, "__module__", "")).startswith("pyserve")
        if defined_here and name not in pyserve.__all__:
            unlisted.append(name)
    assert unlisted == []


def test_all_includes_the_stdlib_all() -> None:
    assert set(socketserver.__all__) - set(pyserve.__all__) == set()


# ------------------------------------------- B. stdlib handlers on pyserve


def test_simple_http_handler_serves_a_file_to_urllib(file_server: Any) -> None:
    with OPENER.open(url(file_server, "/hello.txt"), timeout=TIMEOUT) as resp:
        assert resp.status == 200
        assert resp.read() == HELLO


def test_simple_http_handler_serves_a_file_to_http_client(file_server: Any) -> None:
    with http_connection(file_server) as conn:
        conn.request("GET", "/hello.txt")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, HELLO)


def test_simple_http_handler_answers_404_for_a_missing_file(file_server: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        OPENER.open(url(file_server, "/missing.txt"), timeout=TIMEOUT)
    with contextlib.closing(excinfo.value):
        assert excinfo.value.code == 404


def test_simple_http_handler_answers_head_without_a_body(file_server: Any) -> None:
    with http_connection(file_server) as conn:
        conn.request("HEAD", "/hello.txt")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(len(HELLO))
        assert resp.read() == b""


def test_http11_handler_keeps_the_connection_alive(keepalive_file_server: Any) -> None:
    with http_connection(keepalive_file_server) as conn:
        conn.request("GET", "/hello.txt")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, HELLO)
        assert not first.will_close
        sock = conn.sock
        assert sock is not None

        conn.request("GET", "/hello.txt")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, HELLO)
        assert conn.sock is sock, "http.client had to reconnect"


def test_xmlrpc_handler_answers_a_call(xmlrpc_server: XMLRPCServerOnPyserve) -> None:
    with xmlrpc.client.ServerProxy(url(xmlrpc_server, "/RPC2"),
                                   transport=TimeoutTransport()) as proxy:
        assert proxy.add(2, 3) == 5


def test_xmlrpc_handler_returns_a_fault_for_an_exception(
    xmlrpc_server: XMLRPCServerOnPyserve,
) -> None:
    proxy = xmlrpc.client.ServerProxy(url(xmlrpc_server, "/RPC2"),
                                      transport=TimeoutTransport())
    with proxy, pytest.raises(xmlrpc.client.Fault) as excinfo:
        proxy.fail("boom")
    assert "ValueError" in excinfo.value.faultString
    assert "boom" in excinfo.value.faultString


def test_wsgi_handler_runs_an_app() -> None:
    server = WSGIServerOnPyserve((HOST, 0), QuietWSGIHandler)
    server.set_app(hello_app)
    with serving(server), OPENER.open(url(server, "/wsgi/path"), timeout=TIMEOUT) as resp:
        assert resp.status == 200
        assert resp.read() == b"GET /wsgi/path"


# ------------------------------- B4. stdlib servers with pyserve as socketserver


def test_stdlib_servers_work_when_socketserver_is_pyserve() -> None:
    proc = run_compat_script("run_stdlib_servers.py")
    if proc.returncode != 0:
        fail_with_output("a stdlib server failed on pyserve", proc)
    summary = re.search(r"^summary: (\d+) of (\d+) checks passed$",
                        proc.stdout, re.MULTILINE)
    if summary is None or summary.group(1) != summary.group(2):
        fail_with_output("no clean summary line", proc)
    assert "FAIL" not in proc.stdout


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
@pytest.mark.parametrize("socketserver_module", ["stdlib", "pyserve"])
def test_unix_http_server_idiom_skips_http_servers_bind(socketserver_module: str) -> None:
    """``class UnixHTTPServer(UnixStreamServer, HTTPServer)`` calling
    ``UnixStreamServer.server_bind(self)`` gets the socket bound and nothing
    more, on a relative path, and serves a request: as on the stdlib."""
    proc = run_compat_script("run_unix_http_server.py", socketserver_module)
    if proc.returncode != 0 or "PASS" not in proc.stdout:
        fail_with_output(f"the UnixHTTPServer idiom failed on {socketserver_module}", proc)


# ------------------- C. the API surface, walked on the running interpreter's module

#: Where pyserve's class attributes deliberately differ from the stdlib's, and why.
#: docs/differences.rst lists each of these names too (checked below).
DELIBERATE_DIFFERENCES: dict[str, str] = {
    "allow_reuse_address": (
        "true for stream servers on POSIX, so a restart binds while old connections "
        "sit in TIME_WAIT (it never lets two live listeners share a port there)"
    ),
    "request_queue_size": (
        "socket.SOMAXCONN: a backlog of 5 drops most of a burst of connections "
        "(Python 3.15 makes the same change)"
    ),
    "max_packet_size": (
        "65535: every UDP datagram arrives whole; the stdlib's 8192 cut longer ones short"
    ),
    "_threads": (
        "the registry of live request threads is declared per instance in "
        "_init_dispatch_state(); there is no class-level placeholder to share"
    ),
}

#: Dunder methods that are part of the contract (the rest are object's).
CONTRACT_DUNDERS = {"__init__", "__enter__", "__exit__"}


def stdlib_public_classes() -> list[str]:
    return sorted(
        name
        for name, value in vars(socketserver).items()
        if inspect.isclass(value)
        and value.__module__ == "socketserver"
        and not name.startswith("_")
    )


def contract_names(cls: type) -> set[str]:
    """Every attribute a class gets from the stdlib classes in its MRO."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:  # not object
        names |= {
            name
            for name in vars(klass)
            if not (name.startswith("__") and name.endswith("__")) or name in CONTRACT_DUNDERS
        }
    return names


def parameter_shape(function: Any) -> list[tuple[str, str, Any]]:
    """A signature without annotations: each parameter's name, kind and default."""
    return [
        (p.name, p.kind.name, p.default) for p in inspect.signature(function).parameters.values()
    ]


def unwrap(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


@pytest.mark.parametrize("name", stdlib_public_classes())
def test_every_stdlib_class_attribute_and_method_exists_with_the_same_shape(name: str) -> None:
    """Each public class of this interpreter's socketserver: every method with the
    same parameters (names, kinds, defaults), every class attribute with the same
    value, except the deliberate differences listed above."""
    theirs = getattr(socketserver, name)
    ours = getattr(pyserve, name, None)
    assert ours is not None, f"pyserve has no {name}"
    problems = []
    for attribute in sorted(contract_names(theirs)):
        expected = unwrap(inspect.getattr_static(theirs, attribute))
        try:
            actual = unwrap(inspect.getattr_static(ours, attribute))
        except AttributeError:
            if attribute not in DELIBERATE_DIFFERENCES:
                problems.append(f"{attribute}: missing")
            continue
        if inspect.isfunction(expected):
            if not callable(actual):
                problems.append(f"{attribute}: not a method but {actual!r}")
            elif parameter_shape(expected) != parameter_shape(actual):
                problems.append(
                    f"{attribute}{inspect.signature(expected)} is "
                    f"{attribute}{inspect.signature(actual)} in pyserve"
                )
        elif expected != actual and attribute not in DELIBERATE_DIFFERENCES:
            problems.append(f"{attribute} = {expected!r} in the stdlib, {actual!r} in pyserve")
    assert problems == []


def test_deliberate_differences_hold_the_documented_values() -> None:
    reuse = os.name != "nt"
    assert pyserve.TCPServer.allow_reuse_address is reuse
    assert pyserve.UDPServer.allow_reuse_address is False
    assert pyserve.TCPServer.request_queue_size == socket.SOMAXCONN
    assert pyserve.UDPServer.max_packet_size == 65535
    with pyserve.ThreadingTCPServer((HOST, 0), pyserve.StreamRequestHandler) as server:
        assert len(server._threads) == 0  # the instance has it from construction


def test_every_deliberate_difference_is_in_the_docs() -> None:
    text = (Path(__file__).parent.parent / "docs" / "differences.rst").read_text()
    assert [name for name in DELIBERATE_DIFFERENCES if f"``{name}``" not in text] == []


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer"])
def test_instances_have_every_stdlib_instance_attribute(name: str) -> None:
    handler = socketserver.BaseRequestHandler
    with getattr(socketserver, name)((HOST, 0), handler) as theirs, getattr(pyserve, name)(
        (HOST, 0), handler
    ) as ours:
        missing = [attribute for attribute in vars(theirs) if not hasattr(ours, attribute)]
    assert missing == []
