"""Serving sockets someone else opened: inherited descriptors and systemd activation.

Theory of operation
-------------------
A server normally creates, binds and listens on its own socket. Sometimes that has
already been done by someone else: a supervisor that binds a privileged port and
drops privileges, a parent that passes a listener to a child
(``subprocess.Popen(pass_fds=...)``), or systemd's *socket activation*, where
systemd listens and starts the service on the first connection. Then the server
must *adopt* the socket: read its family, type and address from the socket
itself, not bind it again, and listen only if a stream socket is not listening
yet. :class:`SocketAdoption` gives every socket server the classmethods
``from_socket()``, ``from_fd()`` and ``from_systemd()`` that do that; the socket
then passes through the server's usual ``server_bind()``/``server_activate()``
hooks, which know not to bind it again (see :mod:`pyserve.sockets`).
:func:`check_adoptable` says whether a socket can be adopted by a server class,
and why not.

systemd passes its sockets as descriptors 3, 4, ... and describes them in three
environment variables (sd_listen_fds(3)):

* ``LISTEN_PID``: the process they are meant for. A child started by the service
  inherits the variables but must not take the sockets, so they count only when
  this equals ``os.getpid()``;
* ``LISTEN_FDS``: how many descriptors there are;
* ``LISTEN_FDNAMES``: their names, colon-separated (``FileDescriptorName=`` in the
  unit; ``--fdname`` for ``systemd-socket-activate``).

:func:`listen_fds` reads them, marks the descriptors close-on-exec and (like
sd_listen_fds) unsets the variables, so children do not see them.
:func:`systemd_socket` picks one by name. Malformed variables are a deployment
mistake and raise :class:`ActivationError` naming the value.

Cookbook: a service that systemd starts on the first connection::

    # /etc/systemd/system/echo.socket      # /etc/systemd/system/echo.service
    # [Socket]                             # [Service]
    # ListenStream=7000                    # ExecStart=/usr/bin/python3 -m echo
    # FileDescriptorName=echo
    server = ThreadingTCPServer.from_systemd(EchoHandler, name="echo")
    server.serve_forever()

Try it without a unit file: ``systemd-socket-activate -l 7000 python3 -m echo``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from pyserve.errors import PyserveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, NamedTuple, Optional, TypeVar
else:
    from pyserve._typing_free import NamedTuple, TypeVar

_ServerT = TypeVar("_ServerT", bound="SocketAdoption")

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivationError",
    "ListenFd",
    "SocketAdoption",
    "check_adoptable",
    "listen_fds",
    "systemd_socket",
]

#: The first descriptor systemd passes (0, 1, 2 stay stdin, stdout, stderr).
SD_LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_TYPE_NAMES: dict[int, str] = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}


class ActivationError(PyserveError, LookupError):
    """No usable socket was passed: not activated, a malformed variable, no such name."""


class ListenFd(NamedTuple):
    """One descriptor passed by systemd, with its name (``"unknown"`` if unnamed)."""

    fd: int
    name: str


def listen_fds(
    *, unset_environment: bool = True, environ: Optional[MutableMapping[str, str]] = None
) -> list[ListenFd]:
    """The descriptors systemd passed to this process, in order; ``[]`` if none.

    ``environ`` defaults to ``os.environ``. The variables are removed from it when
    ``unset_environment`` is true (also when they are malformed), as
    sd_listen_fds does, so a second call returns ``[]``. Use this when a program
    serves several of the sockets::

        passed = {entry.name: entry.fd for entry in listen_fds()}
        web = ThreadingTCPServer.from_fd(passed["web"], WebHandler)
        admin = TCPServer.from_fd(passed["admin"], AdminHandler)
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    try:
        return _parse(env)
    finally:
        if unset_environment:
            for name in _VARIABLES:
                env.pop(name, None)


def _parse(env: MutableMapping[str, str]) -> list[ListenFd]:
    pid_text, count_text = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if pid_text is None or count_text is None:
        return []
    pid = _integer("LISTEN_PID", pid_text)
    if pid != os.getpid():
        return []  # meant for the process that started us, not for us
    count = _integer("LISTEN_FDS", count_text)
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        names = ["unknown"] * count  # systemd's name for an unnamed descriptor
    else:
        names = names_text.split(":") if count else []
        if len(names) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES={names_text!r} names {len(names)} descriptors "
                f"but LISTEN_FDS={count_text!r}"
            )
    passed = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        try:
            os.set_inheritable(fd, False)  # close-on-exec, as sd_listen_fds does
        except OSError as exc:
            raise ActivationError(
                f"LISTEN_FDS={count_text!r} but descriptor {fd} is unusable: {exc}"
            ) from exc
        passed.append(ListenFd(fd, name))
    return passed


def _integer(variable: str, text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise ActivationError(f"{variable}={text!r} is not a non-negative integer")
    return value


def systemd_socket(
    name: Optional[str] = None, *, environ: Optional[MutableMapping[str, str]] = None
) -> socket.socket:
    """The one socket systemd passed (named ``name``, if given), as a socket object.

    Raises :class:`ActivationError` when the process was not socket-activated,
    or when no socket, or more than one, matches (the message lists the names
    that were passed). The variables are unset and every other passed descriptor
    is left open, untouched. ``SocketServer.from_systemd()`` uses this::

        sock = systemd_socket("http")
        server = http.server.ThreadingHTTPServer.from_socket(sock, Handler)
    """
    passed = listen_fds(environ=environ)
    if not passed:
        raise ActivationError(
            "not socket-activated: LISTEN_PID/LISTEN_FDS are unset or meant for another process"
        )
    chosen = [entry for entry in passed if name is None or entry.name == name]
    if len(chosen) != 1:
        wanted = "socket" if name is None else f"socket named {name!r}"
        raise ActivationError(
            f"wanted exactly one {wanted}, found {len(chosen)} "
            f"among the passed sockets {[entry.name for entry in passed]}"
        )
    return socket.socket(fileno=chosen[0].fd)


def check_adoptable(
    sock: socket.socket, socket_type: int, family: Optional[int], server_class: str
) -> Any:
    """Return ``sock``'s bound address, or raise ``ValueError`` saying why a server of
    ``server_class`` (serving ``socket_type`` sockets, of ``family`` if it insists on
    one) cannot adopt it: a different type or family, not bound, or connected.
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{server_class} can adopt a socket.socket, not {sock!r}")
    if sock.type != socket_type:
        raise ValueError(
            f"{server_class} serves {_TYPE_NAMES.get(socket_type, socket_type)} sockets, "
            f"but {sock!r} is a {_TYPE_NAMES.get(sock.type, sock.type)} socket"
        )
    if family is not None and sock.family != family:
        raise ValueError(f"{server_class} serves family {family!r}, but {sock!r} is not")
    address = sock.getsockname()
    unbound = (
        address[1] == 0
        if sock.family in (socket.AF_INET, socket.AF_INET6)
        else address in ("", b"", None)
    )
    if unbound:
        raise ValueError(f"{sock!r} is not bound: bind it, or let {server_class} do it")
    try:
        sock.getpeername()
    except OSError:
        return address  # not connected: a listener (or a datagram socket)
    raise ValueError(f"{sock!r} is a connection, not a listening socket")


class SocketAdoption:
    """The constructors for a socket that is already bound; part of every socket server.

    Each returns a server of the class it is called on (with any concurrency
    mix-in), owning the socket from then on: ``server_close()`` closes it.
    """

    # Provided by pyserve.sockets.SocketServer, the one class this is mixed into.
    address_family: int
    socket_type: int
    _adopting: Optional[socket.socket]

    if TYPE_CHECKING:

        @classmethod
        def _family_is_chosen(cls) -> bool: ...

    @classmethod
    def from_socket(
        cls: type[_ServerT],
        sock: socket.socket,
        RequestHandlerClass: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> _ServerT:
        """Build a server around ``sock``, already bound (listening or not).

        Family, type and address are read from the socket; it is not bound again,
        and a stream socket that is not listening yet is made to listen. Extra
        arguments go to the class's constructor. ``ValueError`` says why a socket
        cannot be adopted (wrong type or family, unbound, connected)::

            listener = socket.create_server(("127.0.0.1", 8000))
            server = ThreadingTCPServer.from_socket(listener, Handler)
        """
        family = cls.address_family if cls._family_is_chosen() else None
        address = check_adoptable(sock, cls.socket_type, family, cls.__name__)
        # __init__ must find the socket before it would create one: set it on the
        # bare instance, then run the class's own constructor (all its mix-ins).
        server = cls.__new__(cls)
        server._adopting = sock  # taken over (and reset) by SocketServer.__init__
        init: Callable[..., None] = server.__init__  # type: ignore[misc]
        init(address, RequestHandlerClass, *args, **kwargs)
        return server

    @classmethod
    def from_fd(
        cls: type[_ServerT],
        fd: int,
        RequestHandlerClass: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> _ServerT:
        """Build a server around a bound socket's descriptor (see ``from_socket()``).

        The server owns ``fd`` once this returns; if the socket is refused
        (``ValueError``), ``fd`` stays open and the caller's. A parent passes its
        listener to a child with ``pass_fds``::

            # parent
            subprocess.Popen([sys.executable, "child.py", str(listener.fileno())],
                             pass_fds=[listener.fileno()])
            # child.py
            server = TCPServer.from_fd(int(sys.argv[1]), Handler)
        """
        sock = socket.socket(fileno=fd)
        try:
            return cls.from_socket(sock, RequestHandlerClass, *args, **kwargs)
        except BaseException:
            sock.detach()  # the descriptor stays the caller's
            raise

    @classmethod
    def from_systemd(
        cls: type[_ServerT],
        RequestHandlerClass: Callable[..., Any],
        name: Optional[str] = None,
        *args: Any,
        **kwargs: Any,
    ) -> _ServerT:
        """Build a server around the socket systemd passed (the one named ``name``).

        Raises :class:`ActivationError` when there is none, or several match (see
        :func:`systemd_socket`)::

            server = ThreadingTCPServer.from_systemd(Handler, name="http")
        """
        sock = systemd_socket(name)
        try:
            return cls.from_socket(sock, RequestHandlerClass, *args, **kwargs)
        except BaseException:
            sock.close()
            raise
