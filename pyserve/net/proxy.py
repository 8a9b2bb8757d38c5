"""Serving behind a load balancer: the PROXY protocol mix-in.

Theory of operation
-------------------
Behind HAProxy, nginx or a cloud load balancer, every connection a server accepts
comes from the proxy, so ``client_address`` names the proxy, not the client. With
the PROXY protocol the proxy sends one header first, naming the real client.
:class:`ProxyProtocolMixIn` reads it and hands the handler the real address.

Its parts, in the order a connection meets them:

1. ``verify_request()`` (in the accept loop; no I/O): the connecting peer must be
   one of ``trusted_proxies``. Anyone else could claim any address in a header,
   so other peers are refused, counted in ``proxy_rejected``, and logged as a
   WARNING on the ``pyserve.proxy`` logger: one line a minute at most, however
   many peers are refused (the next line says how many were not logged).
2. ``finish_request()`` (in the worker: a thread, a pool worker, a forked child):
   read the header under ``proxy_header_timeout`` (a total deadline, so a proxy
   trickling bytes cannot hold a worker longer; on a thread pool that is
   saturated, a header still incomplete after half a second is cut off). The
   header is read *exactly*: the parser (:mod:`pyserve.net.proxy_header`) is fed
   a ``MSG_PEEK`` of what has arrived, and only the bytes that belong to the
   header are then consumed, so the application's first bytes stay in the
   socket for the handler. A missing,
   malformed or late header closes the connection and counts in
   ``proxy_header_failures``, with one INFO line a minute per kind of failure;
   the handler never runs.
3. The handler runs with ``client_address`` set to a :class:`ProxiedAddress`: the
   real client's ``(host, port)`` (a tuple, so ``client_address[0]`` and every
   stdlib handler work unchanged) that also carries ``proxy_address`` (the
   connection's own peer) and ``header`` (the :class:`~pyserve.net.proxy_header.ProxyHeader`, TLVs
   included). For the LOCAL command (proxy health checks) and UNKNOWN
   connections, the address is the proxy's own. A Unix-socket client arrives as
   a :class:`ProxiedPath` (a ``str`` with the same two attributes).

With TLS, the PROXY header comes first, in clear, so this mix-in goes *before*
:class:`~pyserve.net.tls.TLSMixIn`::

    class Server(ProxyProtocolMixIn, TLSMixIn, ThreadingMixIn, TCPServer): ...

Every peer-controlled value in these log lines (a Unix client's own socket
path, a header's source) goes through :func:`pyserve.logs.escape`, so no peer
can forge a log line. Counters are per process: with ``ForkingMixIn`` they grow
in the children.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

from pyserve.base import BaseServer
from pyserve.errors import ProtocolError
from pyserve.lifecycle.limits import SocketReader, saturation_probe
from pyserve.logs import RateLimitedLog, escape
from pyserve.net.proxy_header import (
    DEFAULT_MAX_V2_LENGTH,
    NEED_DATA,
    ProxyHeader,
    ProxyParser,
)

__all__ = ["ProxiedAddress", "ProxiedPath", "ProxyProtocolMixIn"]

logger = logging.getLogger("pyserve.proxy")

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
#: What ``trusted_proxies`` accepts: addresses or networks, as text or ipaddress
#: objects, and the word ``"unix"`` for any peer of a Unix-domain listener.
TrustedProxy = Union[
    str,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
]


class ProxiedAddress(tuple):  # type: ignore[type-arg]
    """The real client's ``(host, port)``, carrying how it reached us.

    It is a plain tuple to every reader (``host, port = client_address`` works),
    plus ``proxy_address`` (the peer that actually connected: the proxy) and
    ``header`` (the :class:`~pyserve.net.proxy_header.ProxyHeader` it sent)::

        class Handler(StreamRequestHandler):
            def handle(self):
                host, port = self.client_address          # the real client
                via = self.client_address.proxy_address   # the load balancer
                sni = self.client_address.header.tlv(PP2_TYPE_AUTHORITY)
    """

    proxy_address: Any
    header: ProxyHeader

    def __new__(cls, address: tuple[Any, ...], proxy_address: Any, header: ProxyHeader) -> Any:
        self = super().__new__(cls, address)
        self.proxy_address = proxy_address
        self.header = header
        return self


class ProxiedPath(str):
    """A Unix-socket client's path (a ``str``), with ``proxy_address`` and ``header``."""

    proxy_address: Any
    header: ProxyHeader

    def __new__(cls, path: str, proxy_address: Any, header: ProxyHeader) -> Any:
        self = super().__new__(cls, path)
        self.proxy_address = proxy_address
        self.header = header
        return self


def _parse_trusted(entries: Iterable[TrustedProxy]) -> tuple[tuple[_Network, ...], bool]:
    """Turn ``trusted_proxies`` into networks plus "Unix peers are trusted"."""
    if isinstance(entries, (str, bytes)):
        raise TypeError(f"trusted_proxies must be a collection, not the string {entries!r}")
    networks: list[_Network] = []
    unix = False
    for entry in entries:
        if entry == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"trusted_proxies: {entry!r} is not an address or network") from exc
    if not networks and not unix:
        raise ValueError(
            "ProxyProtocolMixIn needs trusted_proxies (e.g. ['127.0.0.1', '10.0.0.0/8']): "
            "without it any peer could claim any client address"
        )
    return tuple(networks), unix


#: While a pool is saturated, a header still incomplete after this long gives its
#: worker up: a proxy sends the whole header at once, a trickle is an attack.
_SATURATED_HEADER_WAIT = 0.5


class ProxyProtocolMixIn(_Base):
    """Accept PROXY protocol v1/v2 headers from trusted proxies (stream servers).

    Place it before the concurrency mix-in and the server class::

        class Server(ProxyProtocolMixIn, ThreadingMixIn, TCPServer):
            pass

        server = Server(("0.0.0.0", 8080), Handler, trusted_proxies=["10.0.0.0/8"])

    Class attributes that may be overridden (or passed as keyword arguments):

    - ``trusted_proxies``: addresses and networks allowed to connect and send a
      header (``"unix"`` trusts every peer of a Unix-domain listener); required
    - ``proxy_header_timeout``: seconds a header may take to arrive, in total
    - ``proxy_max_v2_length``: cap on a version 2 header's length (TLVs included)

    Counters: ``proxy_rejected`` (untrusted peers), ``proxy_header_failures``
    (missing, malformed or late headers).
    """

    trusted_proxies: Iterable[TrustedProxy] = ()
    #: A proxy sends the header as soon as it has connected, in one packet; five
    #: seconds is far beyond that, and bounds what a stuck peer costs a worker.
    proxy_header_timeout: float = 5.0
    proxy_max_v2_length: int = DEFAULT_MAX_V2_LENGTH
    #: Seconds between two log lines of one kind of peer fault (a refused peer,
    #: a bad header): a scan of the port costs one line, not one per connection.
    proxy_log_interval: float = 60.0

    def __init__(
        self,
        *args: Any,
        trusted_proxies: Optional[Iterable[TrustedProxy]] = None,
        proxy_header_timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if trusted_proxies is not None:
            self.trusted_proxies = trusted_proxies  # checked in _init_dispatch_state
        if proxy_header_timeout is not None:
            self.proxy_header_timeout = proxy_header_timeout
        super().__init__(*args, **kwargs)

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self._trusted_networks, self._trust_unix = _parse_trusted(self.trusted_proxies)
        if not self.proxy_header_timeout > 0:
            raise ValueError(
                f"proxy_header_timeout must be positive, not {self.proxy_header_timeout!r}"
            )
        self.proxy_rejected = 0
        self.proxy_header_failures = 0
        self._proxy_counter_lock = threading.Lock()
        self._proxy_faults = RateLimitedLog(logger, self.proxy_log_interval)

    def is_trusted_proxy(self, peer: Any) -> bool:
        """True if ``peer`` (a connection's address) may send PROXY headers."""
        if not isinstance(peer, tuple):
            return self._trust_unix  # a Unix-domain peer: a path or ''
        try:
            address = ipaddress.ip_address(peer[0].split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer of a dual-stack socket
        return any(address in network for network in self._trusted_networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse peers that are not trusted proxies. Extend; call super()."""
        if not self.is_trusted_proxy(client_address):
            with self._proxy_counter_lock:
                self.proxy_rejected += 1
                refused = self.proxy_rejected
            self._proxy_faults.report(
                logging.WARNING,
                "untrusted peer",
                "Refused %s: not a trusted proxy (%d refused so far)",
                escape(client_address),
                refused,
            )
            return False
        return super().verify_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Read the PROXY header, then run the handler with the real client's address."""
        # Until the handler reads, the header is the connection's reader, silent
        # until the header is whole: a real proxy sends it at once, in one packet,
        # so a peer that sends nothing, or a trickle, gives its worker up (to a
        # client waiting for one, or to a drain) like any silent connection.
        waiting = SocketReader.standing_in(request)
        self._watch_reader(request, waiting)
        try:
            header = self.read_proxy_header(request)
        except (ProtocolError, OSError, EOFError) as exc:
            with self._proxy_counter_lock:
                self.proxy_header_failures += 1
            self._proxy_faults.report(
                logging.INFO,
                f"bad header: {type(exc).__name__}",  # a class of ours or the stdlib's
                "Bad PROXY header from %s: %s",
                escape(client_address),
                _reason(exc),
            )
            return
        finally:
            waiting.waiting = False
        super().finish_request(request, self._client_address(header, client_address))

    def read_proxy_header(self, request: socket.socket) -> ProxyHeader:
        """Read exactly one header from ``request`` within ``proxy_header_timeout``.

        Raises ``ProtocolError`` (bad header), ``EOFError`` (the peer closed first)
        or ``OSError`` (including ``socket.timeout``).
        """
        parser = ProxyParser(max_v2_length=self.proxy_max_v2_length)
        started = time.monotonic()
        deadline = started + self.proxy_header_timeout
        previous_timeout = request.gettimeout()
        # A pool that can be saturated (every worker busy, requests waiting) cuts
        # a trickling header short: a real proxy sends it in one packet.
        saturated = saturation_probe(self)
        try:
            while True:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    raise socket.timeout("timed out waiting for the PROXY header")
                if saturated is not None:
                    if now - started >= _SATURATED_HEADER_WAIT and saturated():
                        raise socket.timeout(
                            "PROXY header incomplete while every worker was busy"
                        )
                    remaining = min(remaining, _SATURATED_HEADER_WAIT)
                request.settimeout(remaining)
                # Look without taking: only the header's bytes are consumed below.
                try:
                    chunk = request.recv(16 + self.proxy_max_v2_length, socket.MSG_PEEK)
                except socket.timeout:
                    if saturated is None:
                        raise
                    continue  # look at the pool, then wait again
                if not chunk:
                    raise EOFError("connection closed before the PROXY header ended")
                parser.feed(chunk)
                event = parser.next_event()
                if event is NEED_DATA:
                    _consume(request, len(chunk))  # all of it is header
                    continue
                assert isinstance(event, ProxyHeader)
                _consume(request, len(chunk) - len(parser.unused_data))
                return event
        finally:
            request.settimeout(previous_timeout)

    @staticmethod
    def _client_address(header: ProxyHeader, proxy_address: Any) -> Any:
        source = header.source
        if header.local or source is None:
            source = proxy_address  # health check or UNKNOWN: the connection's own
        if isinstance(source, tuple):
            return ProxiedAddress(source, proxy_address, header)
        return ProxiedPath(str(source), proxy_address, header)


def _consume(request: socket.socket, count: int) -> None:
    """Take ``count`` bytes already seen with MSG_PEEK out of the socket."""
    while count > 0:
        taken = len(request.recv(count))
        if not taken:
            raise EOFError("connection closed inside the PROXY header")
        count -= taken


def _reason(exc: BaseException) -> str:
    """Why a header failed, in our words (peer bytes inside are already repr()'d)."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__
