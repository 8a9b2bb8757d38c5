"""Upload and download files under one root directory, over length-prefixed frames.

Theory of operation
-------------------
Every message is a frame of :mod:`handlers.framing` (4-byte length, then payload).
A request is a JSON object; file contents travel as plain data frames of at most
``CHUNK_SIZE`` bytes. Replies are JSON objects with ``"ok"``, plus ``"error"`` when
it is false. The conversation::

    client: {"op": "put", "path": "a/b.txt", "size": N}
    server: {"ok": true}                        (or {"ok": false, "error": ...})
    client: data frames, N bytes in all
    server: {"ok": true, "size": N, "sha256": "..."}

    client: {"op": "get", "path": "a/b.txt"}
    server: {"ok": true, "size": N}             (or {"ok": false, "error": ...})
    server: data frames, N bytes in all
    server: {"ok": true, "sha256": "..."}

The go-ahead before an upload lets the server refuse a bad path or a file over
``max_file_size`` before the client sends a byte of it. Refusals keep the
connection open; a broken conversation (bad JSON, more data than announced) is a
protocol error: one logged line (at most one per reason per minute per server),
and the connection ends.

Safe by default: the protocol has no authentication, so a server is
**read-only** unless writes are enabled by name (``writable = True`` on the
handler class, or ``FileServer(..., writable=True)``); the registry's ``files``
and the command line serve read-only. Whatever the mode:

* dot-files and dot-directories (``.env``, ``.git/``, ``.ssh/``, our own
  ``.NAME.part`` temporary files) are neither served nor written;
* only regular files are served: a FIFO, device or socket is refused from its
  ``stat``, before any ``open`` (opening a FIFO would block a worker until a
  writer appears; opening some devices has side effects), and a directory is
  refused with an error reply, on a connection that stays open;
* a path has at most ``max_path_depth`` parts (16), so one request cannot make
  thousands of nested directories;
* writes are bounded per file (``max_file_size``, 100 MiB) and per server
  (``max_bytes_written``, 1 GiB since it started): an upload that would pass
  either is refused before its first byte.

Path safety: a path is relative, ``/``-separated, without ``..``, ``.`` or empty
parts. It is resolved twice. First with ``os.path.realpath`` and
``os.path.commonpath`` against the root, for a clear refusal. Then, where the
platform allows (Linux), the file is reached by opening one directory at a time
from the root's descriptor with ``ONOFOLLOW``: a symbolic link anywhere on the
way, even one swapped in after the first check, makes the open fail instead of
leaving the root.

Atomic writes (:mod:`handlers.files_storage`): an upload goes to a hidden
temporary file in the target's directory; when the last byte has arrived it is
``fsync``-ed and renamed over the target with ``os.replace``, and the directory
is ``fsync``-ed. A connection that drops mid-upload removes its temporary file
(``finish``), so the target is either the old file or the complete new one,
never a partial one.

Client helpers: :func:`upload` and :func:`download` speak the protocol over a
connected socket and check the SHA-256 checksum the server reports.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
from typing import Any, BinaryIO, Optional, Union

from handlers.files_storage import CLOEXEC, NOFOLLOW, Upload, quota_of
from handlers.framing import recv_message, send_message
from handlers.messages import MessageHandler
from pyserve import ProtocolError, ThreadingTCPServer

__all__ = ["CHUNK_SIZE", "FileHandler", "FileServer", "FileServiceError", "download", "upload"]

#: Bytes per data frame: well under the framing's 1 MiB limit, large enough that
#: the per-frame cost (a header, a call) is noise.
CHUNK_SIZE = 64 * 1024

# Walking directories by descriptor needs openat(2) and friends (os.replace uses
# renameat(2) like os.rename, but only os.rename is listed in supports_dir_fd).
_DIR_FD = {os.open, os.mkdir, os.rename, os.unlink} <= os.supports_dir_fd
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Opening a FIFO for reading blocks until a writer appears, unless non-blocking.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class FileServiceError(Exception):
    """The file server refused a request; the message says why."""


def _reply(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


class FileHandler(MessageHandler):
    """Serve downloads (and, when enabled, uploads) under a root directory.

    Class attributes that may be overridden:

    - ``root``: the directory served (None: the server's ``file_root`` if it has
      one, else the current directory)
    - ``writable``: accept uploads (False; ``FileServer(writable=True)`` also enables)
    - ``max_file_size``: the largest upload accepted, in bytes
    - ``max_bytes_written``: bytes all uploads to one server may write in total
    - ``max_path_depth``: the most ``/``-separated parts a path may have
    """

    root: Optional[str] = None
    #: Off: the protocol has no authentication, so writing is a choice made by name.
    writable: bool = False
    #: 100 MiB: generous for a sample service, yet a bound on one client's disk use.
    max_file_size: int = 100 * 1024 * 1024
    #: 1 GiB per server: ten maximum files, then uploads are refused.
    max_bytes_written: int = 1024 * 1024 * 1024
    #: Deeper than any tree people browse by hand; far from 3,000 directories a request.
    max_path_depth: int = 16

    def connection_made(self) -> None:
        root = self.root or getattr(self.server, "file_root", None) or os.getcwd()
        self.root_path = os.path.realpath(root)
        if not os.path.isdir(self.root_path):
            raise ValueError(f"file root is not a directory: {root!r}")
        self.upload: Optional[Upload] = None
        self.accepts_uploads = self.writable or getattr(self.server, "file_writable", False) is True

    def handle_message(self, payload: bytes) -> Optional[bytes]:
        if self.upload is not None:
            self.upload.write(payload)
            if self.upload.remaining:
                return None
            upload, self.upload = self.upload, None
            try:
                digest = upload.commit()
            finally:
                upload.close()
            return _reply(ok=True, size=upload.size, sha256=digest)
        request = self._request(payload)
        try:
            if request["op"] == "put":
                return self._start_upload(request)
            self._send_file(request)
            return None
        except FileServiceError as exc:
            return _reply(ok=False, error=str(exc))

    def _request(self, payload: bytes) -> dict[str, Any]:
        try:
            request = json.loads(payload)
        except ValueError:
            raise ProtocolError("request is not JSON") from None
        if not isinstance(request, dict) or request.get("op") not in ("put", "get"):
            raise ProtocolError("request is not an object with op 'put' or 'get'")
        return request

    def _start_upload(self, request: dict[str, Any]) -> bytes:
        if not self.accepts_uploads:
            raise FileServiceError("this server is read-only: uploads are not accepted")
        size = request.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FileServiceError("size must be a non-negative integer")
        if size > self.max_file_size:
            raise FileServiceError(f"file too large: {size} bytes (limit {self.max_file_size})")
        directory, name = self._resolve(request.get("path"), create=True)
        quota = quota_of(self.server)
        if not quota.reserve(size, self.max_bytes_written):
            raise FileServiceError(
                f"write quota reached: this server accepts {self.max_bytes_written} bytes in all"
            )
        dir_fd: Optional[int] = None
        try:
            dir_fd = self._open_directory(directory)
            self.upload = Upload(dir_fd, directory, name, size)
        except (OSError, FileServiceError) as exc:
            quota.release(size)
            if dir_fd is not None:
                os.close(dir_fd)
            if isinstance(exc, FileServiceError):
                raise
            raise FileServiceError(f"cannot write {request['path']!r}: {exc.strerror}") from None
        if size == 0:  # nothing will follow: finish now
            self.send_message(_reply(ok=True))
            return self.handle_message(b"") or b""
        return _reply(ok=True)

    def _open_regular_file(self, path: str) -> int:
        """A descriptor of the regular file at client path ``path``, or a refusal.

        The file's type is checked from ``stat`` before opening (a FIFO's open
        would block, a device's may act), then again on the descriptor, in case
        the file was swapped in between. No descriptor outlives a refusal.
        """
        directory, name = self._resolve(path, create=False)
        dir_fd = self._open_directory(directory)
        at: dict[str, Any] = {} if dir_fd is None else {"dir_fd": dir_fd}
        target = name if dir_fd is not None else os.path.join(directory, name)
        try:
            info = os.stat(target, follow_symlinks=False, **at)
            if not stat.S_ISREG(info.st_mode):
                raise FileServiceError(f"not a regular file: {path!r}")
            flags = os.O_RDONLY | NOFOLLOW | CLOEXEC | _NONBLOCK
            fd = os.open(target, flags, **at)
        except OSError as exc:
            raise FileServiceError(f"cannot read {path!r}: {exc.strerror}") from None
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileServiceError(f"not a regular file: {path!r}")
        return fd

    def _send_file(self, request: dict[str, Any]) -> None:
        fd = self._open_regular_file(request.get("path"))  # type: ignore[arg-type]
        with open(fd, "rb") as file:
            info = os.fstat(file.fileno())
            self.send_message(_reply(ok=True, size=info.st_size))
            digest = hashlib.sha256()
            remaining = info.st_size
            while remaining:  # exactly the announced size, even if the file grows
                chunk = file.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise ProtocolError("file shrank while being sent")  # ends the connection
                digest.update(chunk)
                self.send_message(chunk)
                remaining -= len(chunk)
        self.send_message(_reply(ok=True, sha256=digest.hexdigest()))

    def _resolve(self, path: Any, *, create: bool) -> tuple[str, str]:
        """Check a client's path; return (directory, file name) inside the root.

        With ``create``, missing directories on the way are made (inside the root).
        """
        if not isinstance(path, str) or not path or "\0" in path:
            raise FileServiceError("path must be a non-empty string")
        if path.startswith("/") or os.path.isabs(path):
            raise FileServiceError(f"absolute paths are not allowed: {path!r:.100}")
        parts = path.split("/", self.max_path_depth)
        if len(parts) > self.max_path_depth:
            raise FileServiceError(f"path is deeper than {self.max_path_depth} parts")
        if any(part in ("", ".", "..") for part in parts):
            raise FileServiceError(f"path parts may not be empty, '.' or '..': {path!r}")
        if any(part.startswith(".") for part in parts):
            raise FileServiceError(f"dot-files and dot-directories are not served: {path!r}")
        real = os.path.realpath(os.path.join(self.root_path, *parts))
        if os.path.commonpath([self.root_path, real]) != self.root_path or real == self.root_path:
            raise FileServiceError(f"path leaves the served directory: {path!r}")
        directory = os.path.join(self.root_path, *parts[:-1])
        if create and not _DIR_FD:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise FileServiceError(f"cannot create directory: {exc.strerror}") from None
        self._create_missing = create
        return directory, parts[-1]

    def _open_directory(self, directory: str) -> Optional[int]:
        """Open ``directory`` one part at a time from the root, refusing symlinks.

        Missing parts are created when the last :meth:`_resolve` asked for it.
        """
        if not _DIR_FD:
            return None
        flags = os.O_RDONLY | _DIRECTORY | NOFOLLOW | CLOEXEC
        fd = os.open(self.root_path, flags)
        try:
            for part in os.path.relpath(directory, self.root_path).split(os.sep):
                if part == ".":
                    continue
                if self._create_missing:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made earlier: open it below (refusing a symlink)
                next_fd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except OSError:
            os.close(fd)
            raise FileServiceError(
                "path goes through a symbolic link, a file or a missing directory"
            ) from None
        return fd

    def finish(self) -> None:
        if getattr(self, "upload", None) is not None:  # dropped mid-upload
            assert self.upload is not None
            if self.upload.temp_name:  # never committed: its bytes were not written
                quota_of(self.server).release(self.upload.size)
            self.upload.close()
            self.upload = None
        super().finish()


class FileServer(ThreadingTCPServer):
    """A threaded TCP file server for the directory ``root``; read-only unless ``writable``."""

    def __init__(
        self,
        server_address: Any,
        root: Union[str, os.PathLike[str]],
        RequestHandlerClass: Any = FileHandler,
        bind_and_activate: bool = True,
        *,
        writable: bool = False,
    ) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"root must be an existing directory, not {root!r}")
        self.file_root = os.fspath(root)
        #: Accept uploads even if the handler class does not say so itself.
        self.file_writable = writable
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)


# -- client helpers ------------------------------------------------------------------


def _answer(sock: socket.socket) -> dict[str, Any]:
    reply = json.loads(recv_message(sock))
    if not reply.get("ok"):
        raise FileServiceError(reply.get("error", "refused"))
    return dict(reply)


def upload(sock: socket.socket, path: str, data: Union[bytes, BinaryIO]) -> str:
    """Store ``data`` (bytes or a binary file) as ``path``; return its SHA-256 (hex).

    Raises :class:`FileServiceError` if the server refuses or reports a different
    checksum than the data sent.
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    start = source.tell()
    size = source.seek(0, os.SEEK_END) - start
    source.seek(start)
    send_message(sock, _reply(op="put", path=path, size=size))
    _answer(sock)
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        chunk = source.read(min(CHUNK_SIZE, size - sent))
        if not chunk:
            raise FileServiceError(f"the local file shrank while uploading {path!r}")
        digest.update(chunk)
        send_message(sock, chunk)
        sent += len(chunk)
    result = _answer(sock)
    if result.get("sha256") != digest.hexdigest():
        raise FileServiceError(f"checksum mismatch after uploading {path!r}")
    return digest.hexdigest()


def download(sock: socket.socket, path: str) -> bytes:
    """Fetch ``path``; raises :class:`FileServiceError` if refused or corrupted."""
    send_message(sock, _reply(op="get", path=path))
    size = _answer(sock)["size"]
    chunks: list[bytes] = []
    received = 0
    digest = hashlib.sha256()
    while received < size:
        chunk = recv_message(sock)
        digest.update(chunk)
        chunks.append(chunk)
        received += len(chunk)
    if _answer(sock).get("sha256") != digest.hexdigest():
        raise FileServiceError(f"checksum mismatch downloading {path!r}")
    return b"".join(chunks)
