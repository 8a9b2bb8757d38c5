"""The ``pyserve`` command's stop, announce and option behaviour, end to end.

Stopping: the first Ctrl-C says it drains, for how long, and that a second
Ctrl-C stops at once, which it then does. The drain report is one readable
line. Announce lines name the transport (``tcp://``, ``udp://``, ``tls://``).
Options: ``--socket-mode`` for Unix socket files, mutual TLS (``--tls-ca``,
``--tls-verify-client``), and clear messages for swapped certificate and key.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from peers import Certificates, make_certificates, require_binary
from test_cli import (
    DEADLINE,
    Command,
    _one_error_line,
    _read_all,
    _readline,
    _wait_for_stderr,
    host_port,
    tcp_echo,
)

from handlers import registry
from pyserve.cli import command as cli

# -- stopping ----------------------------------------------------------------------------


def _idle_client_session(start: Any) -> tuple[Command, socket.socket]:
    """A server with one idle client connected (its handler waits for a line)."""
    command = start("echo", "--bind", "127.0.0.1:0", "--drain-timeout", "60")
    [address] = command.addresses()
    client = socket.create_connection(host_port(address), timeout=DEADLINE)
    client.sendall(b"one\n")
    assert client.recv(10) == b"one\n"  # the handler is running: one request in flight
    return command, client


def test_first_ctrl_c_says_it_drains_and_that_a_second_stops_at_once(start: Any) -> None:
    command, client = _idle_client_session(start)
    with client:
        command.process.send_signal(signal.SIGINT)
        _wait_for_stderr(command, "draining")
        [line] = [text for text in command.stderr.splitlines() if "draining" in text]
        assert "up to 60 s" in line
        assert "1 request in flight" in line
        assert "a second Ctrl-C" in line
        assert "stops at once" in line


def test_second_ctrl_c_stops_at_once(start: Any) -> None:
    command, client = _idle_client_session(start)
    with client:
        command.process.send_signal(signal.SIGINT)
        _wait_for_stderr(command, "draining")
        started = time.monotonic()
        command.process.send_signal(signal.SIGINT)
        code, _, err = command.finish()
        assert code == cli.EXIT_FORCED
        assert time.monotonic() - started < DEADLINE / 2  # not the 60 s drain
        assert "Traceback" not in err


def test_the_drain_report_is_one_readable_line(start: Any) -> None:
    command = start("echo", "--bind", "127.0.0.1:0")
    [address] = command.addresses()
    assert tcp_echo(address) == b"hello\n"
    assert command.stop(signal.SIGTERM) == cli.EXIT_OK
    assert "DrainReport(" not in command.stderr
    [line] = [text for text in command.stderr.splitlines() if " drained in " in text]
    assert re.search(
        # The echo's request thread may still be closing when the signal lands.
        rf"{re.escape(address)} drained in \d+\.\d\d s: [01] finished, 0 forced, 0 still running",
        line,
    ), line


def test_the_trace_thread_column_names_the_serving_thread(start: Any) -> None:
    command = start("echo", "--bind", "127.0.0.1:0", "--trace", "--concurrency", "sync")
    [address] = command.addresses()
    assert tcp_echo(address) == b"hello\n"
    assert command.stop() == cli.EXIT_OK
    hooks = [line for line in command.stderr.splitlines() if "get_request" in line]
    assert hooks
    assert all(line.split()[1] == "serve-1" for line in hooks), hooks


# -- announce lines --------------------------------------------------------------------------


def test_tcp_and_udp_announce_lines_differ(start: Any) -> None:
    command = start("daytime", "--bind", "127.0.0.1:0", "--bind", "udp://127.0.0.1:0")
    tcp, udp = command.addresses(2)
    assert tcp.startswith("tcp://127.0.0.1:")
    assert udp.startswith("udp://127.0.0.1:")
    assert command.stop() == cli.EXIT_OK


def _tls_options(certs: Certificates) -> tuple[str, ...]:
    return ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))


def test_a_tls_server_announces_tls(start: Any, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    command = start("--bind", "127.0.0.1:0", *_tls_options(certs))
    [address] = command.addresses()
    assert address.startswith("tls://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(certs.ca))
    raw = socket.create_connection(host_port(address), timeout=DEADLINE)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        client.sendall(b"over tls\n")
        assert client.recv(100) == b"over tls\n"
    assert command.stop() == cli.EXIT_OK


# -- TLS certificates --------------------------------------------------------------------------


def test_swapped_certificate_and_key_name_the_files(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    swapped = ("--tls-cert", str(certs.key), "--tls-key", str(certs.cert))
    code, _, err = Command("--bind", "127.0.0.1:0", *swapped).finish()
    assert code == cli.EXIT_TLS
    line = _one_error_line(err)
    assert str(certs.key) in line
    assert "swapped" in line
    assert "PEM lib" not in line


def test_a_key_of_another_certificate_is_named(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    other = make_certificates(tmp_path / "other" if _mkdir(tmp_path / "other") else tmp_path)
    mismatched = ("--tls-cert", str(certs.cert), "--tls-key", str(other.key))
    code, _, err = Command("--bind", "127.0.0.1:0", *mismatched).finish()
    assert code == cli.EXIT_TLS
    line = _one_error_line(err)
    assert str(other.key) in line
    assert "does not belong" in line


def _mkdir(path: Path) -> bool:
    path.mkdir()
    return True


def _client_certificate(certs: Certificates, directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by the test CA (clientAuth), and its key."""
    openssl = require_binary("openssl", "openssl")
    ca_key = certs.ca.parent / "ca.key"
    key, csr, cert = directory / "client.key", directory / "client.csr", directory / "client.pem"
    ext = directory / "client.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=pyserve test client"],
        [openssl, "x509", "-req", "-in", csr, "-CA", certs.ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for argv in commands:
        subprocess.run([str(part) for part in argv], check=True, capture_output=True, timeout=30)
    return cert, key


WHO = """
import pyserve

class Who(pyserve.StreamRequestHandler):
    def handle(self):
        peer = self.request.getpeercert() or {}
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        self.wfile.write(subject.get("commonName", "anonymous").encode() + b"\\n")
"""


def test_mutual_tls_serves_a_client_with_a_certificate_and_refuses_one_without(
    start: Any, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path)
    client_cert, client_key = _client_certificate(certs, tmp_path)
    (tmp_path / "who.py").write_text(textwrap.dedent(WHO))
    command = start(
        "who:Who", "--bind", "127.0.0.1:0", *_tls_options(certs),
        "--tls-ca", str(certs.ca), "--tls-verify-client",
        cwd=tmp_path,
    )  # fmt: skip
    [address] = command.addresses()
    assert address.startswith("tls://")

    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(client_cert), str(client_key))
    assert _ask(context, address) == b"pyserve test client\n"

    anonymous = ssl.create_default_context(cafile=str(certs.ca))
    # With TLS 1.3 the client's handshake completes before the server checks its
    # certificate: the refusal arrives on the first read.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _ask(anonymous, address)
    assert command.stop() == cli.EXIT_OK


def _ask(context: ssl.SSLContext, address: str) -> bytes:
    raw = socket.create_connection(host_port(address), timeout=DEADLINE)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        client.sendall(b"\n")
        answer = _read_all(client)
    if not answer:
        raise ConnectionError("closed without an answer")
    return answer


def test_mutual_tls_with_openssl_s_client(start: Any, tmp_path: Path) -> None:
    openssl = require_binary("openssl", "openssl")
    certs = make_certificates(tmp_path)
    client_cert, client_key = _client_certificate(certs, tmp_path)
    command = start(
        "echo", "--bind", "127.0.0.1:0", *_tls_options(certs),
        "--tls-ca", str(certs.ca), "--tls-verify-client",
    )  # fmt: skip
    [address] = command.addresses()
    host, port = host_port(address)
    client = subprocess.Popen(
        [openssl, "s_client", "-connect", f"{host}:{port}", "-CAfile", str(certs.ca),
         "-cert", str(client_cert), "-key", str(client_key), "-quiet", "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert client.stdin is not None
        client.stdin.write(b"mutual\n")
        client.stdin.flush()
        assert _readline(client.stdout, time.monotonic() + DEADLINE) == "mutual\n"
    finally:
        client.kill()
        client.communicate(timeout=DEADLINE)
    assert command.stop() == cli.EXIT_OK


def test_tls_verify_client_needs_a_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    code, _, err = Command(
        "--bind", "127.0.0.1:0", *_tls_options(certs), "--tls-verify-client"
    ).finish()
    assert code == cli.EXIT_USAGE
    assert "--tls-verify-client needs --tls-ca" in _one_error_line(err)


# -- --socket-mode ------------------------------------------------------------------------------


def test_socket_mode_sets_the_unix_socket_files_permissions(start: Any, tmp_path: Path) -> None:
    path = tmp_path / "private.sock"
    command = start("echo", "--bind", f"unix:{path}", "--socket-mode", "600")
    [address] = command.addresses()
    assert address == f"unix:{path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert command.stop() == cli.EXIT_OK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bind", "127.0.0.1:0", "--socket-mode", "600"), "--socket-mode applies to unix"),
        (("--bind", "unix:/tmp/x.sock", "--socket-mode", "rw"), "bad --socket-mode 'rw'"),
        (("--bind", "unix:/tmp/x.sock", "--socket-mode", "99"), "bad --socket-mode '99'"),
    ],
)
def test_socket_mode_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    code, _, err = Command(*args).finish()
    assert code == cli.EXIT_USAGE
    assert message in _one_error_line(err)


# -- the exit-code table ------------------------------------------------------------------------


def test_the_documented_exit_codes_are_the_commands() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "cli.rst"  # the checkout
    if not page.exists():
        pytest.skip("docs/ is not installed with the package (source checkout only)")
    table = page.read_text().split("Exit codes")[-1]
    documented = {int(code) for code in re.findall(r"^(\d+)\s{2,}\S", table, re.MULTILINE)}
    assert documented == set(cli.EXIT_CODES)


def test_the_access_log_escapes_a_peer_chosen_unix_path() -> None:
    """A PROXY v2 header may carry any Unix source path: it cannot forge a line."""
    from pyserve.cli.features import _client  # noqa: PLC0415 - the one helper under test

    assert _client(("127.0.0.1", 5555)) == "127.0.0.1:5555"
    assert _client(("::1", 5555)) == "[::1]:5555"
    forged = _client("/tmp/x\n2026-12-06 INFO pyserve.access: 10.0.0.1:1 0.001s ok")
    assert "\n" not in forged
    assert forged.startswith("'/tmp/x\\n")
    assert _client("") == "-"


# -- options that take a positive number --------------------------------------------------------

POSITIVE_OPTIONS = {
    "--max-workers": ("N", 4),
    "--processes": ("N", 2),
    "--max-connections": ("N", 100),
    "--drain-timeout": ("SECONDS", 2.5),
    "--idle-timeout": ("SECONDS", 0.5),
}


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("flag", sorted(POSITIVE_OPTIONS))
def test_a_number_option_refuses_a_value_that_is_not_positive(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([flag, value])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"argument {flag}: must be positive, not {value}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted(POSITIVE_OPTIONS))
def test_a_number_option_takes_its_kind_and_shows_its_unit(flag: str) -> None:
    unit, number = POSITIVE_OPTIONS[flag]
    parser = cli.build_parser()
    args = parser.parse_args([flag, str(number)])
    assert getattr(args, flag[2:].replace("-", "_")) == number
    assert type(getattr(args, flag[2:].replace("-", "_"))) is type(number)
    assert re.search(rf"\[{flag} {unit}\]", parser.format_usage())


def test_the_drain_timeout_defaults_to_ten_seconds() -> None:
    assert cli.build_parser().parse_args([]).drain_timeout == 10.0


def test_the_documented_handler_names_are_the_registrys() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "cli.rst"  # the checkout
    if not page.exists():
        pytest.skip("docs/ is not installed with the package (source checkout only)")
    listed = page.read_text().split("a name from the handlers registry")[1].split("(see")[0]
    assert sorted(re.findall(r"``([\w-]+)``", listed)) == sorted(registry.names())
