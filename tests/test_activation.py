"""Servers built around sockets bound elsewhere: from_socket, from_fd, systemd.

In-process tests adopt sockets the test bound itself (port 0 on 127.0.0.1 or ::1,
or a path in tmp_path). Cross-process tests start a real child: one inherits a
listener through ``pass_fds``; the others are launched by Debian's
``systemd-socket-activate``, which listens itself (so a client can connect at
once) and starts the server on the first connection. Every child serves exactly
one request and exits; every wait has a deadline.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from peers import needs_binary

import pyserve
from pyserve import (
    ForkingMixIn,
    StreamRequestHandler,
    TCPServer,
    ThreadingMixIn,
    UDPServer,
)
from pyserve.net.activation import ActivationError, listen_fds, systemd_socket
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.testing import serving
from pyserve.unix import UnixStreamServer

TIMEOUT = 10.0
ROOT = str(Path(pyserve.__file__).resolve().parent.parent)

STRATEGIES = [
    pytest.param(None, id="sync"),
    pytest.param(ThreadingMixIn, id="threading"),
    pytest.param(ThreadPoolMixIn, id="pool"),
    pytest.param(ForkingMixIn, id="forking"),
]


def server_class(base: type[Any], strategy: Optional[type[Any]]) -> Any:
    return type("Server", (strategy, base) if strategy else (base,), {})


class Echo(StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def echo(address: Any, family: int = socket.AF_INET, line: bytes = b"hello\n") -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address)
        client.sendall(line)
        return client.makefile("rb").readline()


# ------------------------------------------------------------------ from_socket


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_from_socket_serves_a_listening_socket_without_rebinding(
    strategy: Optional[type[Any]],
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    server = server_class(TCPServer, strategy).from_socket(listener, Echo)
    with serving(server):
        assert server.socket is listener
        assert server.server_address == address
        assert server.socket_adopted
        assert echo(address) == b"hello\n"


def test_from_socket_makes_a_bound_stream_socket_listen() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = TCPServer.from_socket(sock, Echo)
    with serving(server):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert echo(server.server_address) == b"hello\n"


def test_from_socket_family_follows_the_socket() -> None:
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("this kernel has no IPv6 loopback (::1)")
    server = TCPServer.from_socket(listener, Echo)
    with serving(server):
        assert server.address_family == socket.AF_INET6
        assert echo(server.server_address[:2], socket.AF_INET6) == b"hello\n"


def test_from_socket_serves_a_bound_datagram_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = UDPServer.from_socket(sock, DatagramEcho)
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100)[0] == b"ping"


def test_adopted_unix_socket_file_is_left_to_its_creator(tmp_path: Path) -> None:
    path = str(tmp_path / "adopted.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    server = UnixStreamServer.from_socket(sock, Echo)
    with serving(server):
        assert echo(path, socket.AF_UNIX) == b"hello\n"
    assert sock.fileno() == -1  # the server owned and closed the socket...
    assert os.path.exists(path)  # ...but not the file it did not create


def test_from_socket_refuses_a_socket_of_the_wrong_type() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match=r"serves stream sockets.*datagram socket"):
            TCPServer.from_socket(sock, Echo)
        assert sock.fileno() != -1  # refused: still the caller's


def test_from_socket_refuses_the_wrong_family_when_the_class_chose_one() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="UnixStreamServer serves family"):
            UnixStreamServer.from_socket(sock, Echo)


def test_from_socket_refuses_an_unbound_socket() -> None:
    with socket.socket() as sock, pytest.raises(ValueError, match="is not bound"):
        TCPServer.from_socket(sock, Echo)


def test_from_socket_refuses_a_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        with conn, pytest.raises(ValueError, match="is a connection"):
            TCPServer.from_socket(conn, Echo)
        listener.accept()[0].close()


def test_from_fd_serves_the_descriptor() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    server = TCPServer.from_fd(listener.detach(), Echo)
    with serving(server):
        assert echo(address) == b"hello\n"


def test_from_fd_leaves_a_refused_descriptor_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="datagram socket"):
            TCPServer.from_fd(sock.fileno(), Echo)
        assert os.fstat(sock.fileno())  # still open


# ------------------------------------------------------------ environment parsing


def test_listen_fds_is_empty_without_activation() -> None:
    assert listen_fds(environ={}) == []


def test_listen_fds_ignores_variables_meant_for_another_process() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(environ=environ) == []
    assert environ == {}  # unset all the same, as sd_listen_fds does


def test_listen_fds_rejects_a_malformed_count_naming_it() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}
    with pytest.raises(ActivationError, match="LISTEN_FDS='two'"):
        listen_fds(environ=environ)
    assert environ == {}


def test_listen_fds_rejects_names_that_do_not_match_the_count() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}
    with pytest.raises(ActivationError, match="LISTEN_FDNAMES='web' names 1"):
        listen_fds(environ=environ)


def test_systemd_socket_without_activation_says_so() -> None:
    with pytest.raises(ActivationError, match="not socket-activated"):
        systemd_socket(environ={})


# ---------------------------------------------------------------- real processes

CHILD = """
import os, sys
import pyserve
from pyserve import StreamRequestHandler
from pyserve.unix import UnixStreamServer

VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

class Report(StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip().decode()
        self.wfile.write(f"{line} {FACTS}\\n".encode())

how, class_name, argument = sys.argv[1:4]
cls = getattr(pyserve, class_name, None) or UnixStreamServer
if how == "fd":
    server = cls.from_fd(int(argument), Report)
else:
    server = cls.from_systemd(Report, name=argument or None)
left = [name for name in VARIABLES if name in os.environ]
cloexec = not os.get_inheritable(server.fileno())
FACTS = f"family={server.address_family.name} inherited-env={left} cloexec={cloexec}"
with server:
    server.timeout = 30
    server.handle_request()
"""


SERVE = [sys.executable, "-c", CHILD]


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env


def finish(process: subprocess.Popen[bytes]) -> str:
    """Wait for a child that has served its request; kill it if it does not exit."""
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=TIMEOUT)
        raise AssertionError(f"child did not exit: {output!r}") from None
    assert process.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


def ask_line(address: Any, family: int) -> str:
    return echo(address, family, b"hi\n").decode()


@pytest.mark.parametrize("class_name", ["TCPServer", "ThreadingTCPServer", "ForkingTCPServer"])
def test_child_process_serves_a_listener_passed_by_descriptor(class_name: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()
        process = subprocess.Popen(
            [*SERVE, "fd", class_name, str(fd)],
            pass_fds=[fd],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        address = listener.getsockname()
    try:
        reply = ask_line(address, socket.AF_INET)
    finally:
        output = finish(process)
    assert reply.startswith("hi family=AF_INET "), output


ACTIVATOR = shutil.which("systemd-socket-activate")
needs_activator = needs_binary("systemd-socket-activate", "systemd")


def wait_for_stderr(process: subprocess.Popen[bytes], text: bytes) -> bytes:
    """Read the activator's output until ``text`` appears (it prints once listening)."""
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while text not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"activator never printed {text!r}: {seen!r}")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"activator exited: {seen!r}")
            seen += chunk
    return seen


@needs_activator
@pytest.mark.parametrize(
    "class_name", ["UnixStreamServer", "ThreadingUnixStreamServer", "ForkingUnixStreamServer"]
)
def test_systemd_socket_activate_starts_a_server_that_a_client_reaches(
    class_name: str, tmp_path: Path
) -> None:
    assert ACTIVATOR is not None
    path = str(tmp_path / "activated.sock")
    process = subprocess.Popen(
        [ACTIVATOR, "-l", path, "--fdname=echo", *SERVE, "systemd", class_name, "echo"],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_stderr(process, b"Listening on")
        reply = ask_line(path, socket.AF_UNIX)
    finally:
        output = finish(process)
    # The variables were consumed and unset; the descriptor is close-on-exec.
    assert reply == "hi family=AF_UNIX inherited-env=[] cloexec=True\n", output


@needs_activator
def test_systemd_activation_selects_the_socket_by_name(tmp_path: Path) -> None:
    assert ACTIVATOR is not None
    first, second = str(tmp_path / "first.sock"), str(tmp_path / "second.sock")
    process = subprocess.Popen(
        [
            ACTIVATOR,
            "-l",
            first,
            "-l",
            second,
            "--fdname=admin:web",
            *SERVE,
            "systemd",
            "UnixStreamServer",
            "web",
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_stderr(process, b"as 4")
        reply = ask_line(second, socket.AF_UNIX)  # wakes the activator, reaches "web"
    finally:
        output = finish(process)
    assert reply.startswith("hi family=AF_UNIX"), output


# Puts the descriptor argv[1] at 3 and describes it as systemd would, then
# becomes the activator (exec keeps the pid, so LISTEN_PID matches).
HAND_OVER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execv(sys.argv[2], sys.argv[2:])
"""


@needs_activator
def test_systemd_activation_hands_over_a_tcp_listener() -> None:
    # systemd-socket-activate cannot listen on port 0, but passes on sockets it
    # was itself given through LISTEN_FDS: give it our bound listener as fd 3.
    assert ACTIVATOR is not None
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HAND_OVER,
                str(fd),
                ACTIVATOR,
                "--fdname=web",
                *SERVE,
                "systemd",
                "ThreadingTCPServer",
                "web",
            ],
            pass_fds=[fd],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        address = listener.getsockname()
    try:
        reply = ask_line(address, socket.AF_INET)
    finally:
        output = finish(process)
    assert reply == "hi family=AF_INET inherited-env=[] cloexec=True\n", output
