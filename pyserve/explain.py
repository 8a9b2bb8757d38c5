"""Explain mode: watch a request walk through the hooks, one line per hook call.

For learners. Turn it on for one server with a class or instance attribute, or for
every server of a process with an environment variable::

    class MyServer(ThreadingTCPServer):
        explain = True          # lines go to the "pyserve.explain" logger (INFO)
        # explain = sys.stderr  # ... or to any text stream

    $ PYSERVE_EXPLAIN=1 python my_server.py        # logger (configure logging)
    $ PYSERVE_EXPLAIN=stderr python my_server.py   # straight to stderr

Each line says which process and thread made the call, the hook (indented by how
deep in the request it is), the class in the method resolution order that
provides it (so you see what a mix-in changed), and what it did. One request
through a ``ThreadingTCPServer`` (loop in the main thread) with a
``StreamRequestHandler`` subclass ``Echo``, real output::

    1954 MainThread | get_request [TCPServer] -> request from ('127.0.0.1', 44292)
    1954 MainThread | verify_request [BaseServer] -> True
    1954 MainThread | process_request [ThreadingMixIn] starts a thread for it
    1954 Thread-2   |   process_request_thread [ThreadingMixIn] in the new thread
    1954 Thread-2   |     finish_request [BaseServer] runs Echo(request, client_address, server)
    1954 Thread-2   |       setup [StreamRequestHandler] makes rfile and wfile
    1954 Thread-2   |       handle [Echo] your code
    1954 Thread-2   |       finish [StreamRequestHandler] flushes and closes them
    1954 Thread-2   |     shutdown_request [TCPServer] SHUT_WR, then close
    1954 Thread-2   |       close_request [TCPServer] closes the socket

The same through a ``ForkingTCPServer``: the handler's lines come from the
child's process id, and the parent closes its copy of the connection::

    2000 MainThread | get_request [TCPServer] -> request from ('127.0.0.1', 59834)
    2000 MainThread | verify_request [BaseServer] -> True
    2000 MainThread | process_request [ForkingMixIn] forks a child for it
    2000 MainThread |   close_request [TCPServer] closes the parent's copy
    2042 MainThread |   finish_request [BaseServer] child runs Echo(request, client_address, server)
    2042 MainThread |     setup [StreamRequestHandler] makes rfile and wfile
    2042 MainThread |     handle [Echo] your code
    2042 MainThread |     finish [StreamRequestHandler] flushes and closes them
    2042 MainThread |   shutdown_request [TCPServer] SHUT_WR, then close
    2042 MainThread |     close_request [TCPServer] closes the socket

With plain ``TCPServer`` every line comes from the loop's thread, and
``process_request`` is ``BaseServer``'s own: "runs it here, synchronously".

How it works (and why it costs nothing when off)
------------------------------------------------
``BaseServer.__init__`` checks ``self.explain`` and the environment variable once;
when both are off nothing else happens, and requests run exactly the code they
would without this module. When on, :func:`install` wraps the server's hooks *on
the instance* (bound methods stored as instance attributes shadow the class's),
and replaces the instance's ``RequestHandlerClass`` with a traced subclass of the
user's handler. No class is ever modified: other servers of the same classes are
untouched. A thread-local depth gives the indentation; a request thread or child
process starts one level below the ``process_request`` that spawned it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from typing import IO, Any, Callable, Optional

__all__ = ["ENVIRONMENT_VARIABLE", "install", "requested"]

logger = logging.getLogger("pyserve.explain")

#: The environment variable that turns explain mode on for every server:
#: ``1`` (or any value but ``0``) logs to ``pyserve.explain``; ``stderr`` writes there.
ENVIRONMENT_VARIABLE = "PYSERVE_EXPLAIN"

# The hooks traced, in the order a request meets them.
SERVER_HOOKS = (
    "get_request",
    "verify_request",
    "process_request",
    "process_request_thread",
    "finish_request",
    "shutdown_request",
    "close_request",
    "handle_error",
)
HANDLER_HOOKS = (
    "setup",
    "handle",
    "finish",
    # A multiplexing server's handler (pyserve.ConnectionHandler) is called instead.
    "connection_made",
    "data_received",
    "eof_received",
    "connection_lost",
)

# What a hook does, by (hook, providing class): what a learner needs to read.
_NOTES = {
    ("process_request", "BaseServer"): "runs it here, synchronously",
    ("process_request", "ThreadingMixIn"): "starts a thread for it",
    ("process_request", "ForkingMixIn"): "forks a child for it",
    ("process_request", "MultiplexingMixIn"): "hands it to the I/O thread",
    ("connection_made", "ConnectionHandler"): "nothing to prepare",
    ("eof_received", "ConnectionHandler"): "closes the connection",
    ("connection_lost", "ConnectionHandler"): "the connection is closed",
    ("process_request_thread", "ThreadingMixIn"): "in the new thread",
    ("shutdown_request", "TCPServer"): "SHUT_WR, then close",
    ("shutdown_request", "UDPServer"): "nothing to shut down",
    ("close_request", "TCPServer"): "closes the socket",
    ("close_request", "UDPServer"): "nothing to close",
    ("setup", "StreamRequestHandler"): "makes rfile and wfile",
    ("finish", "StreamRequestHandler"): "flushes and closes them",
    ("setup", "DatagramRequestHandler"): "makes rfile (the datagram) and wfile",
    ("finish", "DatagramRequestHandler"): "sends wfile as the reply",
}


def requested(server: Any) -> bool:
    """Whether explain mode is asked for: ``server.explain`` or the variable."""
    if getattr(server, "explain", False):
        return True
    return os.environ.get(ENVIRONMENT_VARIABLE, "0") not in ("", "0")


def install(server: Any, stream: Optional[IO[str]] = None) -> None:
    """Trace ``server``'s hooks from now on (works on stdlib servers too).

    Lines go to ``stream`` if given, else to ``server.explain`` if that is a
    stream, else to stderr if the variable says ``stderr``, else to the
    ``pyserve.explain`` logger at INFO.
    """
    if stream is None:
        chosen = getattr(server, "explain", None)
        if hasattr(chosen, "write"):
            stream = chosen
        elif os.environ.get(ENVIRONMENT_VARIABLE) == "stderr":
            stream = sys.stderr
    Explainer(stream).attach(server)


def _provider(cls: type, name: str) -> str:
    """The class in ``cls``'s MRO whose own ``__dict__`` defines ``name``."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__name__
    return cls.__name__


class Explainer:
    """Formats and writes the lines; wraps hooks so that they call it."""

    def __init__(self, stream: Optional[IO[str]]) -> None:
        self.stream = stream
        self._local = threading.local()
        self._spawn_depth = 0  # where a request's new thread or child starts
        self._write_lock = threading.Lock()
        self._pid = os.getpid()  # a forked child's lines say so

    def attach(self, server: Any) -> None:
        cls = type(server)
        for name in SERVER_HOOKS:
            bound = getattr(server, name, None)
            if callable(bound) and not getattr(bound, "_explained", False):
                setattr(server, name, self._wrap(name, _provider(cls, name), bound, server))
        handler_class = getattr(server, "RequestHandlerClass", None)
        if isinstance(handler_class, type) and not getattr(handler_class, "_explained", False):
            server.RequestHandlerClass = self._traced_handler_class(handler_class)

    def _traced_handler_class(self, handler_class: type) -> type:
        namespace: dict[str, Any] = {"__module__": handler_class.__module__, "_explained": True}
        for name in HANDLER_HOOKS:
            original = getattr(handler_class, name, None)
            if callable(original):
                namespace[name] = self._handler_hook(name, handler_class, original)
        traced = type(handler_class.__name__, (handler_class,), namespace)
        traced.__qualname__ = handler_class.__qualname__
        return traced

    def _handler_hook(
        self, name: str, handler_class: type, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        provider = _provider(handler_class, name)
        note = _NOTES.get((name, provider), "")
        if name in ("handle", "connection_made", "data_received") and not note:
            note = "your code"

        def hook(handler: Any, *args: Any) -> Any:
            return self._call(name, provider, functools.partial(original, handler, *args), note)

        return hook

    def _wrap(self, name: str, provider: str, bound: Callable[..., Any], server: Any) -> Any:
        def traced(*args: Any, **kwargs: Any) -> Any:
            if name == "get_request":
                return self._call(name, provider, bound, None, result_note=_accepted)
            if name == "verify_request":
                return self._call(name, provider, functools.partial(bound, *args, **kwargs),
                                  None, result_note=_verdict)
            note = _NOTES.get((name, provider))
            if note is None:
                note = _generic_note(name, provider, server)
            if os.getpid() != self._pid and name == "finish_request":
                note = "child " + note
            elif name == "close_request" and os.getpid() == self._pid and _forks(server):
                note = "closes the parent's copy"
            return self._call(name, provider, functools.partial(bound, *args, **kwargs), note)

        functools.update_wrapper(traced, bound)
        traced._explained = True  # type: ignore[attr-defined]  # install() twice: once
        return traced

    def _call(
        self,
        name: str,
        provider: str,
        call: Callable[[], Any],
        note: Optional[str],
        result_note: Optional[Callable[[Any], str]] = None,
    ) -> Any:
        depth: int = getattr(self._local, "depth", self._spawn_depth)
        if note is not None:
            self._emit(depth, name, provider, note)
        if name == "process_request":
            self._spawn_depth = depth + 1
        self._local.depth = depth + 1
        try:
            result = call()
        except BaseException as exc:
            self._emit(depth, name, provider, f"raised {exc!r}")
            raise
        finally:
            self._local.depth = depth
        if result_note is not None:
            self._emit(depth, name, provider, result_note(result))
        return result

    def _emit(self, depth: int, hook: str, provider: str, note: str) -> None:
        # "Thread-3 (_run_request_thread)" on 3.10+: the number is what tells apart.
        thread = threading.current_thread().name.split(" (")[0][:10]
        line = f"{os.getpid()} {thread:<10} | {'  ' * depth}{hook} [{provider}] {note}"
        if self.stream is None:
            logger.info("%s", line)
            return
        with self._write_lock:
            self.stream.write(line + "\n")
            self.stream.flush()  # a forked child must not leave lines in a buffer


def _accepted(result: Any) -> str:
    return f"-> request from {result[1]!r}"


def _verdict(result: Any) -> str:
    return "-> True" if result else "-> False: refused"


def _forks(server: Any) -> bool:
    return any(klass.__name__ == "ForkingMixIn" for klass in type(server).__mro__)


def _generic_note(name: str, provider: str, server: Any) -> str:
    if name == "finish_request":
        handler = getattr(server, "RequestHandlerClass", None)
        label = getattr(handler, "__name__", "the handler")
        return f"runs {label}(request, client_address, server)"
    if name == "handle_error":
        error = sys.exc_info()[1]
        return f"reports {error!r}" if error is not None else "reports an error"
    return f"(overridden in {provider})" if provider not in ("BaseServer",) else ""
