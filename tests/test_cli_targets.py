"""The ``pyserve`` command's TARGET: what it imports, and how it says what went wrong.

Every failure is one line on stderr and a documented exit code (docs/cli.rst),
never a traceback: a module that does not compile, a target of the wrong kind,
a module whose import never returns (it starts a server at its top level) and a
Ctrl-C during that import. A user's own ``handlers`` module wins over pyserve's
ready-handler package for the user's code, while registry names still work.
"""

from __future__ import annotations

import signal
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_cli import DEADLINE, Command, _one_error_line, _wait_for_stderr, host_port, tcp_echo

from handlers import registry
from pyserve.cli import command as cli


def _write(directory: Path, name: str, source: str) -> None:
    (directory / name).write_text(textwrap.dedent(source))


def _run(*args: str, cwd: Path) -> tuple[int, str, str]:
    return Command(*args, cwd=cwd).finish()


# -- exit 3: a target that cannot be served, in one line ------------------------------


def test_a_syntax_error_in_the_target_module_exits_3_in_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "class Echo(:\n    pass\n")
    code, _, err = _run("broken:Echo", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    line = _one_error_line(err)
    assert "broken.py" in line
    assert "line 1" in line


def test_an_exception_at_import_exits_3_in_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "raises.py", "raise ValueError('no config file')\n")
    code, _, err = _run("raises:Echo", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    assert "ValueError: no config file" in _one_error_line(err)


def test_a_zero_argument_function_exits_3_in_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "app.py", "def make():\n    return None\n")
    code, _, err = _run("app:make", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    line = _one_error_line(err)
    assert "'app:make'" in line
    assert "address" in line


def test_a_class_that_is_not_a_request_handler_exits_3(tmp_path: Path) -> None:
    _write(tmp_path, "app.py", "class Config:\n    port = 80\n")
    code, _, err = _run("app:Config", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    assert "not a request handler" in _one_error_line(err)


def test_a_value_that_is_neither_exits_3(tmp_path: Path) -> None:
    _write(tmp_path, "app.py", "PORT = 80\n")
    code, _, err = _run("app:PORT", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    assert "'app:PORT'" in _one_error_line(err)


def test_a_factory_that_raises_exits_3_in_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "app.py", "def make(address):\n    raise KeyError('settings')\n")
    code, _, err = _run("app:make", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    assert "KeyError" in _one_error_line(err)


def test_a_server_loop_that_fails_exits_8(start: Any, tmp_path: Path) -> None:
    _write(
        tmp_path,
        "app.py",
        """
        import pyserve

        class Broken(pyserve.TCPServer):
            def service_actions(self):
                raise RuntimeError("the loop broke")

        def make(address):
            return Broken(address, pyserve.BaseRequestHandler)
        """,
    )
    command = start("app:make", "--bind", "127.0.0.1:0", cwd=tmp_path)
    code, _, err = command.finish()
    assert code == cli.EXIT_CRASHED
    assert "the loop broke" in err


# -- a module whose import never returns -------------------------------------------------

SERVES_AT_IMPORT = """
import pyserve as socketserver

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)

with socketserver.TCPServer(("127.0.0.1", 0), Echo) as server:
    server.serve_forever()
"""


def test_an_import_that_does_not_return_is_explained(start: Any, tmp_path: Path) -> None:
    _write(tmp_path, "myapp.py", SERVES_AT_IMPORT)
    command = start("myapp:Echo", "--bind", "127.0.0.1:0", cwd=tmp_path)
    _wait_for_stderr(command, "__main__")
    [line] = [text for text in command.stderr.splitlines() if "__main__" in text]
    assert "'myapp'" in line
    assert "serve_forever" in line


def test_ctrl_c_during_import_exits_3_with_one_line(start: Any, tmp_path: Path) -> None:
    _write(tmp_path, "myapp.py", SERVES_AT_IMPORT)
    command = start("myapp:Echo", "--bind", "127.0.0.1:0", cwd=tmp_path)
    _wait_for_stderr(command, "__main__")
    command.process.send_signal(signal.SIGINT)
    code, _, err = command.finish()
    assert code == cli.EXIT_TARGET
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pyserve: error: ")]
    assert len(errors) == 1
    assert "interrupted while importing 'myapp'" in errors[0]


# -- the user's handlers module, and pyserve's ----------------------------------------------

USER_HANDLERS = """
def shout(text):
    return text.upper()
"""

USER_APP = """
import pyserve
import handlers

class Shout(pyserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(handlers.shout(line.decode()).encode())
"""


def test_the_users_handlers_module_wins_for_the_users_code(start: Any, tmp_path: Path) -> None:
    _write(tmp_path, "handlers.py", USER_HANDLERS)
    _write(tmp_path, "app.py", USER_APP)
    command = start("app:Shout", "--bind", "127.0.0.1:0", cwd=tmp_path)
    [address] = command.addresses()
    assert tcp_echo(address, b"quiet\n") == b"QUIET\n"
    assert command.stop() == cli.EXIT_OK
    assert "AttributeError" not in command.stderr


def test_registry_names_still_work_beside_a_users_handlers_module(
    start: Any, tmp_path: Path
) -> None:
    _write(tmp_path, "handlers.py", USER_HANDLERS)
    # `python -m pyserve` puts its directory (tmp_path) first on sys.path.
    command = start("uppercase", "--bind", "127.0.0.1:0", cwd=tmp_path)
    [address] = command.addresses()
    assert tcp_echo(address, b"quiet\n") == b"QUIET\n"
    assert command.stop() == cli.EXIT_OK


def test_a_module_attr_target_does_not_load_pyserves_handlers(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "probe.py",
        """
        import sys, pyserve

        def make(address):
            print("handlers loaded:", "handlers" in sys.modules, flush=True)
            raise SystemExit(0)
        """,
    )
    _, out, _ = _run("probe:make", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert "handlers loaded: False" in out


def test_help_lists_the_ready_handler_names(tmp_path: Path) -> None:
    _write(tmp_path, "handlers.py", USER_HANDLERS)
    code, out, _ = _run("--help", cwd=tmp_path)
    assert code == 0
    for name in ("echo", "daytime", "uppercase", "chat", "resp"):
        assert name in out


def test_a_stream_and_a_datagram_class_serve_tcp_and_udp(start: Any, tmp_path: Path) -> None:
    _write(
        tmp_path,
        "both.py",
        """
        import pyserve

        class Lines(pyserve.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"stream " + self.rfile.readline())

        class Packets(pyserve.DatagramRequestHandler):
            def handle(self):
                self.wfile.write(b"datagram " + self.rfile.read())
        """,
    )
    command = start(
        "both:Lines,Packets",
        "--bind", "127.0.0.1:0", "--bind", "udp://127.0.0.1:0",
        cwd=tmp_path,
    )  # fmt: skip
    tcp, udp = command.addresses(2)
    assert tcp_echo(tcp, b"a\n") == b"stream a\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"b", host_port(udp))
        assert client.recv(100) == b"datagram b"
    assert command.stop() == cli.EXIT_OK


def test_a_datagram_handler_alone_serves_udp(start: Any, tmp_path: Path) -> None:
    _write(
        tmp_path,
        "packets.py",
        """
        import pyserve

        class Packets(pyserve.DatagramRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.read().upper())
        """,
    )
    command = start("packets:Packets", "--bind", "udp://127.0.0.1:0", cwd=tmp_path)
    [udp] = command.addresses()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"up", host_port(udp))
        assert client.recv(100) == b"UP"
    assert command.stop() == cli.EXIT_OK


def test_a_datagram_handler_on_a_tcp_bind_exits_3(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "packets.py",
        "import pyserve\nclass Packets(pyserve.DatagramRequestHandler):\n    pass\n",
    )
    code, _, err = _run("packets:Packets", "--bind", "127.0.0.1:0", cwd=tmp_path)
    assert code == cli.EXIT_TARGET
    assert "datagram" in _one_error_line(err)


def test_help_lists_each_ready_handler_in_a_column_that_fits_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse and the list below wrap to it
    text = cli.build_parser().format_help()
    listed = text.split("ready handlers (TARGET):\n")[1]
    assert [line for line in listed.splitlines() if len(line) > 80] == []
    starts = [line.split()[0] for line in listed.splitlines() if not line.startswith("   ")]
    assert starts == list(registry.names())  # each name stands alone, in order
    for name in registry.names():
        line = next(line for line in listed.splitlines() if line.split()[0] == name)
        assert line.startswith(f"  {name}  ") or line.strip() == name, line
