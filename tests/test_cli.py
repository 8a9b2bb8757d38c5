"""The ``pyserve`` command, end to end: each test runs ``python -m pyserve`` in a
subprocess, waits for the line announcing the bound address (readiness by
construction: the socket listens before the line is printed), talks to it as a
real client, signals it, and checks the exit code and what it wrote."""

from __future__ import annotations

import errno
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from peers import make_certificates, require_binary

import pyserve
from pyserve.cli import build as cli_build
from pyserve.cli import command as cli
from pyserve.cli.target import resolve_target

DEADLINE = 10.0
# Where the pyserve under test lives (the source tree, or site-packages under tox):
# the subprocesses import that same copy, and run from there.
ROOT = Path(pyserve.__file__).resolve().parent.parent
ANNOUNCE = re.compile(r"^pyserve: serving (\S+) on (\S+)$")


class Command:
    """A running ``python -m pyserve``, with its output read under deadlines."""

    def __init__(
        self, *args: str, cwd: Optional[Path] = None, launcher: tuple[str, ...] = (), **popen: Any
    ) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd or ROOT)]))
        env.pop("PYSERVE_EXPLAIN", None)
        self.process = subprocess.Popen(
            [*launcher, sys.executable, "-m", "pyserve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd or ROOT,
            env=env,
            **popen,
        )
        self.stdout = ""
        self.stderr = ""

    def addresses(self, count: int = 1) -> list[str]:
        """Wait for ``count`` announcement lines; return their addresses."""
        found: list[str] = []
        assert self.process.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while len(found) < count:
            line = _readline(self.process.stdout, deadline)
            assert line, f"pyserve exited early: {self.finish()}"
            self.stdout += line
            match = ANNOUNCE.match(line.rstrip("\n"))
            if match:
                found.append(match.group(2))
        return found

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.finish()[0]

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate(timeout=DEADLINE)
        self.stdout += out.decode()
        self.stderr += err.decode()
        return self.process.returncode, self.stdout, self.stderr


def _readline(stream: Any, deadline: float) -> str:
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no line from pyserve in time"
            assert selector.select(remaining), "no line from pyserve in time"
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line.decode()


@pytest.fixture
def run() -> Iterator[Any]:
    started: list[Command] = []

    def start(*args: str, **kwargs: Any) -> Command:
        command = Command(*args, **kwargs)
        started.append(command)
        return command

    yield start
    for command in started:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait(DEADLINE)
        for stream in (command.process.stdout, command.process.stderr):
            if stream is not None:
                stream.close()


def run_to_end(*args: str, cwd: Optional[Path] = None) -> tuple[int, str, str]:
    return Command(*args, cwd=cwd).finish()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port)


def tcp_echo(address: str, payload: bytes = b"hello\n") -> bytes:
    with socket.create_connection(host_port(address), timeout=DEADLINE) as client:
        client.sendall(payload)
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:  # the server closed first (it refused the payload): read what it sent
            pass
        return _read_all(client)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


# -- serving and stopping -------------------------------------------------------------


def test_serves_echo_and_exits_0_on_sigterm(run: Any) -> None:
    command = run("echo", "--bind", "127.0.0.1:0")
    [address] = command.addresses()
    assert address.startswith("tcp://127.0.0.1:")
    assert not address.endswith(":0")
    assert tcp_echo(address) == b"hello\n"
    assert command.stop(signal.SIGTERM) == cli.EXIT_OK
    assert "SIGTERM: draining" in command.stderr
    assert "Traceback" not in command.stderr


def test_sigint_also_stops_cleanly(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0")
    command.addresses()
    assert command.stop(signal.SIGINT) == cli.EXIT_OK
    assert "SIGINT: draining" in command.stderr


def test_no_target_means_echo_on_127_0_0_1_9999() -> None:
    args = cli.build_parser().parse_args([])
    assert args.target == "echo"
    assert args.bind is None
    assert cli.DEFAULT_BIND == "127.0.0.1:9999"


def test_drain_lets_a_request_in_flight_finish(run: Any, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(
        textwrap.dedent(
            """
            import pyserve

            class Slow(pyserve.StreamRequestHandler):
                def handle(self):
                    self.wfile.write(b"busy\\n")
                    line = self.rfile.readline()
                    self.wfile.write(b"done " + line)
            """
        )
    )
    command = run("slow:Slow", "--bind", "127.0.0.1:0", cwd=tmp_path)
    [address] = command.addresses()
    with socket.create_connection(host_port(address), timeout=DEADLINE) as client:
        assert client.recv(5) == b"busy\n"  # the handler is running
        command.process.send_signal(signal.SIGTERM)
        client.sendall(b"last\n")
        assert _read_all(client) == b"done last\n"
    assert command.finish()[0] == cli.EXIT_OK


def test_second_signal_forces_exit_1(run: Any, tmp_path: Path) -> None:
    (tmp_path / "stuck.py").write_text(
        textwrap.dedent(
            """
            import threading, pyserve

            class Stuck(pyserve.BaseRequestHandler):
                def handle(self):
                    self.request.sendall(b"busy\\n")
                    threading.Event().wait(60)  # ignores the drain on purpose
            """
        )
    )
    command = run("stuck:Stuck", "--bind", "127.0.0.1:0", "--drain-timeout", "60", cwd=tmp_path)
    [address] = command.addresses()
    with socket.create_connection(host_port(address), timeout=DEADLINE) as client:
        assert client.recv(5) == b"busy\n"
        command.process.send_signal(signal.SIGTERM)
        _wait_for_stderr(command, "draining")
        assert command.stop(signal.SIGTERM) == cli.EXIT_FORCED
    assert "second signal" in command.stderr


def _wait_for_stderr(command: Command, text: str) -> None:
    assert command.process.stderr is not None
    deadline = time.monotonic() + DEADLINE
    while text not in command.stderr:
        command.stderr += _readline(command.process.stderr, deadline)


def test_several_binds_tcp_udp_and_unix_each_serve(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    command = run(
        "echo", "--bind", "127.0.0.1:0", "--bind", "udp://127.0.0.1:0", "--bind", f"unix:{path}"
    )
    tcp, udp, unix = command.addresses(3)
    assert tcp_echo(tcp) == b"hello\n"
    assert udp.startswith("udp://127.0.0.1:")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"ping", host_port(udp))
        assert client.recv(100) == b"ping"
    assert unix == f"unix:{path}"
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(DEADLINE)
        client.connect(str(path))
        client.sendall(b"over unix\n")
        client.shutdown(socket.SHUT_WR)
        assert _read_all(client) == b"over unix\n"
    assert command.stop() == cli.EXIT_OK
    assert not path.exists()  # the socket file is removed on close


def test_ipv6_bind_is_announced_in_brackets(run: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    command = run("--bind", "[::1]:0")
    [address] = command.addresses()
    assert address.startswith("tcp://[::1]:")
    assert tcp_echo(address) == b"hello\n"
    assert command.stop() == cli.EXIT_OK


@pytest.mark.parametrize("concurrency", ["sync", "thread", "pool", "fork"])
def test_every_concurrency_strategy_serves(run: Any, concurrency: str) -> None:
    command = run("--bind", "127.0.0.1:0", "--concurrency", concurrency)
    [address] = command.addresses()
    assert tcp_echo(address) == b"hello\n"
    assert command.stop() == cli.EXIT_OK


def test_prefork_processes_serve_and_stop(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0", "--processes", "2")
    [address] = command.addresses()
    for _ in range(4):
        assert tcp_echo(address) == b"hello\n"
    assert command.stop() == cli.EXIT_OK


def test_module_attr_handler_class_is_served(run: Any, tmp_path: Path) -> None:
    (tmp_path / "shout.py").write_text(
        "import pyserve\n"
        "class Shout(pyserve.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(self.rfile.readline().upper())\n"
    )
    command = run("shout:Shout", "--bind", "127.0.0.1:0", cwd=tmp_path)
    [address] = command.addresses()
    assert tcp_echo(address, b"quiet\n") == b"QUIET\n"
    assert command.stop() == cli.EXIT_OK


SHOUT_CALLBACKS = (
    "import pyserve\n"
    "class Shout(pyserve.ConnectionHandler):\n"
    "    def data_received(self, data):\n"
    "        self.write(data.upper())\n"
)


def test_connection_handler_is_multiplexed_by_default(run: Any, tmp_path: Path) -> None:
    (tmp_path / "shout.py").write_text(SHOUT_CALLBACKS)
    command = run("shout:Shout", "--bind", "127.0.0.1:0", "--trace", cwd=tmp_path)
    [address] = command.addresses()
    assert tcp_echo(address, b"quiet\n") == b"QUIET\n"
    assert command.stop() == cli.EXIT_OK
    assert "process_request [MultiplexingMixIn]" in command.stderr


@pytest.mark.parametrize(
    ("target", "concurrency", "complaint"),
    [
        (
            "shout:Shout",
            "thread",
            "Shout is a ConnectionHandler: it runs with --concurrency multiplex, not thread",
        ),
        ("echo", "multiplex", "--concurrency multiplex needs a pyserve.ConnectionHandler"),
        ("shout:Shout --access-log", "multiplex", "where AccessLogMixIn do their work"),
    ],
)
def test_concurrency_must_suit_the_handler(
    tmp_path: Path, target: str, concurrency: str, complaint: str
) -> None:
    (tmp_path / "shout.py").write_text(SHOUT_CALLBACKS)
    code, _, err = run_to_end(
        *target.split(), "--bind", "127.0.0.1:0", "--concurrency", concurrency, cwd=tmp_path
    )
    assert code == cli.EXIT_USAGE
    assert complaint in err


def test_module_attr_factory_returns_the_server(run: Any, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import pyserve\n"
        "class Hi(pyserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(b'hi from a factory')\n"
        "def make(address):\n"
        "    return pyserve.TCPServer(address, Hi)\n"
    )
    command = run("app:make", "--bind", "127.0.0.1:0", cwd=tmp_path)
    [address] = command.addresses()
    assert tcp_echo(address, b"") == b"hi from a factory"
    assert command.stop() == cli.EXIT_OK


def test_max_connections_refuses_the_one_too_many(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0", "--max-connections", "1")
    [address] = command.addresses()
    with socket.create_connection(host_port(address), timeout=DEADLINE) as first:
        first.sendall(b"held\n")
        assert first.recv(5) == b"held\n"  # in flight: it counts
        with socket.create_connection(host_port(address), timeout=DEADLINE) as second:
            assert _read_all(second) == b""  # closed without a handler
    assert command.stop() == cli.EXIT_OK
    assert "max_connections=1 reached" in command.stderr


def test_idle_timeout_drops_a_silent_client(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0", "--idle-timeout", "0.5")
    [address] = command.addresses()
    with socket.create_connection(host_port(address), timeout=DEADLINE) as client:
        assert _read_all(client) == b""  # closed by the server, not by our timeout
    assert command.stop() == cli.EXIT_OK
    assert "idle_timeout" in command.stderr


def test_max_workers_needs_the_pool() -> None:
    code, _, err = run_to_end("--max-workers", "3", "--bind", "127.0.0.1:0")
    assert code == cli.EXIT_USAGE
    assert "--max-workers needs --concurrency pool" in err


def test_trace_prints_each_hook_call(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0", "--trace")
    [address] = command.addresses()
    tcp_echo(address)
    assert command.stop() == cli.EXIT_OK
    assert "get_request [TCPServer] -> request from ('127.0.0.1'," in command.stderr
    assert "handle [EchoStreamHandler] your code" in command.stderr


def test_access_log_has_one_line_per_request(run: Any) -> None:
    command = run("--bind", "127.0.0.1:0", "--access-log")
    [address] = command.addresses()
    tcp_echo(address)
    tcp_echo(address)
    assert command.stop() == cli.EXIT_OK
    lines = [line for line in command.stderr.splitlines() if "pyserve.access" in line]
    assert len(lines) == 2
    assert re.search(r"pyserve\.access: 127\.0\.0\.1:\d+ \d+\.\d{3}s ok$", lines[0])


def test_version() -> None:
    code, out, _ = run_to_end("--version")
    assert code == 0
    assert re.match(r"pyserve \d+\.\d+\.\d+ \(\w+ 3\.\d+", out)


# -- sockets opened by someone else ------------------------------------------------------


def test_fd_bind_serves_an_inherited_listener(run: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd, port = listener.fileno(), listener.getsockname()[1]
        command = run("--bind", f"fd://{fd}", pass_fds=[fd])
        [address] = command.addresses()
    assert address == f"tcp://127.0.0.1:{port}"
    assert tcp_echo(address) == b"hello\n"  # the child's copy serves; ours is closed
    assert command.stop() == cli.EXIT_OK


def test_fd_bind_of_a_datagram_socket_serves_udp(run: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inherited:
        inherited.bind(("127.0.0.1", 0))
        command = run("--bind", f"fd://{inherited.fileno()}", pass_fds=[inherited.fileno()])
        [address] = command.addresses()
    assert address.startswith("udp://127.0.0.1:")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"dgram", host_port(address))
        assert client.recv(100) == b"dgram"
    assert command.stop() == cli.EXIT_OK


def test_fd_bind_of_a_closed_descriptor_exits_7() -> None:
    with socket.socket() as unused:
        free_fd = unused.fileno()
    code, _, err = run_to_end("--bind", f"fd://{free_fd}")
    assert code == cli.EXIT_SOCKET
    assert "Bad file descriptor" in _one_error_line(err)


def test_systemd_bind_without_activation_exits_7() -> None:
    code, _, err = run_to_end("--bind", "systemd")
    assert code == cli.EXIT_SOCKET
    assert "not socket-activated" in _one_error_line(err)


def test_systemd_socket_activate_starts_pyserve_on_first_connection(
    run: Any, tmp_path: Path
) -> None:
    activate = require_binary("systemd-socket-activate", "systemd")
    path = tmp_path / "activated.sock"
    # -E passes our PYTHONPATH through; systemd-socket-activate binds the path,
    # says so on stderr, and starts pyserve when the first client connects.
    command = run("--bind", "systemd", launcher=(activate, "-l", str(path), "-E", "PYTHONPATH"))
    _wait_for_stderr(command, "Listening on")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(DEADLINE)
        client.connect(str(path))  # queued by the kernel; this starts pyserve
        [address] = command.addresses()
        assert address == f"unix:{path}"
        client.sendall(b"activated\n")
        client.shutdown(socket.SHUT_WR)
        assert _read_all(client) == b"activated\n"
    assert command.stop() == cli.EXIT_OK


# -- TLS and the PROXY protocol ------------------------------------------------------------


def test_tls_cert_and_key_serve_tls(run: Any, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    command = run("--bind", "127.0.0.1:0", *tls)
    [address] = command.addresses()
    context = ssl.create_default_context(cafile=str(certs.ca))
    raw = socket.create_connection(host_port(address), timeout=DEADLINE)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        client.sendall(b"secret\n")
        assert client.recv(100) == b"secret\n"
    assert command.stop() == cli.EXIT_OK


def test_bad_certificate_exits_6(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    code, _, err = run_to_end("--bind", "127.0.0.1:0", "--tls-cert", str(bogus))
    assert code == cli.EXIT_TLS
    assert f"cannot load the TLS certificate '{bogus}'" in _one_error_line(err)


def test_proxy_protocol_gives_the_handler_the_real_client(run: Any, tmp_path: Path) -> None:
    (tmp_path / "who.py").write_text(
        "import pyserve\n"
        "class Who(pyserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(repr(tuple(self.client_address)).encode())\n"
    )
    command = run(
        "who:Who",
        "--bind",
        "127.0.0.1:0",
        "--proxy-protocol",
        "v1",
        "--trusted-proxy",
        "127.0.0.1",
        cwd=tmp_path,
    )
    [address] = command.addresses()
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
    assert tcp_echo(address, header) == b"('192.0.2.7', 5555)"
    assert command.stop() == cli.EXIT_OK


def test_proxy_protocol_v2_only_refuses_a_v1_header(run: Any) -> None:
    command = run(
        "--bind", "127.0.0.1:0", "--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.0/8"
    )
    [address] = command.addresses()
    assert tcp_echo(address, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nhi\n") == b""
    assert command.stop() == cli.EXIT_OK
    assert "only v2 is accepted" in command.stderr


def test_proxy_protocol_needs_trusted_proxies() -> None:
    code, _, err = run_to_end("--bind", "127.0.0.1:0", "--proxy-protocol", "auto")
    assert code == cli.EXIT_USAGE
    assert "--proxy-protocol needs --trusted-proxy" in _one_error_line(err)


# -- errors: one line, a documented exit code, no traceback ---------------------------


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyserve: error: "), err
    return lines[0]


def test_unknown_target_exits_3() -> None:
    code, _, err = run_to_end("no-such-service", "--bind", "127.0.0.1:0")
    assert code == cli.EXIT_TARGET
    assert "unknown target 'no-such-service'" in _one_error_line(err)


def test_unimportable_target_exits_3() -> None:
    code, _, err = run_to_end("no_such_module_here:Handler", "--bind", "127.0.0.1:0")
    assert code == cli.EXIT_TARGET
    assert "cannot import target" in _one_error_line(err)


def test_service_without_a_datagram_handler_exits_3() -> None:
    code, _, err = run_to_end("uppercase", "--bind", "udp://127.0.0.1:0")
    assert code == cli.EXIT_TARGET
    assert "no 'udp' handler" in _one_error_line(err)


@pytest.mark.parametrize(
    "bind", ["localhost", "127.0.0.1:99999", "ftp://x:1", "::1:80", "unix:", "fd://x"]
)
def test_bad_bind_string_exits_2(bind: str) -> None:
    code, _, err = run_to_end("--bind", bind)
    assert code == cli.EXIT_USAGE
    assert f"bad --bind {bind!r}" in _one_error_line(err)


def test_address_in_use_exits_4() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run_to_end("--bind", f"127.0.0.1:{port}")
    assert code == cli.EXIT_ADDRESS_IN_USE
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in _one_error_line(err)


def test_permission_denied_exits_5() -> None:
    path = "/sys/pyserve-cli-test.sock"  # sysfs refuses new files, even to root
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.bind(path)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM):
                pytest.skip(f"binding in /sys fails with {exc} here, not a permission error")
        else:
            os.unlink(path)
            pytest.skip("this machine lets us create files in /sys")
    code, _, err = run_to_end("--bind", f"unix:{path}")
    assert code == cli.EXIT_PERMISSION
    assert f"cannot listen on unix:{path}" in _one_error_line(err)


def test_debug_log_level_shows_the_traceback() -> None:
    code, _, err = run_to_end("no_such_module_here:Handler", "--log-level", "debug")
    assert code == cli.EXIT_TARGET
    assert "Traceback" in err
    assert "pyserve: error: cannot import target" in err


# -- bind strings, in-process ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "address"),
    [
        ("127.0.0.1:80", "tcp", ("127.0.0.1", 80)),
        ("tcp://localhost:0", "tcp", ("localhost", 0)),
        (":8000", "tcp", ("0.0.0.0", 8000)),
        ("[::]:0", "tcp", ("::", 0)),
        ("udp://[::1]:53", "udp", ("::1", 53)),
        ("unix:/run/x.sock", "unix", "/run/x.sock"),
        ("unixgram:rel.sock", "unixgram", "rel.sock"),
    ],
)
def test_parse_bind_round_trips(text: str, transport: str, address: Any) -> None:
    bind = cli_build.parse_bind(text)
    assert (bind.transport, bind.address) == (transport, address)
    assert cli_build.parse_bind(cli_build.format_address(transport, address)).address == address


@pytest.mark.parametrize(
    ("text", "transport", "address"),
    [("fd://3", "fd", 3), ("systemd", "systemd", None), ("systemd:web", "systemd", "web")],
)
def test_parse_bind_of_adopted_sockets(text: str, transport: str, address: Any) -> None:
    bind = cli_build.parse_bind(text)
    assert (bind.transport, bind.address) == (transport, address)


def test_max_connections_per_client_refuses_one_host_not_another(run: Any) -> None:
    """``--max-connections-per-client 1``: 127.0.0.1's second connection is
    refused while 127.0.0.2 is still served."""
    command = run("--bind", "127.0.0.1:0", "--max-connections-per-client", "1")
    [address] = command.addresses()
    with socket.create_connection(host_port(address), timeout=DEADLINE) as first:
        first.sendall(b"held\n")
        assert first.recv(5) == b"held\n"
        with socket.create_connection(host_port(address), timeout=DEADLINE) as second:
            assert _read_all(second) == b""
        other = socket.create_connection(
            host_port(address), timeout=DEADLINE, source_address=("127.0.0.2", 0)
        )
        with other:
            other.sendall(b"elsewhere\n")
            assert other.recv(10) == b"elsewhere\n"
    assert command.stop() == cli.EXIT_OK
    assert "max_connections_per_client=1 reached" in command.stderr


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), 256),  # thread: a thread per connection, bounded per address
        (("--concurrency", "pool"), 32 + 32),  # max_workers plus half the queue
        (("--concurrency", "pool", "--max-workers", "4"), 4 + 32),
        (("--max-connections-per-client", "0"), None),  # explicitly off
        (("--concurrency", "pool", "--max-connections-per-client", "0"), None),
        (("--max-connections-per-client", "9"), 9),
    ],
)
def test_the_per_client_limit_is_on_by_default(options: tuple[str, ...], expected: Any) -> None:
    args = cli.build_parser().parse_args(["echo", *options])
    target = resolve_target(args.target)
    bind = cli_build.parse_bind("127.0.0.1:0")
    server, _ = cli_build.build_server(target, bind, args.concurrency, cli.features_from(args))
    try:
        assert server.max_connections_per_client == expected
    finally:
        server.server_close()
