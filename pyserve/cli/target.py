"""What the ``pyserve`` command serves: TARGET turned into handler classes or a factory.

TARGET is one of

* a *registry name* (``echo``, ``daytime``...): a ready handler from pyserve's
  ``handlers`` package, one class per kind of request;
* ``module:Class``: a request handler class of the user's. A
  ``DatagramRequestHandler`` serves datagram binds (``udp://``, ``unixgram:``), a
  stream handler (``StreamRequestHandler``, ``ConnectionHandler``) stream binds, and
  a plain ``BaseRequestHandler`` either;
* ``module:StreamClass,DatagramClass``: one of each, for a service on TCP and UDP
  at once (as the registry's RFC services are);
* ``module:function``: a factory called with the address that returns a server.

Importing the user's module
---------------------------
The current directory comes first on ``sys.path`` (as with ``python -m``), and the
import runs in the main thread under a watchdog: if it has not returned after
:data:`IMPORT_WATCHDOG_SECONDS`, one line on stderr says which module and why
that usually happens (its top level starts a server: the main guard is missing).
A Ctrl-C during the import, a module that does not compile or raises, and a
target of the wrong kind each become one :class:`~pyserve.cli.exits.CliError` line, exit code 3.

Two packages named ``handlers``
-------------------------------
pyserve ships a top-level ``handlers`` package, and users often have a
``handlers.py`` of their own. The user's module must win for the user's code, so
the command never imports pyserve's ``handlers`` for a ``module:attr`` target, and
an ``import handlers`` in the user's code finds theirs as Python would without
pyserve. For a registry name (no user code runs), :func:`ready_handlers` loads
pyserve's package from the directory pyserve itself was installed in, whatever
``sys.path`` says, under its own name so its lazily imported handler modules
(``handlers.simple``...) resolve inside it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

from pyserve.cli.exits import EXIT_TARGET, CliError

__all__ = ["IMPORT_WATCHDOG_SECONDS", "Target", "ready_handlers", "resolve_target"]

#: Seconds an import may take before the command says it has not returned. A
#: module that only defines things imports in milliseconds; one that serves at
#: its top level never returns, and three seconds is long enough to spare a
#: heavy but honest import the note, short enough that a newcomer is not left
#: staring at a silent terminal.
IMPORT_WATCHDOG_SECONDS = 3.0

#: The directory pyserve (and its ``handlers`` package) was installed in.
_INSTALLED_IN = Path(__file__).resolve().parent.parent.parent

STREAM, DATAGRAM = "tcp", "udp"  # the registry's names for the two kinds of request


@dataclass
class Target:
    """What to serve: a handler class per kind of request, or a server factory."""

    name: str
    handlers: dict[str, type] = field(default_factory=dict)
    service: Optional[str] = None  # a registry name: handlers are looked up lazily
    factory: Optional[Callable[[Any], Any]] = None

    def handler_for(self, datagram: bool, bind_text: str) -> type:
        """The handler class for a stream or datagram bind."""
        kind = DATAGRAM if datagram else STREAM
        if self.service is not None:
            try:
                handler: type = ready_handlers().get(self.service, kind)
            except KeyError as exc:
                raise CliError(f"{exc.args[0]} (for --bind {bind_text})", EXIT_TARGET) from None
            return handler
        if kind not in self.handlers:
            [(offered, handler)] = self.handlers.items()
            raise CliError(
                f"target {self.name!r}: {handler.__name__} is a {_KIND_WORDS[offered]} "
                f"handler; --bind {bind_text} needs a {_KIND_WORDS[kind]} one "
                f"(bind it as {_BIND_WORDS[offered]}, or name both: module:StreamClass,"
                f"DatagramClass)",
                EXIT_TARGET,
            )
        return self.handlers[kind]


_KIND_WORDS = {STREAM: "stream", DATAGRAM: "datagram"}
_BIND_WORDS = {STREAM: "HOST:PORT or unix:/path", DATAGRAM: "udp://HOST:PORT or unixgram:/path"}


# -- pyserve's ready handlers ---------------------------------------------------------


def ready_handlers() -> ModuleType:
    """pyserve's ``handlers.registry``, even where the user has a ``handlers`` module."""
    loaded = sys.modules.get("handlers")
    if loaded is None:
        spec = importlib.machinery.PathFinder.find_spec("handlers", [str(_INSTALLED_IN)])
        if spec is None or spec.loader is None:
            message = f"pyserve's handlers package is missing from {_INSTALLED_IN}"
            raise CliError(message, EXIT_TARGET)
        package = importlib.util.module_from_spec(spec)
        sys.modules["handlers"] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules["handlers"]
            raise
    elif not _is_ours(loaded):
        raise CliError(
            f"a module named 'handlers' that is not pyserve's is already imported "
            f"({getattr(loaded, '__file__', loaded)}): registry names are unavailable",
            EXIT_TARGET,
        )
    return importlib.import_module("handlers.registry")


def _is_ours(module: ModuleType) -> bool:
    locations = list(getattr(module, "__path__", []))
    return any(Path(location).resolve() == _INSTALLED_IN / "handlers" for location in locations)


def registry_names() -> list[str]:
    names: list[str] = ready_handlers().names()
    return names


# -- TARGET ------------------------------------------------------------------------------


def resolve_target(text: str) -> Target:
    """A registry name, ``module:Class``, ``module:Stream,Datagram`` or ``module:factory``."""
    if ":" not in text:
        names = registry_names()
        if text not in names:
            raise CliError(
                f"unknown target {text!r}: not a handler name ({', '.join(names)}) nor module:attr",
                EXIT_TARGET,
            )
        return Target(text, service=text)
    module_name, _, attributes = text.partition(":")
    module = import_target_module(module_name, text)
    found = [_attribute(module, module_name, name, text) for name in attributes.split(",")]
    if len(found) == 1 and not isinstance(found[0], type):
        return Target(text, factory=_factory(found[0], text))
    handlers: dict[str, type] = {}
    for value in found:
        if not isinstance(value, type):
            raise CliError(
                f"target {text!r}: {value!r} is not a handler class (with a comma, "
                "name a stream and a datagram handler class)",
                EXIT_TARGET,
            )
        for kind in _kinds(value, text):
            if kind in handlers and len(found) > 1:
                raise CliError(
                    f"target {text!r}: {handlers[kind].__name__} and {value.__name__} are "
                    f"both {_KIND_WORDS[kind]} handlers; name one stream and one datagram class",
                    EXIT_TARGET,
                )
            handlers.setdefault(kind, value)
    return Target(text, handlers=handlers)


def import_target_module(module_name: str, text: str) -> ModuleType:
    """Import the user's module from the current directory first, under the watchdog."""
    # Like `python -m`, look in the current directory first: `pyserve app:Handler`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    watchdog = threading.Timer(IMPORT_WATCHDOG_SECONDS, _still_importing, (module_name,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted while importing {module_name!r} for target {text!r} "
            "(does its top level run a server? see the note above)",
            EXIT_TARGET,
        ) from None
    except ImportError as exc:
        raise CliError(f"cannot import target {text!r}: {exc}", EXIT_TARGET) from exc
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        message = f"cannot import target {text!r}: {exc.msg} ({where})"
        raise CliError(message, EXIT_TARGET) from exc
    except Exception as exc:
        message = f"importing {module_name!r} for target {text!r} raised {_one_line(exc)}"
        raise CliError(message, EXIT_TARGET) from exc
    finally:
        watchdog.cancel()


def _still_importing(module_name: str) -> None:
    print(
        f"pyserve: importing {module_name!r} has not returned after "
        f"{IMPORT_WATCHDOG_SECONDS:g} s: if its top level starts a server "
        f"(serve_forever()), put that code under 'if __name__ == \"__main__\":' so the "
        "command can import it; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def _attribute(module: ModuleType, module_name: str, attribute: str, text: str) -> Any:
    found: Any = module
    try:
        for part in attribute.strip().split("."):
            found = getattr(found, part)
    except AttributeError:
        message = f"target {text!r}: {module_name} has no {attribute!r}"
        raise CliError(message, EXIT_TARGET) from None
    return found


def _kinds(value: Any, text: str) -> tuple[str, ...]:
    """The kinds of request a handler class serves (its bases say), checked."""
    if hasattr(value, "serve_forever"):
        raise CliError(
            f"target {text!r}: {value.__name__} is a server class: name its handler class, "
            "or a function that returns a server",
            EXIT_TARGET,
        )
    if not _accepts(value, 3):
        raise CliError(
            f"target {text!r}: {value.__name__} is not a request handler (it cannot be "
            "called with request, client_address, server)",
            EXIT_TARGET,
        )
    # By base-class name, so the stdlib's socketserver handlers count too.
    bases = {base.__name__ for base in value.__mro__}
    if "DatagramRequestHandler" in bases:
        return (DATAGRAM,)
    if bases & {"StreamRequestHandler", "ConnectionHandler"}:
        return (STREAM,)
    return (STREAM, DATAGRAM)  # a BaseRequestHandler reads self.request itself


def _factory(value: Any, text: str) -> Callable[[Any], Any]:
    if not callable(value):
        raise CliError(
            f"target {text!r} is a {type(value).__name__}, neither a handler class nor a "
            "function that returns a server",
            EXIT_TARGET,
        )
    if not _accepts(value, 1):
        raise CliError(
            f"target {text!r} cannot be called with the address: a factory takes the "
            "address to bind ((host, port) or a path) and returns a server",
            EXIT_TARGET,
        )
    factory: Callable[[Any], Any] = value
    return factory


def _accepts(value: Any, count: int) -> bool:
    """Whether ``value`` can be called with ``count`` positional arguments."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return True  # a builtin without a signature: let the call decide
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True
