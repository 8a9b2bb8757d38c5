"""Unix-domain socket care: the socket file's life, its permissions, and replies.

Theory of operation
-------------------
A Unix server's address is a path, and binding creates a file there. The two
mix-ins here, combined with the transports in :mod:`pyserve.sockets` as
``UnixStreamServer`` and ``UnixDatagramServer``, take care of what that means:

* :class:`UnixSocketFile` owns the file. Before ``bind()`` it replaces a *stale*
  socket file (one nobody listens on: a server that died without cleaning up) but
  never a live socket or a file of another kind. After ``bind()`` and before
  ``listen()`` (so nobody can connect in between) it sets the file's mode and
  owner from ``socket_mode``, ``socket_owner`` and ``socket_group``. On close it
  removes the file, but only from the process that created it and only if the
  path still names that very file. An *abstract* address (Linux: a str or bytes
  starting with a NUL byte, such as ``"\\0myapp"``) has no file at all: nothing
  to replace, chmod or remove. An *adopted* socket's file (``from_socket()``)
  belongs to whoever bound it and is left alone.
* :class:`UnixDatagramReplies` handles the one way a datagram reply cannot be
  sent: the client never bound its socket, so it has no address (``recvfrom()``
  reports ``None``), or it removed its socket before the reply arrived. That is
  the client's doing, so it costs one rate-limited log line and a count in
  ``unreplyable_datagrams``, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import threading

from pyserve.logs import WARNING, DeferredLogger, escape
from pyserve.net.addresses import is_filesystem_path

try:  # POSIX only: user and group names, file locks
    import fcntl
    import grp
    import pwd
except ImportError:  # pragma: no cover - Windows has none of them, nor socket files
    fcntl = grp = pwd = None  # type: ignore[assignment]

from pyserve.sockets import TCPServer, UDPServer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Union

    from pyserve.sockets import SocketServer

    _FileBase = SocketServer
    _ReplyBase = UDPServer
else:
    _FileBase = _ReplyBase = object

__all__ = [
    "SocketFileLock",
    "UnixDatagramReplies",
    "UnixDatagramServer",
    "UnixSocketFile",
    "UnixStreamServer",
    "clear_stale_socket",
    "set_socket_file_access",
]

logger = DeferredLogger("pyserve")

#: sun_path's size on Linux (108) and the BSDs (104), with room for the NUL.
_MAX_SOCKET_PATH = 104 if sys.platform != "linux" else 108


def _id_of(kind: str, value: Union[int, str], lookup: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"socket_{kind} must be a name or a numeric id, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"socket_{kind} must not be negative, not {value!r}")
        return value
    try:
        return int(lookup(value)[2])  # pw_uid / gr_gid
    except (KeyError, TypeError) as exc:
        raise ValueError(f"socket_{kind} {value!r}: no such {kind} on this system") from exc


def set_socket_file_access(
    path: Union[str, bytes],
    mode: Optional[int],
    owner: Union[int, str, None],
    group: Union[int, str, None],
) -> None:
    """Set a socket file's mode and owner (``None``: leave it as created).

    ``mode`` is an integer such as ``0o660`` (connecting needs write permission);
    ``owner`` and ``group`` are names or numeric ids. Changing the owner needs
    root; for the group, any group the process belongs to will do. Bad values
    raise ``ValueError`` naming them.
    """
    if mode is not None and (
        isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
    ):
        raise ValueError(f"socket_mode must be a file mode such as 0o660, not {mode!r}")
    uid = -1 if owner is None else _id_of("owner", owner, pwd and pwd.getpwnam)
    gid = -1 if group is None else _id_of("group", group, grp and grp.getgrnam)
    if mode is not None:
        os.chmod(path, mode)
    if (uid, gid) != (-1, -1):
        os.chown(path, uid, gid)


def clear_stale_socket(path: Union[str, bytes], socket_type: int) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse a live one.

    A regular file (or anything that is not a socket) is left alone, so ``bind()``
    fails with EADDRINUSE rather than destroying someone's data.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        return
    probe = socket.socket(socket.AF_UNIX, socket_type)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: a server died without cleaning up
    except OSError:
        return  # cannot tell (permissions, full backlog): let bind() report it
    else:
        raise OSError(errno.EADDRINUSE, f"a live server is listening on {path!r}")
    finally:
        probe.close()


class UnixSocketFile(_FileBase):
    """Owns a Unix server's socket file (see the module docstring).

    Class attributes that may be overridden: ``socket_mode``, ``socket_owner``,
    ``socket_group`` (each ``None``: as created). Setting one for an abstract
    address raises ``ValueError``: there is no file to apply it to::

        class Control(ThreadingUnixStreamServer):
            socket_mode = 0o660          # only owner and group may connect
            socket_group = "adm"

        server = Control("/run/myapp/control.sock", Handler)
    """

    #: The socket file's mode, e.g. ``0o660`` (None: as the umask leaves it).
    socket_mode: Optional[int] = None
    #: The socket file's owner, a user name or uid (None: this process; needs root).
    socket_owner: Union[int, str, None] = None
    #: The socket file's group, a group name or gid (None: this process's).
    socket_group: Union[int, str, None] = None

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        # (st_dev, st_ino, pid) of the file we created; None if we created none.
        self._socket_file: Optional[tuple[int, int, int]] = None
        self._socket_lock: Optional[SocketFileLock] = None

    def _bind(self) -> None:
        path = self.server_address
        access = (self.socket_mode, self.socket_owner, self.socket_group)
        if not is_filesystem_path(path):
            if access != (None, None, None):
                raise ValueError(f"socket_mode/owner/group need a socket file, not {path!r}")
            super()._bind()
            return
        self._socket_lock = SocketFileLock.acquire(path)
        clear_stale_socket(path, self.socket_type)
        if access == (None, None, None) or not _bind_privately(self.socket, path, access):
            super()._bind()
            set_socket_file_access(path, *access)
        self.server_address = path  # getsockname() may name the private directory
        info = os.stat(path)
        self._socket_file = (info.st_dev, info.st_ino, os.getpid())

    def server_close(self) -> None:
        super().server_close()
        owned, self._socket_file = self._socket_file, None
        lock, self._socket_lock = self._socket_lock, None
        # Only the process that bound it removes it (not a forked child), and only
        # if the path still names our socket (not one a successor bound since).
        if owned is not None and owned[2] == os.getpid():
            try:
                info = os.stat(self.server_address)
                if (info.st_dev, info.st_ino) == owned[:2]:
                    os.unlink(self.server_address)
            except OSError:
                pass  # already gone
        if lock is not None:
            lock.release()  # after the unlink: whoever locks next finds the path free


def _bind_privately(
    sock: socket.socket, path: Union[str, bytes], access: tuple[Any, Any, Any]
) -> bool:
    """Bind in a private directory, set the access, then link the file into place.

    So the socket file never sits at ``path`` with the umask's mode and owner (a
    datagram socket receives from the moment it is bound). ``link()`` never
    replaces an existing file, unlike ``rename()``: a live socket that appeared
    at ``path`` meanwhile fails the bind with EADDRINUSE instead. False (nothing
    done) when the private name would be too long for a socket address.
    """
    directory = os.path.dirname(os.fsdecode(path)) or "."
    import tempfile  # noqa: PLC0415 - costs every importer ~5 ms; only this path needs it

    private = tempfile.mkdtemp(prefix=".pyserve-", dir=directory)  # mode 0700: ours alone
    temporary = os.path.join(private, "s")
    try:
        if len(os.fsencode(temporary)) >= _MAX_SOCKET_PATH:
            return False
        sock.bind(temporary)
        set_socket_file_access(temporary, *access)
        os.link(temporary, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.rmdir(private)


class SocketFileLock:
    """An ``flock()`` on ``path + ".lock"``, held for the server's whole life.

    A socket that is bound but not listening yet refuses connections exactly as
    a stale one does, so probing alone would let a second server delete a live
    server's file (pyserve itself sets the mode between bind and listen). The
    lock says "a server holds this path" whatever state the socket is in; the
    kernel drops it when the process dies, so a crash never leaves it held.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._pid = os.getpid()

    @classmethod
    def acquire(cls, socket_path: Union[str, bytes]) -> Optional[SocketFileLock]:
        """Take the lock, or raise EADDRINUSE if a live server holds it."""
        if sys.platform == "win32":  # pragma: no cover - no flock(): the probe alone
            return None
        path = os.fsdecode(socket_path) + ".lock"
        flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
        for _attempt in range(10):  # each retry means a holder was just releasing
            fd = os.open(path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A releasing holder unlinks the file before unlocking it: if the
                # path no longer names what we locked, we locked a ghost. Again.
                held = os.fstat(fd)
                now = os.stat(path)
            except BlockingIOError:
                os.close(fd)
                raise OSError(
                    errno.EADDRINUSE, f"a live server holds {socket_path!r} (lock {path!r})"
                ) from None
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return cls(path, fd)
            os.close(fd)
        raise OSError(errno.EADDRINUSE, f"could not lock {path!r}: it keeps changing")

    def release(self) -> None:
        """Remove the lock file (only in the process that took it), then unlock."""
        if self._fd < 0:
            return
        if self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)  # a forked child's close leaves the parent's lock held
        self._fd = -1


class UnixDatagramReplies(_ReplyBase):
    """Turns a failed reply to an address-less or vanished client into one log line.

    Counted in ``unreplyable_datagrams``; logged at most once per
    ``truncation_log_interval`` seconds (by the server's rate-limited log of peer
    faults, the one that reports over-long datagrams), so a flood of such clients
    cannot flood the log. Any other error goes to the usual ``handle_error()``.
    """

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self.unreplyable_datagrams = 0
        self._unreplyable_lock = threading.Lock()  # handle_error runs in any thread

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a reply that could not be sent in one line; anything else as usual."""
        if not _is_unreplyable(sys.exc_info()[1], client_address):
            super().handle_error(request, client_address)
            return
        with self._unreplyable_lock:
            self.unreplyable_datagrams += 1
            so_far = self.unreplyable_datagrams
        self._peer_faults.report(
            WARNING,
            "unreplyable datagram",
            "Could not reply to the Unix datagram client at %s: %s (%d so far; "
            "a client must bind its socket to receive replies)",
            escape(client_address),
            sys.exc_info()[1],  # the kernel's words, not the peer's
            so_far,
        )


def _is_unreplyable(exc: Optional[BaseException], client_address: Any) -> bool:
    if client_address in (None, "", b""):  # sendto(reply, None) raises TypeError
        return isinstance(exc, (TypeError, OSError))
    # The client closed and removed its socket before the reply was sent.
    return isinstance(exc, (FileNotFoundError, ConnectionRefusedError))


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(UnixSocketFile, TCPServer):
        """A stream server on a Unix-domain socket path.

        Class attributes beyond :class:`~pyserve.sockets.TCPServer`'s: ``socket_mode``,
        ``socket_owner``, ``socket_group``. A str or bytes address starting with a
        NUL byte is in Linux's abstract namespace: no file, gone with the socket::

            class Control(ThreadingUnixStreamServer):
                socket_mode = 0o660          # only owner and group may connect
                socket_group = "adm"

            server = Control("/run/myapp/control.sock", Handler)
            private = UnixStreamServer("\\0myapp-control", Handler)  # abstract
        """

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UnixDatagramReplies, UnixSocketFile, UDPServer):
        """A datagram server on a Unix-domain socket path.

        Class attributes beyond :class:`~pyserve.sockets.UDPServer`'s: ``socket_mode``,
        ``socket_owner``, ``socket_group``. Replies go to the client's own socket
        path, so a client that wants one binds its socket first; a reply to one
        that did not fails with one log line (see :class:`UnixDatagramReplies`)::

            client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            client.bind(os.path.join(tmpdir, "client.sock"))  # where replies go
            client.sendto(b"ping", server.server_address)
        """

        address_family = socket.AF_UNIX
