"""Unix-domain sockets: the socket file's life and permissions, abstract
addresses, and datagram replies to client paths.

Every path lives in tmp_path; abstract names carry the pid and a counter so
parallel runs never meet. Client sockets have timeouts; serving() checks leaks.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pwd
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from pyserve import ForkingMixIn, StreamRequestHandler, ThreadingMixIn, unix
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.testing import serving
from pyserve.unix import UnixDatagramServer, UnixStreamServer

TIMEOUT = 10.0
LINUX = sys.platform.startswith("linux")

STRATEGIES = [
    pytest.param(None, id="sync"),
    pytest.param(ThreadingMixIn, id="threading"),
    pytest.param(ThreadPoolMixIn, id="pool"),
    pytest.param(ForkingMixIn, id="forking"),
]

_names = itertools.count()


def abstract_name() -> str:
    return f"\0pyserve-test-{os.getpid()}-{next(_names)}"


def server_class(base: type[Any], strategy: Optional[type[Any]], **attributes: Any) -> Any:
    return type("Server", (strategy, base) if strategy else (base,), attributes)


class Echo(StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def echo(address: Any) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address)
        client.sendall(b"hello\n")
        return client.makefile("rb").readline()


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------ file life


def test_own_socket_file_is_removed_on_close(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with serving(UnixStreamServer(path, Echo)):
        assert echo(path) == b"hello\n"
    assert not os.path.exists(path)


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening, then closed: a stale file
    with serving(UnixStreamServer(path, Echo)):
        assert echo(path) == b"hello\n"


def test_live_socket_is_not_stolen(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with UnixStreamServer(path, Echo), pytest.raises(OSError, match="a live server"):
        UnixStreamServer(path, Echo)


def test_bound_but_not_yet_listening_server_keeps_its_socket_file(tmp_path: Path) -> None:
    """Between bind() and listen() a socket refuses connections just as a stale
    one does; a second server must not read that as stale and delete the file."""
    path = str(tmp_path / "s.sock")
    first = UnixStreamServer(path, Echo, bind_and_activate=False)
    try:
        first.server_bind()  # bound, not listening yet
        with pytest.raises(OSError, match="a live server") as refused:
            UnixStreamServer(path, Echo)
        assert refused.value.errno == errno.EADDRINUSE
        assert os.path.exists(path)
        first.server_activate()
        with serving(first):
            assert echo(path) == b"hello\n"
    finally:
        first.server_close()


@pytest.mark.parametrize("kind", [UnixStreamServer, UnixDatagramServer])
def test_servers_starting_at_once_on_one_path_exactly_one_wins(
    tmp_path: Path, kind: type[Any]
) -> None:
    path = str(tmp_path / "s.sock")
    contenders = 8
    start = threading.Barrier(contenders, timeout=TIMEOUT)
    won: list[Any] = []
    refused: list[int] = []

    def contend() -> None:
        start.wait()
        try:
            won.append(kind(path, Echo))
        except OSError as exc:
            refused.append(exc.errno or 0)

    for _round in range(5):  # bounded: a few rounds make a missed race likely to show
        threads = [threading.Thread(target=contend) for _ in range(contenders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        try:
            assert len(won) == 1, won
            assert refused == [errno.EADDRINUSE] * (contenders - 1)
            assert os.path.exists(path)
        finally:
            for server in won:
                server.server_close()
        assert os.listdir(tmp_path) == []
        won.clear()
        refused.clear()
        start.reset()


def test_lock_file_is_removed_on_close(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with UnixStreamServer(path, Echo):
        assert sorted(os.listdir(tmp_path)) == ["s.sock", "s.sock.lock"]
    assert os.listdir(tmp_path) == []


def test_failed_start_leaves_no_lock_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    Path(path).write_text("precious data")
    with pytest.raises(OSError, match="Address already in use"):
        UnixStreamServer(path, Echo)
    assert os.listdir(tmp_path) == ["s.sock"]


@pytest.mark.parametrize("kind", [UnixStreamServer, UnixDatagramServer])
def test_socket_file_appears_only_with_its_final_mode(
    tmp_path: Path, kind: type[Any], monkeypatch: Any
) -> None:
    """A datagram socket receives from the moment it is bound: if its file sat at
    the path with the umask's mode before chmod, anyone could send meanwhile."""
    path = str(tmp_path / "s.sock")
    seen_at_path: list[bool] = []
    real = unix.set_socket_file_access

    def watched(target: Any, *access: Any) -> None:
        seen_at_path.append(os.path.lexists(path))
        real(target, *access)

    monkeypatch.setattr(unix, "set_socket_file_access", watched)
    with server_class(kind, None, socket_mode=0o600)(path, Echo) as server:
        assert seen_at_path == [False]
        assert mode_of(path) == 0o600
        assert server.server_address == path
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_socket_mode_is_set_before_listening(tmp_path: Path, mode: int) -> None:
    seen: list[int] = []

    class Server(UnixStreamServer):
        socket_mode = mode

        def server_activate(self) -> None:
            seen.append(mode_of(self.server_address))
            super().server_activate()

    path = str(tmp_path / "s.sock")
    with serving(Server(path, Echo)):
        assert seen == [mode]
        assert mode_of(path) == mode
        assert echo(path) == b"hello\n"


def test_socket_owner_and_group_are_set_by_id(tmp_path: Path) -> None:
    class Server(UnixStreamServer):
        socket_owner = os.getuid()
        socket_group = os.getgid()

    path = str(tmp_path / "s.sock")
    with Server(path, Echo):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_socket_owner_and_group_are_set_by_name(tmp_path: Path) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")

    class Server(UnixStreamServer):
        socket_owner = "nobody"
        socket_group = nobody.pw_gid

    path = str(tmp_path / "s.sock")
    with Server(path, Echo):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)


@pytest.mark.parametrize("bad", ["660", 0o70000, -1, True])
def test_bad_socket_mode_is_refused_naming_it_and_leaves_no_file(
    tmp_path: Path, bad: object
) -> None:
    path = str(tmp_path / "s.sock")
    with pytest.raises(ValueError, match=rf"socket_mode .*{bad!r}"):
        server_class(UnixStreamServer, None, socket_mode=bad)(path, Echo)
    assert not os.path.exists(path)


def test_unknown_owner_is_refused_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    cls = server_class(UnixStreamServer, None, socket_owner="no-such-user-pyserve")
    with pytest.raises(ValueError, match="socket_owner 'no-such-user-pyserve'"):
        cls(path, Echo)
    assert not os.path.exists(path)


@pytest.mark.skipif(not LINUX, reason="abstract Unix addresses are Linux-only")
def test_socket_mode_on_an_abstract_address_is_refused() -> None:
    cls = server_class(UnixStreamServer, None, socket_mode=0o600)
    with pytest.raises(ValueError, match="need a socket file"):
        cls(abstract_name(), Echo)


# ----------------------------------------------------------- abstract addresses


@pytest.mark.skipif(not LINUX, reason="abstract Unix addresses are Linux-only")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("spelling", ["str", "bytes"])
def test_abstract_address_serves_without_a_file(
    strategy: Optional[type[Any]], spelling: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # a file, if one were made, would land here
    name = abstract_name()
    address: Any = name if spelling == "str" else name.encode()
    server = server_class(UnixStreamServer, strategy)(address, Echo)
    with serving(server):
        assert server.server_address == name.encode()
        assert echo(server.server_address) == b"hello\n"
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------- datagram replies


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_datagram_reply_reaches_the_client_path(
    strategy: Optional[type[Any]], tmp_path: Path
) -> None:
    server = server_class(UnixDatagramServer, strategy)(str(tmp_path / "server.sock"), DatagramEcho)
    with serving(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.bind(str(tmp_path / "client.sock"))
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100) == (b"ping", server.server_address)


@pytest.mark.parametrize("strategy", STRATEGIES[:2])
def test_reply_to_an_unbound_client_is_one_log_line(
    strategy: Optional[type[Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_class(UnixDatagramServer, strategy)(str(tmp_path / "server.sock"), DatagramEcho)
    caplog.set_level(logging.DEBUG, logger="pyserve")
    with serving(server):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
            unbound.sendto(b"lost", server.server_address)
        # The server carries on: a bound client still gets its reply.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.bind(str(tmp_path / "client.sock"))
            client.sendto(b"ping", server.server_address)
            assert client.recvfrom(100)[0] == b"ping"
    records = [r for r in caplog.records if r.name.startswith("pyserve")]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING
    assert "must bind its socket" in records[0].getMessage()
    assert records[0].exc_info is None  # one line, no traceback
    assert server.unreplyable_datagrams == 1


def test_reply_to_a_client_that_removed_its_path_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = UnixDatagramServer(str(tmp_path / "server.sock"), DatagramEcho)
    caplog.set_level(logging.DEBUG, logger="pyserve")
    with server, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(tmp_path / "gone.sock"))
        client.sendto(b"ping", server.server_address)
        client.close()
        os.unlink(tmp_path / "gone.sock")
        server.handle_request()  # the reply finds nobody there
    records = [r for r in caplog.records if r.name.startswith("pyserve")]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert server.unreplyable_datagrams == 1


def test_a_flood_of_unreplyable_clients_is_one_log_line_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = UnixDatagramServer(str(tmp_path / "server.sock"), DatagramEcho)
    caplog.set_level(logging.DEBUG, logger="pyserve")
    with server:
        for _ in range(5):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
                unbound.sendto(b"lost", server.server_address)
            server.handle_request()  # the reply has nowhere to go
        # Over-long datagrams share the server's log of peer faults, by their own reason.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as big:
            big.sendto(b"x" * (server.max_packet_size + 1), server.server_address)
            server.handle_request()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pyserve")]
    assert len(messages) == 2, messages
    assert "(1 so far; a client must bind its socket to receive replies)" in messages[0]
    assert "longer than max_packet_size" in messages[1]
    assert server.unreplyable_datagrams == 5
