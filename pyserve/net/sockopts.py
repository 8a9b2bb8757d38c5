"""Socket options, declared on the server class instead of set by hand.

Theory of operation
-------------------
A server names the options it wants as data, in two class attributes of
:class:`~pyserve.sockets.SocketServer` and :class:`~pyserve.sockets.TCPServer`:

* ``listen_socket_options``: set on the server's own socket in ``server_bind()``,
  *before* ``bind()``, because some options only count then (``SO_BINDTODEVICE``
  decides which interface the bind belongs to, ``SO_RCVBUF`` fixes the TCP window
  scale a listener hands to its connections);
* ``accepted_socket_options``: set on every connection ``accept()`` returns, in
  ``get_request()``. When the list is empty (the default) the accept path does one
  truth test and nothing more: it is the hottest path in a busy server.

Each option is a plain ``(level, option, value)`` triple, exactly the arguments of
``socket.setsockopt``, so any option the platform has can be named. The helpers
below return tuples of such triples for the options people reach for most, with
their values checked, so they concatenate::

    from pyserve import ThreadingTCPServer, sockopts

    class Server(ThreadingTCPServer):
        listen_socket_options = sockopts.receive_buffer(1 << 20)
        accepted_socket_options = (
            sockopts.tcp_keepalive(idle=60, interval=10, count=5)
            + sockopts.tcp_nodelay()
        )

Bad values are a programmer's mistake and fail loudly: the helpers raise
``ValueError`` naming the value, and a server checks its ``accepted_socket_options``
once when it starts listening (on a scratch socket of the same kind), so an option
the kernel refuses stops the constructor instead of every connection.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union

__all__ = [
    "SocketOption",
    "apply_socket_options",
    "bind_to_device",
    "check_socket_options",
    "drop_new_handshakes",
    "receive_buffer",
    "send_buffer",
    "tcp_keepalive",
    "tcp_nodelay",
]

#: One option: the arguments of ``socket.setsockopt(level, option, value)``.
if TYPE_CHECKING:
    SocketOption = tuple[int, int, Union[int, bytes]]
else:  # for type checkers only: at run time its spelling (typing is not imported)
    SocketOption = "tuple[int, int, Union[int, bytes]]"

# Linux's limits for the keepalive knobs (tcp(7)): larger values are EINVAL.
_KEEPALIVE_LIMITS = {"idle": 32767, "interval": 32767, "count": 127}
# An interface name must fit IFNAMSIZ (16) with its terminating NUL.
_IFNAMSIZ = 16


def _positive_int(name: str, value: object, limit: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ValueError(f"{name} must be an integer from 1 to {limit}, not {value!r}")
    return value


def tcp_nodelay() -> tuple[SocketOption, ...]:
    """Send small writes at once (disable Nagle's algorithm).

    For request/response protocols whose replies are written in several pieces::

        class Server(TCPServer):
            accepted_socket_options = sockopts.tcp_nodelay()
    """
    return ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def tcp_keepalive(
    idle: Union[int, None] = None,
    interval: Union[int, None] = None,
    count: Union[int, None] = None,
) -> tuple[SocketOption, ...]:
    """Probe idle connections so dead peers are noticed (``SO_KEEPALIVE``).

    ``idle``: seconds of silence before the first probe; ``interval``: seconds
    between probes; ``count``: unanswered probes before the connection is dropped.
    ``None`` keeps the system's default (Linux: 7200 s, 75 s, 9). A knob the
    platform lacks raises ``ValueError`` rather than being silently ignored::

        class Server(ThreadingTCPServer):
            # A peer that vanished is noticed after 60 + 5 * 10 seconds.
            accepted_socket_options = sockopts.tcp_keepalive(idle=60, interval=10, count=5)
    """
    options: list[SocketOption] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # macOS spells the idle time TCP_KEEPALIVE; Linux and the BSDs TCP_KEEPIDLE.
    idle_option = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
    knobs = (
        ("idle", idle, idle_option),
        ("interval", interval, getattr(socket, "TCP_KEEPINTVL", None)),
        ("count", count, getattr(socket, "TCP_KEEPCNT", None)),
    )
    for name, value, option in knobs:
        if value is None:
            continue
        _positive_int(f"tcp_keepalive {name}", value, _KEEPALIVE_LIMITS[name])
        if option is None:
            raise ValueError(f"tcp_keepalive {name}={value!r}: not supported on {sys.platform}")
        options.append((socket.IPPROTO_TCP, option, value))
    return tuple(options)


def receive_buffer(size: int) -> tuple[SocketOption, ...]:
    """Ask for a kernel receive buffer of ``size`` bytes (``SO_RCVBUF``).

    Linux doubles the value for its bookkeeping and caps it at
    ``net.core.rmem_max``. On a listener it sets the buffer, and the TCP window
    scale, of every connection accepted from it::

        class Server(UDPServer):
            listen_socket_options = sockopts.receive_buffer(4 << 20)  # bursts
    """
    return ((socket.SOL_SOCKET, socket.SO_RCVBUF, _positive_int("receive_buffer size", size)),)


def send_buffer(size: int) -> tuple[SocketOption, ...]:
    """Ask for a kernel send buffer of ``size`` bytes (``SO_SNDBUF``).

    Bigger buffers let a handler hand large replies to the kernel in one go::

        class Server(TCPServer):
            accepted_socket_options = sockopts.send_buffer(256 * 1024)
    """
    return ((socket.SOL_SOCKET, socket.SO_SNDBUF, _positive_int("send_buffer size", size)),)


def bind_to_device(interface: str) -> tuple[SocketOption, ...]:
    """Serve only traffic through one network interface (Linux ``SO_BINDTODEVICE``).

    Needs ``CAP_NET_RAW`` (root) on kernels before 5.7. Use it in
    ``listen_socket_options`` so it is set before ``bind()``::

        class Server(TCPServer):
            listen_socket_options = sockopts.bind_to_device("lo")

        server = Server(("0.0.0.0", 8000), Handler)  # reachable through lo only
    """
    # PyPy 3.9's socket module lacks the constant; Linux's value is fixed ABI.
    option = getattr(socket, "SO_BINDTODEVICE", 25 if sys.platform.startswith("linux") else None)
    if option is None:
        raise ValueError(f"bind_to_device({interface!r}): not supported on {sys.platform}")
    if not isinstance(interface, str) or not interface or "\0" in interface:
        raise ValueError(f"bind_to_device needs an interface name, not {interface!r}")
    name = interface.encode()
    if len(name) >= _IFNAMSIZ:
        raise ValueError(f"bind_to_device: interface name {interface!r} is too long")
    return ((socket.SOL_SOCKET, option, name),)


def check_socket_options(options: object, attribute: str) -> tuple[SocketOption, ...]:
    """Check the shape of an options list; raise ``ValueError`` naming a bad entry."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
        raise ValueError(
            f"{attribute} must be a sequence of (level, option, value), not {options!r}"
        )
    checked: list[SocketOption] = []
    for entry in options:
        if (
            not isinstance(entry, tuple)
            or len(entry) != 3
            or not all(isinstance(part, int) for part in entry[:2])
            or not isinstance(entry[2], (int, bytes))
        ):
            raise ValueError(f"{attribute}: {entry!r} is not a (level, option, value) triple")
        checked.append(entry)
    return tuple(checked)


def apply_socket_options(
    sock: socket.socket, options: Iterable[SocketOption], attribute: str = "socket options"
) -> None:
    """Set each option on ``sock``; a refused one raises ``OSError`` naming it."""
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{attribute}: the kernel refused (level={level}, option={option}, "
                f"value={value!r}): {exc.strerror}",
            ) from exc


def probe_socket_options(
    family: int, socket_type: int, options: Iterable[SocketOption], attribute: str
) -> None:
    """Try ``options`` on a scratch socket of the given kind, so a bad one fails now."""
    scratch = socket.socket(family, socket_type)
    try:
        apply_socket_options(scratch, options, attribute)
    finally:
        scratch.close()


# SO_ATTACH_FILTER (Linux): a classic BPF program run on each segment that reaches
# the socket; for a TCP listener, on every incoming SYN and handshake ACK.
_SO_ATTACH_FILTER = 26
# A = the TCP flags byte (offset 13 of the TCP header, where a TCP socket's filter
# starts); if A & SYN: return 0 (drop) else return all (keep).
_DROP_SYN = ((0x30, 0, 0, 13), (0x45, 0, 1, 0x02), (0x06, 0, 0, 0), (0x06, 0, 0, 0xFFFFFFFF))


def drop_new_handshakes(listener: socket.socket) -> bool:
    """Make a TCP listener ignore new connection attempts (Linux); True if it does.

    The listener keeps its queue: handshakes already under way complete (their
    ACKs pass) and connections already queued can still be accepted. New SYNs
    are dropped, not refused, so a client (or a load balancer) retries them a
    second later, when the listener is closed and refuses them: at no moment does
    the kernel complete a handshake that the closing server would then reset.
    Drain uses it before serving the queue and closing. The filter is a property
    of the socket, so never use it on a listener other processes still serve.
    """
    if not sys.platform.startswith("linux") or listener.type != socket.SOCK_STREAM:
        return False
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    import ctypes  # noqa: PLC0415 - only a drain pays for it
    import struct  # noqa: PLC0415 - the same

    program = ctypes.create_string_buffer(
        b"".join(struct.pack("HBBI", *instruction) for instruction in _DROP_SYN)
    )
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False  # no BPF here: drain falls back to closing
    return True  # the kernel copied the program: the buffer may go
