"""The command's options as server features: the mix-ins and attributes each needs.

:func:`pyserve.cli.build.server_class` composes ``class Server(*features,
strategy, transport)``; every function here turns one option (or a pair that
belongs together) into its part of that class: a tuple of mix-ins and a dict of
class attributes (:data:`~pyserve.cli.build.Features`). Class attributes rather
than constructor arguments, so the same class also works where a server is built
for us (prefork workers build theirs after the fork). A contradiction between
options raises :class:`~pyserve.cli.exits.CliError`.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import IO, TYPE_CHECKING, Any, Optional

from pyserve.base import BaseServer
from pyserve.cli.build import Features
from pyserve.cli.exits import EXIT_TLS, EXIT_USAGE, CliError
from pyserve.errors import ProtocolError
from pyserve.logs import escape
from pyserve.net.proxy import ProxyProtocolMixIn, _parse_trusted
from pyserve.net.proxy_header import ProxyHeader

__all__ = [
    "AccessLogMixIn",
    "ProxyVersionMixIn",
    "access_log_feature",
    "limits_feature",
    "pool_feature",
    "proxy_feature",
    "socket_mode_feature",
    "tls_feature",
    "trace_feature",
]


def pool_feature(concurrency: str, max_workers: Optional[int]) -> Features:
    """``--max-workers``: the thread pool's size (``--concurrency pool`` only)."""
    if max_workers is None:
        return ((), {})
    if concurrency != "pool":
        raise CliError("--max-workers needs --concurrency pool", EXIT_USAGE)
    return ((), {"max_workers": max_workers})


def limits_feature(
    idle_timeout: Optional[float],
    max_connections: Optional[int],
    max_per_client: Optional[int] = None,
) -> Features:
    """``--idle-timeout``, ``--max-connections`` and ``--max-connections-per-client``
    (0: no limit): the per-connection protections of :mod:`pyserve.lifecycle.limits`,
    as server attributes (every stream handler obeys them)."""
    attributes: dict[str, Any] = {}
    if idle_timeout is not None:
        attributes["idle_timeout"] = idle_timeout
    if max_connections is not None:
        attributes["max_connections"] = max_connections
    if max_per_client is not None:
        attributes["max_connections_per_client"] = max_per_client or None
    return ((), attributes)


def tls_feature(
    cert: Optional[str],
    key: Optional[str],
    ca: Optional[str] = None,
    verify_client: bool = False,
) -> Features:
    """``--tls-cert``/``--tls-key``: serve TLS (:mod:`pyserve.net.tls`) with that pair;
    ``--tls-ca`` verifies client certificates against those CAs (when a client
    sends one), and ``--tls-verify-client`` requires one (mutual TLS)."""
    if cert is None:
        for option, value in (
            ("--tls-key", key),
            ("--tls-ca", ca),
            ("--tls-verify-client", verify_client),
        ):
            if value:
                raise CliError(f"{option} needs --tls-cert", EXIT_USAGE)
        return ((), {})
    if verify_client and ca is None:
        raise CliError(
            "--tls-verify-client needs --tls-ca (the CA that signs client certificates)", EXIT_USAGE
        )
    # Imported here: ssl costs every process that loads it, TLS or not.
    import ssl  # noqa: PLC0415 - only a TLS server pays for ssl

    from pyserve.net.tls import TLSMixIn  # noqa: PLC0415

    _check_pem_kinds(cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one: a bad PEM, a key that does not match
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            where = f"the key in {key!r}" if key else "the key"
            reason = f"{where} does not belong to the certificate"
        else:
            reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise CliError(f"cannot load the TLS certificate {cert!r}: {reason}", EXIT_TLS) from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except OSError as exc:
            reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
            raise CliError(f"cannot load the TLS CA {ca!r}: {reason}", EXIT_TLS) from exc
        context.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    return ((TLSMixIn,), {"ssl_context": context})


def _check_pem_kinds(cert: str, key: Optional[str]) -> None:
    """Name the file when a certificate and a key are given the wrong way round
    (OpenSSL's own message, ``[SSL] PEM lib``, names neither)."""
    contents = {}
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb") as file:
                contents[option] = file.read()
        except OSError as exc:
            raise CliError(f"cannot read {option} {path!r}: {exc.strerror}", EXIT_TLS) from None
    cert_pem = contents["--tls-cert"]
    if b"CERTIFICATE-----" not in cert_pem and b"PRIVATE KEY-----" in cert_pem:
        swapped = " (are --tls-cert and --tls-key swapped?)" if key else ""
        raise CliError(
            f"--tls-cert {cert!r} holds a private key, not a certificate{swapped}", EXIT_TLS
        )
    key_pem = contents.get("--tls-key")
    if (
        key_pem is not None
        and b"PRIVATE KEY-----" not in key_pem
        and b"CERTIFICATE-----" in key_pem
    ):
        raise CliError(
            f"--tls-key {key!r} holds a certificate, not a private key "
            "(are --tls-cert and --tls-key swapped?)",
            EXIT_TLS,
        )


def socket_mode_feature(mode: Optional[str]) -> Features:
    """``--socket-mode 600``: the Unix socket file's permissions (octal), set before
    ``listen()`` so nobody connects in between (:mod:`pyserve.unix`)."""
    if mode is None:
        return ((), {})
    try:
        value = int(mode, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o7777:
        raise CliError(
            f"bad --socket-mode {mode!r}: give an octal file mode such as 600 or 660", EXIT_USAGE
        )
    return ((), {"socket_mode": value})


class ProxyVersionMixIn(ProxyProtocolMixIn):
    """The PROXY protocol mix-in, refusing headers of the other version if asked."""

    proxy_version: Optional[int] = None  # 1, 2, or None for either

    def read_proxy_header(self, request: socket.socket) -> ProxyHeader:
        header = super().read_proxy_header(request)
        if self.proxy_version is not None and header.version != self.proxy_version:
            wanted = self.proxy_version
            raise ProtocolError(f"a v{header.version} header, but only v{wanted} is accepted")
        return header


def proxy_feature(mode: Optional[str], trusted: list[str]) -> Features:
    """``--proxy-protocol v1|v2|auto`` with ``--trusted-proxy``: real client addresses
    from a load balancer's PROXY header (:mod:`pyserve.net.proxy`)."""
    if mode is None:
        if trusted:
            raise CliError("--trusted-proxy needs --proxy-protocol", EXIT_USAGE)
        return ((), {})
    if not trusted:
        message = "--proxy-protocol needs --trusted-proxy (the balancer's address)"
        raise CliError(message, EXIT_USAGE)
    try:
        _parse_trusted(trusted)
    except ValueError as exc:
        raise CliError(f"bad --trusted-proxy: {exc}", EXIT_USAGE) from None
    version = {"v1": 1, "v2": 2}.get(mode)
    return ((ProxyVersionMixIn,), {"trusted_proxies": list(trusted), "proxy_version": version})


def trace_feature(stream: Optional[IO[str]]) -> Features:
    """``--trace``: explain mode, one line per hook call, to ``stream``."""
    return ((), {"explain": stream}) if stream is not None else ((), {})


if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object


class AccessLogMixIn(_Base):
    """Logs one line per request to ``pyserve.access``: client, duration, outcome."""

    access_logger = logging.getLogger("pyserve.access")

    def finish_request(self, request: Any, client_address: Any) -> None:
        started = time.monotonic()
        outcome = "error"
        try:
            super().finish_request(request, client_address)
            outcome = "ok"
        finally:
            self.access_logger.info(
                "%s %.3fs %s", _client(client_address), time.monotonic() - started, outcome
            )


def _client(address: Any) -> str:
    """The client as one safe token: ``host:port``, or an escaped Unix path.

    A path can come from a peer (a PROXY v2 header's Unix source), so it is
    escaped: a newline in it cannot forge a second access-log line.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return escape(f"{host}:{address[1]}")[1:-1]  # addresses print bare
    return escape(address) if address else "-"  # a Unix peer is usually unnamed


def access_log_feature(enabled: bool) -> Features:
    """``--access-log``: the access-log mix-in."""
    return ((AccessLogMixIn,), {}) if enabled else ((), {})
