"""Where the file service writes: atomic uploads, and each server's write quota.

Theory of operation
-------------------
An :class:`Upload` is one file being received. It is written to a hidden
temporary file (``.NAME.RANDOM.part``, created with ``O_EXCL`` and
``O_NOFOLLOW``) in the target's directory, reached through that directory's
descriptor where the platform allows. ``commit()`` makes it durable
(``fsync``) and visible under its name in one step (``os.replace``, then an
``fsync`` of the directory, so the rename survives a crash too); ``close()``
without a commit removes the temporary file. The target is thus always either
the old file or the complete new one.

A :class:`WriteQuota` counts the bytes a server has agreed to write
(``FileHandler.max_bytes_written``). An upload *reserves* its announced size
before its go-ahead, so concurrent uploads cannot overshoot together; an upload
that never commits gives its reservation back. One quota per server
(:func:`quota_of`, in a weak mapping: the server is not modified).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import weakref
from typing import Any, Optional

from pyserve import ProtocolError

__all__ = ["CLOEXEC", "NOFOLLOW", "Upload", "WriteQuota", "quota_of"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Upload:
    """An upload in progress: the open temporary file and what remains to come."""

    def __init__(self, dir_fd: Optional[int], directory: str, name: str, size: int) -> None:
        self.dir_fd = dir_fd
        self.directory = directory
        self.name = name
        self.temp_name = f".{name}.{secrets.token_hex(8)}.part"
        self.remaining = size
        self.size = size
        self.digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
        self.fd = os.open(self._at(self.temp_name), flags, 0o644, **self._dir())

    def _at(self, name: str) -> str:
        return name if self.dir_fd is not None else os.path.join(self.directory, name)

    def _dir(self) -> dict[str, int]:
        return {} if self.dir_fd is None else {"dir_fd": self.dir_fd}

    def write(self, data: bytes) -> None:
        if len(data) > self.remaining:
            raise ProtocolError(f"upload sent more than the {self.size} bytes announced")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.digest.update(data)
        self.remaining -= len(data)

    def commit(self) -> str:
        """Make the file durable and visible under its name; return its SHA-256."""
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.dir_fd is not None:
            os.replace(self.temp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            os.fsync(self.dir_fd)  # the rename itself must survive a crash
        else:
            os.replace(self._at(self.temp_name), self._at(self.name))
        self.temp_name = ""
        return self.digest.hexdigest()

    def close(self) -> None:
        """Release everything; remove the temporary file unless committed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp_name:
            try:
                os.unlink(self._at(self.temp_name), **self._dir())
            except OSError:
                pass  # already gone: nothing to clean
            self.temp_name = ""
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


class WriteQuota:
    """Bytes a server has accepted for writing, against its ``max_bytes_written``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reserved = 0

    def reserve(self, size: int, limit: int) -> bool:
        with self._lock:
            if self.reserved + size > limit:
                return False
            self.reserved += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.reserved -= size


_quotas_lock = threading.Lock()
_quotas: weakref.WeakKeyDictionary[Any, WriteQuota] = weakref.WeakKeyDictionary()


def quota_of(server: Any) -> WriteQuota:
    """The server's write quota, kept beside it (the server is not modified)."""
    with _quotas_lock:
        quota = _quotas.get(server)
        if quota is None:
            quota = _quotas[server] = WriteQuota()
        return quota
