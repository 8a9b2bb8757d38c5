"""Short names for the ready-made handlers, so a command line can say ``echo``.

A *service* is a name, a one-line description, and a handler class per transport:
``"tcp"`` (any stream server: TCP or Unix stream) and ``"udp"`` (any datagram
server: UDP or Unix datagram). The RFC services have both; line and message
protocols have only ``"tcp"``.

Look-ups::

    from handlers import registry

    registry.names()                    # ['chargen', 'daytime', 'discard', 'echo', ...]
    registry.transports("echo")         # ('tcp', 'udp')
    registry.get("echo", "udp")         # handlers.simple.EchoDatagramHandler
    registry.get("uppercase")           # its only transport, or 'tcp' if it has both

Adding a service is one line. The built-ins below name their classes as
``"module:Class"`` strings, imported on first ``get()``, so importing the registry
stays cheap and no handler module has to import the registry::

    register("chat", tcp="handlers.chat:ChatHandler", description="a chat room")

or, for your own classes, a decorator::

    @registry.service("shout", "tcp", description="upper-cases lines")
    class Shout(LineHandler): ...

Registering a name twice raises :class:`ValueError` (pass ``replace=True`` to mean
it); an unknown name or transport raises :class:`KeyError` listing what exists.

A transport may be *withheld*: registered with a reason instead of a handler
(``withheld={"udp": "why"}``), so asking for it raises :class:`KeyError` with that
reason rather than "no such transport". ``chargen`` and ``qotd`` withhold UDP:
a UDP reply goes to whatever source address the request claims, so a spoofed
small request makes the server send a larger reply to a victim (chargen's up to
512 bytes for an empty datagram, qotd's quotation). Serving them over UDP
takes naming the handler class, which is the explicit opt-in.
The registry is a process-wide table guarded by a lock: registering from several
threads is safe.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar, Union

__all__ = [
    "TRANSPORTS",
    "Service",
    "describe",
    "get",
    "names",
    "register",
    "service",
    "transports",
    "unregister",
]

#: The transports a service may offer: stream ("tcp") and datagram ("udp").
TRANSPORTS = ("tcp", "udp")

#: A handler class, or where to import it from: ``"package.module:ClassName"``.
HandlerRef = Union[type, str]

HandlerT = TypeVar("HandlerT", bound=type)


@dataclass(frozen=True)
class Service:
    """One registered name: its description, a handler per transport, and the
    transports withheld on purpose (with the reason)."""

    name: str
    description: str
    handlers: Mapping[str, HandlerRef]
    withheld: Mapping[str, str] = field(default_factory=dict)

    def handler(self, transport: str) -> type:
        """The handler class for ``transport`` (imported on first use)."""
        if transport in self.withheld:
            raise KeyError(
                f"service {self.name!r} is not offered over {transport}: {self.withheld[transport]}"
            )
        try:
            ref = self.handlers[transport]
        except KeyError:
            offered = ", ".join(self.handlers)
            raise KeyError(
                f"service {self.name!r} has no {transport!r} handler (it offers: {offered})"
            ) from None
        return ref if isinstance(ref, type) else _import(ref)


def _import(ref: str) -> type:
    module_name, _, attribute = ref.partition(":")
    found = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(found, type):
        raise TypeError(f"{ref!r} is not a class")
    return found


_lock = threading.Lock()
_services: dict[str, Service] = {}


def register(
    name: str,
    *,
    tcp: Optional[HandlerRef] = None,
    udp: Optional[HandlerRef] = None,
    description: str = "",
    replace: bool = False,
    withheld: Optional[Mapping[str, str]] = None,
) -> Service:
    """Register ``name`` with a stream (``tcp``) and/or datagram (``udp``) handler.

    ``withheld`` maps a transport not offered on purpose to the reason, which
    :func:`get` gives in its :class:`KeyError`.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"service name {name!r} must be a non-empty string without spaces")
    handlers = {t: h for t, h in (("tcp", tcp), ("udp", udp)) if h is not None}
    if not handlers:
        raise ValueError(f"service {name!r} needs a tcp or udp handler")
    for transport, ref in handlers.items():
        if not isinstance(ref, type) and not (isinstance(ref, str) and ":" in ref):
            raise ValueError(
                f"{transport} handler {ref!r} of {name!r} must be a class or 'module:Class'"
            )
    withheld = dict(withheld or {})
    for transport in withheld:
        if transport not in TRANSPORTS or transport in handlers:
            raise ValueError(
                f"withheld transport {transport!r} of {name!r} must be one of {TRANSPORTS} "
                "without a handler"
            )
    entry = Service(name, description, handlers, withheld)
    with _lock:
        if name in _services and not replace:
            raise ValueError(f"service {name!r} is already registered (pass replace=True)")
        _services[name] = entry
    return entry


def service(
    name: str, transport: str = "tcp", *, description: str = ""
) -> Callable[[HandlerT], HandlerT]:
    """A class decorator: register the class as ``name``'s handler for ``transport``.

    Decorating a second class with the same name and the other transport adds it
    to the same service.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} must be one of {TRANSPORTS}")

    def decorate(cls: HandlerT) -> HandlerT:
        with _lock:
            existing = _services.get(name)
        handlers: dict[str, Any] = dict(existing.handlers) if existing else {}
        if transport in handlers:
            raise ValueError(f"service {name!r} already has a {transport} handler")
        handlers[transport] = cls
        text = description or (existing.description if existing else "")
        register(name, description=text, replace=existing is not None, **handlers)
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove ``name`` (KeyError if unknown): for tests and plugins that clean up."""
    _lookup(name)
    with _lock:
        _services.pop(name, None)


def _lookup(name: str) -> Service:
    with _lock:
        try:
            return _services[name]
        except KeyError:
            known = ", ".join(sorted(_services))
            raise KeyError(f"no service named {name!r} (known: {known})") from None


def get(name: str, transport: Optional[str] = None) -> type:
    """The handler class of ``name`` for ``transport``.

    Without a transport: the service's only one, or ``"tcp"`` if it has both.
    """
    entry = _lookup(name)
    if transport is None:
        transport = "tcp" if "tcp" in entry.handlers else next(iter(entry.handlers))
    return entry.handler(transport)


def names() -> list[str]:
    """Every registered name, sorted."""
    with _lock:
        return sorted(_services)


def transports(name: str) -> tuple[str, ...]:
    """The transports ``name`` can be served on, in the order of :data:`TRANSPORTS`."""
    entry = _lookup(name)
    return tuple(t for t in TRANSPORTS if t in entry.handlers)


def describe(name: str) -> str:
    """The one-line description of ``name``."""
    return _lookup(name).description


# -- the built-in services: one call each ---------------------------------------------

_S = "handlers.simple:"
register(
    "echo",
    tcp=_S + "EchoStreamHandler",
    udp=_S + "EchoDatagramHandler",
    description="RFC 862: sends back what it receives",
)
register(
    "discard",
    tcp=_S + "DiscardStreamHandler",
    udp=_S + "DiscardDatagramHandler",
    description="RFC 863: reads and ignores everything",
)

# A UDP reply goes to whatever source address the request claims: these two answer
# a spoofed empty datagram with hundreds of bytes, aimed at someone else.
_AMPLIFIER = (
    "over UDP it answers a spoofed {size} request with {reply}, sent to the "
    "forged address (a traffic amplifier); serve it over TCP, or, on a network "
    "you trust, name the class explicitly: {ref}"
)
register(
    "chargen",
    tcp=_S + "ChargenStreamHandler",
    withheld={
        "udp": _AMPLIFIER.format(
            size="1-byte", reply="up to 512 bytes (19x on the wire)",
            ref=_S + "ChargenDatagramHandler",
        )
    },
    description="RFC 864: lines of rotating characters (paced; UDP off, see docs)",
)
register(
    "qotd",
    tcp=_S + "QotdStreamHandler",
    withheld={
        "udp": _AMPLIFIER.format(
            size="1-byte", reply="a quotation of up to 90 bytes (4x on the wire)",
            ref=_S + "QotdDatagramHandler",
        )
    },
    description="RFC 865: a quotation of the day (UDP off, see docs)",
)
register(
    "daytime",
    tcp=_S + "DaytimeStreamHandler",
    udp=_S + "DaytimeDatagramHandler",
    description="RFC 867: the date and time as text",
)
register(
    "time",
    tcp=_S + "TimeStreamHandler",
    udp=_S + "TimeDatagramHandler",
    description="RFC 868: seconds since 1900 as 4 bytes (rdate's protocol)",
)
register(
    "uppercase",
    tcp="handlers.lines:UpperCaseHandler",
    description="echoes each message in upper case (tutorial 001's server)",
)
register(
    "welcome",
    tcp="handlers.lines:WelcomeHandler",
    description="tutorial 000's server: greets 'Success!', answers 'Welcom! NAME!', ends on 'exit'",
)
register(
    "message-echo",
    tcp="handlers.messages:NativeOrderEchoHandler",
    description="echoes length-prefixed messages (4-byte length in this machine's byte order,"
    " as struct.pack('I', n) sends it)",
)
register(
    "message-echo-network",
    tcp="handlers.messages:EchoMessageHandler",
    description="echoes length-prefixed messages (4-byte big-endian length)",
)
register(
    "chat",
    tcp="handlers.chat:ChatHandler",
    description="a chat room (/nick, /who, /quit); slow readers and flooders are dropped",
)
register(
    "resp",
    tcp="handlers.resp:RespConnection",
    description="a Redis-compatible key-value store (RESP2) for redis-cli and redis-py",
)
register(
    "files",
    tcp="handlers.files:FileHandler",
    description="downloads under the current directory (read-only; length-prefixed frames)",
)
