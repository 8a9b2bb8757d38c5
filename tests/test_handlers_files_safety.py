"""The file service's defaults against hostile clients: read-only, no dot-files or
special files, bounded paths and writes, refusals that keep the connection and
leak nothing."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from handlers import registry
from handlers.files import FileHandler, FileServer, FileServiceError, download, upload
from handlers.framing import recv_message, send_message
from pyserve import ThreadingTCPServer

Serve = Callable[..., Any]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    (served / "readme.txt").write_bytes(b"public")
    return served


@pytest.fixture
def connect(serve: Serve, root: Path) -> Iterator[Callable[..., socket.socket]]:
    sockets: list[socket.socket] = []

    def start(server: Any = None) -> socket.socket:
        server = serve(server or FileServer(("127.0.0.1", 0), root))
        sock = socket.create_connection(server.server_address[:2], timeout=10)
        sockets.append(sock)
        return sock

    yield start
    for sock in sockets:
        sock.close()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_default_file_server_is_read_only(connect: Any, root: Path) -> None:
    sock = connect()
    with pytest.raises(FileServiceError, match="read-only"):
        upload(sock, "readme.txt", b"overwritten")
    with pytest.raises(FileServiceError, match="read-only"):
        upload(sock, "new/planted.txt", b"x")
    assert (root / "readme.txt").read_bytes() == b"public"
    assert listing(root) == ["readme.txt"]
    assert download(sock, "readme.txt") == b"public"  # the same connection goes on


def test_the_registered_files_service_is_read_only(connect: Any, root: Path, monkeypatch) -> None:
    monkeypatch.chdir(root)  # what `pyserve files` serves: the current directory
    sock = connect(ThreadingTCPServer(("127.0.0.1", 0), registry.get("files")))
    with pytest.raises(FileServiceError, match="read-only"):
        upload(sock, "readme.txt", b"overwritten")
    assert (root / "readme.txt").read_bytes() == b"public"


def test_writes_are_enabled_explicitly(connect: Any, root: Path) -> None:
    sock = connect(FileServer(("127.0.0.1", 0), root, writable=True))
    upload(sock, "new.txt", b"allowed")
    assert (root / "new.txt").read_bytes() == b"allowed"


@pytest.mark.parametrize("path", [".env", "a/.git/config", ".hidden/x"])
def test_dot_files_are_refused_both_ways(connect: Any, root: Path, path: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"secret")
    sock = connect(FileServer(("127.0.0.1", 0), root, writable=True))
    with pytest.raises(FileServiceError, match="dot"):
        download(sock, path)
    with pytest.raises(FileServiceError, match="dot"):
        upload(sock, path, b"replaced")
    assert target.read_bytes() == b"secret"


def test_a_fifo_is_refused_at_once_and_the_connection_goes_on(connect: Any, root: Path) -> None:
    os.mkfifo(root / "pipe")
    sock = connect()
    started = time.monotonic()
    with pytest.raises(FileServiceError, match="not a regular file"):
        download(sock, "pipe")  # used to block a worker forever in open()
    assert time.monotonic() - started < 5
    assert download(sock, "readme.txt") == b"public"


def test_a_unix_socket_file_is_refused(connect: Any, root: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    with listener:
        listener.bind(str(root / "sock"))
        with pytest.raises(FileServiceError, match="not a regular file"):
            download(connect(), "sock")


def test_deep_paths_are_refused_before_any_directory_is_made(connect: Any, root: Path) -> None:
    sock = connect(FileServer(("127.0.0.1", 0), root, writable=True))
    deep = "a/" * 3000 + "f"  # a 6 KB request
    with pytest.raises(FileServiceError, match="deeper than"):
        upload(sock, deep, b"x")
    assert listing(root) == ["readme.txt"]
    limit = FileHandler.max_path_depth
    upload(sock, "d/" * (limit - 1) + "f", b"fits")


def test_total_bytes_written_are_bounded_per_server(connect: Any, root: Path) -> None:
    class Quota(FileHandler):
        writable = True
        max_bytes_written = 1000

    sock = connect(FileServer(("127.0.0.1", 0), root, Quota))
    upload(sock, "one", b"x" * 600)
    with pytest.raises(FileServiceError, match="quota"):
        upload(sock, "two", b"x" * 600)
    upload(sock, "three", b"x" * 400)
    assert not (root / "two").exists()


def test_directory_get_is_refused_on_an_open_connection_without_leaking_fds(
    connect: Any, root: Path
) -> None:
    (root / "folder").mkdir()
    sock = connect()
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(51):
        with pytest.raises(FileServiceError, match="not a regular file"):
            download(sock, "folder")  # the same connection each time: it stays open
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    assert download(sock, "readme.txt") == b"public"


def test_bad_requests_log_one_line_per_reason(
    serve: Serve, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(FileServer(("127.0.0.1", 0), root))
    caplog.set_level(logging.WARNING, logger="pyserve")
    for _ in range(20):
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            send_message(sock, b"\x1b]0;not json\x07")
            with pytest.raises(EOFError):
                recv_message(sock)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "not JSON" in messages[0]


def test_refusals_escape_the_peers_path(connect: Any) -> None:
    sock = connect()
    send_message(sock, json.dumps({"op": "get", "path": "../\x1b[2J"}).encode())
    reply = json.loads(recv_message(sock))
    assert reply["ok"] is False
    assert "\x1b" not in reply["error"]
    assert "\\x1b" in reply["error"]
