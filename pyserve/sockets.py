"""Socket lifecycle: the socket base and the TCP and UDP servers built on it.

Theory of operation
-------------------
:class:`SocketServer` owns one socket for its whole life: create it in
``__init__``, ``server_bind()`` it, ``server_activate()`` it, and close it in
``server_close()`` (also when bind or listen fails, so a failed constructor never
leaks a descriptor). The two transports then differ only in what a *request* is:

* :class:`TCPServer` (streams): ``get_request()`` is ``accept()``; a request is the
  connected socket; ending it sends FIN (``SHUT_WR``) so the peer sees every byte
  before the close.
* :class:`UDPServer` (datagrams): ``get_request()`` is one ``recvfrom()``; a request
  is ``(data, server_socket)``; there is nothing to close.

In the stdlib, ``UDPServer`` subclasses ``TCPServer`` and inherits ``listen``/
``accept`` plumbing it must then undo. Here both sit on the shared base, so each
class says only what is true of it. (``isinstance(udp_server, TCPServer)`` is
therefore False: a deliberate difference, listed in the docs.)

Defaults that differ from the stdlib, each for a reason:

* ``request_queue_size`` is ``socket.SOMAXCONN`` (stdlib: 5, which drops most of a
  burst of connections and makes clients wait out SYN retransmits; Python 3.15 makes
  the same change);
* ``TCPServer.allow_reuse_address`` is true on POSIX, so a restarted server binds
  while old connections sit in TIME_WAIT (asyncio, gevent, Twisted, trio and Tornado
  do the same; on POSIX it never lets two live listeners share a port). It stays
  false on Windows, where SO_REUSEADDR *would* allow that;
* ``max_packet_size`` is 65,535 (stdlib: 8192), so every UDP datagram arrives
  whole; one longer than a ``max_packet_size`` the program set is not delivered
  truncated: it is logged (once a minute), counted in ``datagrams_truncated`` and
  dropped;
* Unix servers (these transports with the mix-ins of :mod:`pyserve.unix`) remove
  the socket file they created when they close, and replace a *stale* socket file
  (nobody listening) on bind, but never a live socket or a file of another kind;
* the address family follows the address: ``TCPServer(("::1", 0), H)`` serves
  IPv6 (the stdlib fails), unless the class sets ``address_family`` itself (the
  rules are in :mod:`pyserve.net.addresses`).

Where the socket comes from
---------------------------
``__init__`` creates the socket, unless the server is *adopting* one that was
bound elsewhere (``from_socket()``, ``from_fd()``, ``from_systemd()``, from
:mod:`pyserve.net.activation`). An adopted socket goes through the same
``server_bind()``/``server_activate()`` hooks, so subclasses extending them
(``http.server.HTTPServer`` reads its name there) keep working; but
``server_bind()`` only reads the address back, and a Unix server never deletes a
socket file it did not create.

Socket options are data (:mod:`pyserve.net.sockopts`): ``listen_socket_options`` are
set in ``server_bind()`` before ``bind()``; ``accepted_socket_options`` on each
accepted connection, at the cost of one truth test when there are none.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
from collections.abc import Sequence

from pyserve.base import BaseServer
from pyserve.errors import RequestDropped
from pyserve.logs import WARNING, DeferredLogger, RateLimitedLog, escape
from pyserve.net.activation import SocketAdoption
from pyserve.net.addresses import family_for_address
from pyserve.net.sockopts import (
    SocketOption,
    apply_socket_options,
    check_socket_options,
    drop_new_handshakes,
    probe_socket_options,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

__all__ = [
    "SocketServer",
    "TCPServer",
    "UDPServer",
]

logger = DeferredLogger("pyserve")


class SocketServer(SocketAdoption, BaseServer):
    """A server that owns one socket: the shared base of TCP, UDP and Unix servers.

    Class attributes that may be overridden: ``address_family``, ``socket_type``,
    ``request_queue_size``, ``allow_reuse_address``, ``allow_reuse_port``,
    ``dualstack_ipv6``, ``listen_socket_options``.

    For the caller, besides the constructor: ``from_socket()``, ``from_fd()`` and
    ``from_systemd()`` (see :class:`~pyserve.net.activation.SocketAdoption`).

    IPv6 needs nothing but the address; set ``address_family`` in a subclass only
    to insist on one family::

        server = TCPServer(("::1", 8000), Handler)          # IPv6: family follows

        class Both(ThreadingTCPServer):
            dualstack_ipv6 = True                           # IPv4 + IPv6, one socket

        server = Both(("::", 8000), Handler)  # reached at 127.0.0.1 and at ::1
    """

    #: The socket's address family (``AF_INET``, ``AF_INET6``, ``AF_UNIX``).
    address_family: int = socket.AF_INET
    #: The socket's type (``SOCK_STREAM`` or ``SOCK_DGRAM``).
    socket_type: int = socket.SOCK_STREAM
    #: Listen backlog: as much as the kernel allows (it caps the value itself).
    request_queue_size: int = socket.SOMAXCONN
    #: Set SO_REUSEADDR before binding.
    allow_reuse_address: bool = False
    #: Set SO_REUSEPORT before binding (several sockets then share the port).
    allow_reuse_port: bool = False
    #: Serve IPv4 and IPv6 on one AF_INET6 socket (IPV6_V6ONLY off); bind ``"::"``.
    dualstack_ipv6: bool = False
    #: ``(level, option, value)`` triples set on the server's socket before bind().
    listen_socket_options: Sequence[SocketOption] = ()

    #: A socket handed over by ``from_socket()``; ``__init__`` takes it.
    _adopting: Optional[socket.socket] = None

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[..., Any],
        bind_and_activate: bool = True,
    ) -> None:
        super().__init__(server_address, RequestHandlerClass)
        adopted, self._adopting = self._adopting, None
        #: True when the socket was bound elsewhere and handed to ``from_socket()``.
        self.socket_adopted = adopted is not None
        if adopted is not None:
            self.socket = adopted
        else:
            family = family_for_address(
                server_address, self.address_family, self._family_is_chosen(), self.dualstack_ipv6
            )
            self.socket = socket.socket(family, self.socket_type)
        # The instance says which family it serves; the class is never touched.
        self.address_family = self.socket.family
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    @classmethod
    def _family_is_chosen(cls) -> bool:
        """Whether ``address_family`` was set below pyserve's transport classes."""
        owner = next(klass for klass in cls.__mro__ if "address_family" in vars(klass))
        return owner not in _FAMILY_FOLLOWS_ADDRESS

    def server_bind(self) -> None:
        """Set the options and bind (an adopted socket: read its address). May be extended.

        Like the stdlib's, it calls no other class's ``server_bind()``: code that
        writes ``UnixStreamServer.server_bind(self)`` in a class that also inherits
        ``http.server.HTTPServer`` (to skip its host-name lookup) gets the socket
        bound and nothing more. What a transport adds happens in the private steps
        ``_configure_socket()`` and ``_bind()``, which mix-ins extend instead.
        """
        self._configure_socket()
        if self.socket_adopted:
            self.server_address = self.socket.getsockname()
            return
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.dualstack_ipv6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._bind()

    def _configure_socket(self) -> None:
        """Set options on the socket, adopted or not, before binding. Extend; call super()."""
        if self.listen_socket_options:
            options = check_socket_options(self.listen_socket_options, "listen_socket_options")
            apply_socket_options(self.socket, options, "listen_socket_options")

    def _bind(self) -> None:
        """Bind to ``server_address`` and read the real address back. Extend; call super()."""
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        """Close the socket. May be extended."""
        self.accept_gate.close("server_close")
        self.socket.close()

    #: The most connections a drain takes from the kernel's queue before it closes
    #: the listener: they completed their handshake, so the client believes it is
    #: being served (a listen backlog is rarely deeper).
    _drain_backlog_limit = 4096
    #: How long a drain waits for handshakes under way once new SYNs are dropped:
    #: a loopback or LAN round trip is far below it.
    _drain_handshake_settle_ms = 20

    def _withdraw_listener(self) -> int:
        """Serve what the kernel already queued, then close the listener (drain).

        Closing makes new connection attempts fail (refused), which a load
        balancer retries elsewhere; the connections already queued completed
        their handshake, so they are taken and served rather than reset. On
        Linux the listener first stops answering new SYNs
        (:func:`~pyserve.net.sockopts.drop_new_handshakes`), so no handshake
        completes between the last look at the queue and the close; a handshake
        already under way gets a few milliseconds to finish. A listener shared
        with other processes (prefork) is closed in this process only; the others
        keep serving it.
        """
        listener = self.socket
        if listener.fileno() < 0:
            return 0
        taken_on = 0
        if (
            listener.type == socket.SOCK_STREAM
            # A synchronous server serves in the loop thread only, never beside it.
            and type(self).process_request is not BaseServer.process_request
            # Never block in accept() on a queue another process may empty first.
            and not (self.socket_adopted and os.get_blocking(listener.fileno()))
        ):
            # Only on a listener this process alone serves: the filter is shared.
            settle_ms = 0
            if not self.socket_adopted and drop_new_handshakes(listener):
                settle_ms = self._drain_handshake_settle_ms
            poller = select.poll()
            poller.register(listener.fileno(), select.POLLIN)
            for _ in range(self._drain_backlog_limit):
                # Wait a little once the queue looks empty: a handshake under way.
                if not poller.poll(0) and not poller.poll(settle_ms):
                    break
                taken = self._accept_and_admit()
                if taken is not None:
                    taken_on += 1
                    self._serve_accepted(*taken)
        listener.close()
        return taken_on

    def fileno(self) -> int:
        """The socket's descriptor, for selectors."""
        return self.socket.fileno()


class TCPServer(SocketServer):
    """A stream server: one connected socket per request.

    Class attributes beyond :class:`SocketServer`'s: ``accepted_socket_options``.
    ``allow_reuse_address`` is true on POSIX (see the module docstring).
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    allow_reuse_address = os.name != "nt"
    #: ``(level, option, value)`` triples set on every accepted connection.
    accepted_socket_options: Sequence[SocketOption] = ()
    #: Seconds a TLS handshake may take inside ``get_request()`` when the listener
    #: itself is an ``ssl.SSLSocket`` (the stdlib's HTTPS recipe, which shakes
    #: hands in the accept loop): bounded, so one silent client stalls the loop
    #: for this long at most rather than for ever. TLSMixIn avoids the stall.
    ssl_listener_handshake_timeout: float = 10.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        #: Handshakes that failed on an SSL-wrapped listener (TLSMixIn counts its
        #: own here too).
        self.tls_handshake_failures = 0

    def server_activate(self) -> None:
        """Listen with a backlog of :attr:`~SocketServer.request_queue_size`.

        ``accepted_socket_options`` are tried on a scratch socket first, so one the
        kernel refuses fails here, once, naming the option.
        """
        if self.accepted_socket_options:
            options = check_socket_options(self.accepted_socket_options, "accepted_socket_options")
            probe_socket_options(
                self.socket.family, self.socket.type, options, "accepted_socket_options"
            )
        self.socket.listen(self.request_queue_size)

    #: ``(listener, family, type, proto)``, read once per listening socket.
    _accept_kind: Optional[tuple[socket.socket, int, int, int]] = None

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection (and set ``accepted_socket_options`` on it).

        From a plain :class:`socket.socket` this does what its ``accept()`` does
        without re-reading the listener's family and type on every call (each
        read builds an enum: about 2 microseconds per connection on CPython 3.11,
        a tenth of the Python time of a short connection in a thread pool). A
        socket subclass, such as :class:`ssl.SSLSocket`, accepts its own way.
        """
        listener = self.socket
        if type(listener) is not socket.socket:
            request = self._accept_other(listener)
        else:
            kind = self._accept_kind
            if kind is None or kind[0] is not listener:
                kind = (listener, listener.family, listener.type, listener.proto)
                self._accept_kind = kind
            fd, address = listener._accept()  # type: ignore[attr-defined]
            request = (socket.socket(kind[1], kind[2], kind[3], fd), address)
        if listener.gettimeout() is not None and socket.getdefaulttimeout() is None:
            # A listener with a timeout, or a non-blocking one (prefork's), may hand
            # out connections with O_NONBLOCK set (BSD's and macOS's accept() copy
            # it; Linux's does not): a request is a blocking socket everywhere.
            request[0].setblocking(True)
        if self.accepted_socket_options:
            self._set_accepted_options(request)
        return request

    def _accept_other(self, listener: socket.socket) -> tuple[socket.socket, Any]:
        """Accept from a socket subclass; on an ``ssl.SSLSocket``, shake hands here.

        ``SSLSocket.accept()`` would report a client's failed handshake (a
        plain-text client, a scanner, a reset) as an error of the listener, which
        ends in ``handle_error(None, None)`` and a traceback per client. Here the
        kernel's accept and the handshake are two steps: a failure of the first is
        the listener's, of the second the client's: one DEBUG line, a count in
        ``tls_handshake_failures``, and the loop moves on.
        """
        ssl = sys.modules.get("ssl")  # an SSLSocket means ssl is imported already
        if ssl is None or not isinstance(listener, ssl.SSLSocket):
            return listener.accept()
        connection, address = socket.socket.accept(listener)
        handshake_now = listener.do_handshake_on_connect
        try:
            if handshake_now:
                connection.settimeout(self.ssl_listener_handshake_timeout)
            tls = listener.context.wrap_socket(
                connection,
                server_side=True,
                do_handshake_on_connect=handshake_now,
                suppress_ragged_eofs=listener.suppress_ragged_eofs,
            )
        except OSError as exc:  # ssl.SSLError, a reset, a timeout
            connection.close()
            self.tls_handshake_failures += 1
            logger.debug("TLS handshake with %s failed in accept: %s", escape(address), exc)
            raise RequestDropped(exc.errno, str(exc)) from exc
        tls.settimeout(socket.getdefaulttimeout())  # as accept() leaves a socket
        return tls, address

    def _set_accepted_options(self, request: tuple[socket.socket, Any]) -> None:
        try:
            apply_socket_options(request[0], self.accepted_socket_options)
        except OSError as exc:
            # Checked at startup, so only a connection the peer already reset gets
            # here: drop it like any other connection that died before accept().
            logger.debug("Dropped a connection from %s: %s", request[1], exc)
            request[0].close()
            raise RequestDropped(exc.errno, str(exc)) from exc

    def shutdown_request(self, request: socket.socket) -> None:
        """Send FIN so the peer reads everything written, then close."""
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is already gone; closing is all that is left
        self.close_request(request)

    def close_request(self, request: socket.socket) -> None:
        request.close()


class UDPServer(SocketServer):
    """A datagram server: one datagram per request, as ``(data, socket)``.

    Class attributes: ``max_packet_size`` (the longest datagram delivered; longer
    ones are dropped and counted in ``datagrams_truncated``, never delivered cut
    short) and ``allow_broadcast`` (``SO_BROADCAST``, so handlers may send to
    broadcast addresses).
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_DGRAM
    allow_reuse_address = False
    #: The longest datagram delivered to a handler; longer ones are dropped. By
    #: default 65,535, the most a UDP datagram can carry (65,507 bytes of payload
    #: over IPv4), so every datagram arrives whole; the stdlib's 8192 cut longer
    #: ones short. Set it lower to refuse big datagrams (Unix datagrams can be
    #: longer: raise it to accept them). Receiving costs the same either way.
    max_packet_size: int = 65535
    #: Set SO_BROADCAST, so handlers may send to broadcast addresses (the kernel
    #: refuses with EACCES otherwise). Cookbook: a discovery responder::
    #:
    #:     class Announcer(UDPServer):
    #:         allow_broadcast = True   # handler: sendto(reply, ("255.255.255.255", port))
    allow_broadcast: bool = False

    #: Minimum seconds between two log lines about over-long datagrams: a peer can
    #: send thousands a second, and each would otherwise be a line.
    truncation_log_interval: float = 60.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self.datagrams_truncated = 0
        self._peer_faults = RateLimitedLog(logger, self.truncation_log_interval)

    def _configure_socket(self) -> None:
        if self.allow_broadcast:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        super()._configure_socket()

    def get_request(self) -> tuple[tuple[bytes, socket.socket], Any]:
        """Receive one datagram of at most :attr:`max_packet_size` bytes.

        One byte more is asked of the kernel: if it arrives, the datagram was too
        long, and handing the handler its first ``max_packet_size`` bytes would
        corrupt the request silently (the stdlib does). Asking for 64 KiB costs no
        more than asking for 8 KiB: the bytes object is shrunk to what arrived.
        """
        data, client_address = self.socket.recvfrom(self.max_packet_size + 1)
        if len(data) > self.max_packet_size:
            self._datagram_too_long(client_address)
            raise RequestDropped(errno.EMSGSIZE, "datagram longer than max_packet_size")
        return (data, self.socket), client_address

    def _datagram_too_long(self, client_address: Any) -> None:
        self.datagrams_truncated += 1
        self._peer_faults.report(
            WARNING,
            "datagram too long",
            "Dropped a datagram from %s longer than max_packet_size=%d (%d dropped so far)",
            escape(client_address),
            self.max_packet_size,
            self.datagrams_truncated,
        )

    def shutdown_request(self, request: Any) -> None:
        """Nothing to shut down: the socket is the server's."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Nothing to close."""


# Whose address_family is only a default, to be replaced by the address's family.
_FAMILY_FOLLOWS_ADDRESS = frozenset({SocketServer, TCPServer, UDPServer})
