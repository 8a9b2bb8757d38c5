"""The file service: round trips, path safety, size limit, atomic uploads, checksums."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from handlers import registry
from handlers.files import FileHandler, FileServer, FileServiceError, download, upload
from handlers.framing import recv_message, send_message
from pyserve.testing import serving

Serve = Callable[..., Any]


class Writable(FileHandler):
    """Uploads are off by default; these tests are about the upload path too."""

    writable = True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    return served


@pytest.fixture
def connect(serve: Serve, root: Path) -> Iterator[Callable[..., socket.socket]]:
    sockets: list[socket.socket] = []

    def start(handler: type[FileHandler] = Writable) -> socket.socket:
        server = serve(FileServer(("127.0.0.1", 0), root, handler))
        sock = socket.create_connection(server.server_address[:2], timeout=10)
        sockets.append(sock)
        return sock

    yield start
    for sock in sockets:
        sock.close()


def test_upload_then_download_round_trips(connect: Any, root: Path) -> None:
    sock = connect()
    data = os.urandom(300_000)  # several frames
    digest = upload(sock, "dir/sub/blob.bin", data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (root / "dir" / "sub" / "blob.bin").read_bytes() == data
    assert download(sock, "dir/sub/blob.bin") == data


def test_upload_from_a_file_object(connect: Any, root: Path, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"hello file\n")
    with local.open("rb") as file:
        upload(connect(), "copy.txt", file)
    assert (root / "copy.txt").read_bytes() == b"hello file\n"


def test_empty_file_round_trips(connect: Any, root: Path) -> None:
    sock = connect()
    upload(sock, "empty", b"")
    assert (root / "empty").read_bytes() == b""
    assert download(sock, "empty") == b""


def test_upload_replaces_an_existing_file(connect: Any, root: Path) -> None:
    (root / "f").write_bytes(b"old")
    upload(connect(), "f", b"new")
    assert (root / "f").read_bytes() == b"new"


def test_reply_carries_the_sha256(connect: Any) -> None:
    sock = connect()
    send_message(sock, json.dumps({"op": "put", "path": "x", "size": 3}).encode())
    assert json.loads(recv_message(sock)) == {"ok": True}
    send_message(sock, b"abc")
    assert json.loads(recv_message(sock)) == {
        "ok": True, "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()
    }


@pytest.mark.parametrize(
    "path",
    ["../escape", "a/../../escape", "/etc/passwd", "..", ".", "a//b", "", "a/./b", "nul\0byte"],
)
def test_traversal_paths_are_refused(connect: Any, root: Path, path: str) -> None:
    sock = connect()
    with pytest.raises(FileServiceError):
        upload(sock, path, b"x")
    with pytest.raises(FileServiceError):
        download(sock, path)
    assert sorted(p.name for p in root.parent.iterdir()) == ["root"]
    upload(sock, "ok", b"still works")  # the connection survives a refusal


def test_symlink_out_of_the_root_is_refused(connect: Any, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    sock = connect()
    with pytest.raises(FileServiceError, match="leaves the served directory"):
        download(sock, "link/secret")
    with pytest.raises(FileServiceError, match="leaves the served directory"):
        download(sock, "file-link")
    with pytest.raises(FileServiceError, match="leaves the served directory"):
        upload(sock, "link/planted", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_symlink_inside_the_root_is_not_followed(connect: Any, root: Path) -> None:
    # Even a link that stays inside the root is refused by the O_NOFOLLOW walk,
    # which is what makes a link swapped in after the first check harmless.
    (root / "real").mkdir()
    (root / "real" / "f").write_bytes(b"data")
    (root / "alias").symlink_to(root / "real")
    with pytest.raises(FileServiceError, match="symbolic link"):
        download(connect(), "alias/f")


def test_missing_file_is_refused(connect: Any) -> None:
    with pytest.raises(FileServiceError, match="cannot read"):
        download(connect(), "nope")


def test_upload_over_the_size_limit_is_refused_before_any_data(connect: Any, root: Path) -> None:
    class Small(Writable):
        max_file_size = 1000

    sock = connect(Small)
    with pytest.raises(FileServiceError, match="too large"):
        upload(sock, "big", b"x" * 1001)
    assert list(root.iterdir()) == []
    upload(sock, "fits", b"x" * 1000)


def test_dropped_upload_leaves_no_file(root: Path) -> None:
    (root / "target").write_bytes(b"previous")
    # serving() joins the handler thread on exit, so the cleanup has run by then.
    server = FileServer(("127.0.0.1", 0), root, writable=True)
    with serving(server), socket.create_connection(server.server_address[:2], timeout=10) as sock:
        header = {"op": "put", "path": "target", "size": 100_000}
        send_message(sock, json.dumps(header).encode())
        assert json.loads(recv_message(sock)) == {"ok": True}
        # The go-ahead comes after the temporary file was created.
        assert [p.name for p in root.iterdir() if p.name.endswith(".part")]
        send_message(sock, b"partial" * 1000)
    assert [p.name for p in root.iterdir()] == ["target"]
    assert (root / "target").read_bytes() == b"previous"


def test_more_data_than_announced_is_a_protocol_error(
    connect: Any, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = connect()
    send_message(sock, json.dumps({"op": "put", "path": "f", "size": 2}).encode())
    recv_message(sock)
    with caplog.at_level(logging.WARNING, logger="pyserve"):
        send_message(sock, b"abc")
        with pytest.raises(EOFError):
            recv_message(sock)
    assert len(caplog.records) == 1
    assert "more than the 2 bytes" in caplog.records[0].getMessage()
    assert list(root.iterdir()) == []


def test_request_that_is_not_json_ends_the_connection(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sock = connect()
    with caplog.at_level(logging.WARNING, logger="pyserve"):
        send_message(sock, b"GET /etc/passwd")
        with pytest.raises(EOFError):
            recv_message(sock)
    assert ["not JSON" in r.getMessage() for r in caplog.records] == [True]


def test_file_server_needs_an_existing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        FileServer(("127.0.0.1", 0), tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "module"),
    [("chat", "handlers.chat"), ("resp", "handlers.resp"), ("files", "handlers.files")],
)
def test_registry_names_the_application_handlers(name: str, module: str) -> None:
    assert registry.get(name, "tcp").__module__.split(".")[:2] == module.split(".")
