"""Explain mode: watch a request walk through the hooks, one line per hook call.

For learners. Turn it on for one server with a class attribute or, on a server
already built, by setting ``server.explain`` (from then on), or for every server of
a process with an environment variable::

    class MyServer(ThreadingTCPServer):
        explain = True          # lines go to the "pyserve.explain" logger (INFO)
        # explain = sys.stderr  # ... or to any text stream

    $ PYSERVE_EXPLAIN=1 python my_server.py        # the logger
    $ PYSERVE_EXPLAIN=stderr python my_server.py   # straight to stderr

With the logger and no logging configured anywhere (no handler on
``pyserve.explain``, ``pyserve`` or the root logger), the lines go to stderr, as
``logging.lastResort`` would do for a warning, so ``explain = True`` shows
something in a plain script. Once a handler exists they go only through it, so a
configured application never sees a line twice. If ``pyserve.explain`` has no
level of its own, turning explain mode on sets it to INFO.

Each line says which process and thread made the call, which request it belongs
to (``#1``, ``#2``, ... in the order they were accepted; ``-`` before there is
one), the hook (indented by how deep in the request it is), the class in the
method resolution order that provides it (so you see what a mix-in changed), and
what it did. One request through a ``TCPServer`` with a
``StreamRequestHandler`` subclass ``Echo``, real output (the ``finish_request``
line, longer than this page is wide, is left out; docs/internals shows every
strategy in full)::

    4242 MainThread      -   | serve_forever [ServeLoop] loop starts: select(listener, wake-up pair)
    4242 MainThread      -   |   _handle_request_noblock [BaseServer] listener readable
    4242 MainThread      #1  |     get_request [TCPServer] -> request from ('127.0.0.1', 44292)
    4242 MainThread      #1  |     verify_request [BaseServer] -> True
    4242 MainThread      #1  |     process_request [BaseServer] runs it here, synchronously
    4242 MainThread      #1  |         setup [StreamRequestHandler] makes rfile and wfile
    4242 MainThread      #1  |         handle [Echo] your code
    4242 MainThread      #1  |         finish [StreamRequestHandler] flushes and closes them
    4242 MainThread      #1  |       shutdown_request [TCPServer] SHUT_WR, then close
    4242 MainThread      #1  |         close_request [TCPServer] closes the socket
    4242 MainThread      -   |   service_actions [ServeLoop] end of a turn that handled a request
    4242 MainThread      -   | serve_forever [ServeLoop] -> returned

``service_actions()`` runs on every turn of the loop, also the idle ones that
``poll_interval`` paces; it is shown only on a turn in which the same thread
handled a request, so an idle server prints nothing. A pool whose workers accept
never shows it (the loop thread handles no request there). A forking server also
shows the loop reaping a child when the child's pidfd fires (``_child_exited``).

How it works (and why it costs nothing when off)
------------------------------------------------
``BaseServer.__init__`` checks ``self.explain`` and the environment variable once
(and ``server.explain = ...``, a property, installs the tracing when it is set);
when both are off nothing else happens, and requests run exactly the code they
would without this module. When on, :func:`install` wraps the server's hooks *on
the instance* (bound methods stored as instance attributes shadow the class's, and
the loop calls ``self._handle_request_noblock()`` and ``self.service_actions()``
through the instance too), and replaces the instance's ``RequestHandlerClass``
with a traced subclass of the user's handler. No class is ever modified: other
servers of the same classes are untouched. A thread-local depth gives the
indentation; a request thread or child process starts one level below the
``process_request`` that spawned it. The request number is kept by request object
from ``get_request`` until ``shutdown_request``/``close_request`` returns.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading

from pyserve.logs import INFO, NOTSET, DeferredLogger

__all__ = ["ENVIRONMENT_VARIABLE", "install", "requested"]

logger = DeferredLogger("pyserve.explain")

#: The environment variable that turns explain mode on for every server:
#: ``1`` (or any value but ``0``) logs to ``pyserve.explain``; ``stderr`` writes there.
ENVIRONMENT_VARIABLE = "PYSERVE_EXPLAIN"

# The hooks traced, in the order a request meets them. The loop's own steps come
# first: the path a learner reads in docs/internals starts at serve_forever().
LOOP_HOOKS = ("serve_forever", "handle_request", "_handle_request_noblock", "service_actions")
SERVER_HOOKS = (
    *LOOP_HOOKS,
    "_child_exited",  # ForkingMixIn: the loop saw a child's pidfd become readable
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Optional
# Hooks whose first argument is the request: their lines carry its number.
_REQUEST_FIRST = frozenset(SERVER_HOOKS) - frozenset(LOOP_HOOKS) - {"get_request", "_child_exited"}

_POOL_NOTE = "hands it to a worker or the queue"

# What a hook does, by (hook, providing class): what a learner needs to read.
_NOTES = {
    ("serve_forever", "ServeLoop"): (
        "loop starts: select(listener, wake-up pair)"
    ),
    ("serve_forever", "WorkersAccept"): (
        "loop starts; idle workers accept"
    ),
    ("handle_request", "BaseServer"): "waits for one request, at most timeout seconds",
    ("_handle_request_noblock", "BaseServer"): "listener readable",
    ("_handle_request_noblock", "ThreadPoolMixIn"): (
        "listener readable: accept while ready"
    ),
    ("service_actions", "ServeLoop"): "end of a turn that handled a request",
    ("service_actions", "ForkingMixIn"): (
        "end of the turn (reaps only without pidfds)"
    ),
    ("_child_exited", "ForkingMixIn"): "pidfd readable: reap the child",
    ("process_request", "BaseServer"): "runs it here, synchronously",
    ("process_request", "ThreadingMixIn"): "starts a thread for it",
    ("process_request", "ForkingMixIn"): "forks a child for it",
    ("process_request", "MultiplexingMixIn"): "hands it to the I/O thread",
    ("process_request", "ThreadPoolMixIn"): _POOL_NOTE,
    ("connection_made", "ConnectionHandler"): "nothing to prepare",
    ("eof_received", "ConnectionHandler"): "closes the connection",
    ("connection_lost", "ConnectionHandler"): "the connection is closed",
    ("process_request_thread", "ThreadingMixIn"): "in the new thread",
    ("process_request_thread", "ThreadPoolMixIn"): (
        "in the pool worker"
    ),
    ("shutdown_request", "TCPServer"): "SHUT_WR, then close",
    ("shutdown_request", "UDPServer"): "nothing to shut down",
    ("close_request", "TCPServer"): "closes the socket",
    ("close_request", "UDPServer"): "nothing to close",
    ("setup", "StreamRequestHandler"): "makes rfile and wfile",
    ("finish", "StreamRequestHandler"): "flushes and closes them",
    ("setup", "DatagramRequestHandler"): "makes rfile (the datagram) and wfile",
    ("finish", "DatagramRequestHandler"): "sends wfile as the reply",
}

# Wide enough for "pyserve-pool-123" and "MainThread": a cut name cannot tell two
# pool workers apart.
_THREAD_WIDTH = 15


def requested(server: Any) -> bool:
    """Whether explain mode is asked for: ``server.explain`` or the variable."""
    if getattr(server, "explain", False):
        return True
    return os.environ.get(ENVIRONMENT_VARIABLE, "0") not in ("", "0")


def install(server: Any, stream: Optional[IO[str]] = None) -> None:
    """Trace ``server``'s hooks from now on (works on stdlib servers too).

    Lines go to ``stream`` if given, else to ``server.explain`` if that is a
    stream, else to stderr if the variable says ``stderr``, else to the
    ``pyserve.explain`` logger at INFO (or to stderr while no logging handler is
    configured at all; see the module's description).
    """
    if stream is None:
        chosen = getattr(server, "explain", None)
        if hasattr(chosen, "write"):
            stream = chosen
        elif os.environ.get(ENVIRONMENT_VARIABLE) == "stderr":
            stream = sys.stderr
    if stream is None and logger.level == NOTSET:
        logger.setLevel(INFO)  # asked for these lines: do not drop them
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
        self._serials = itertools.count(1)  # next() is atomic: safe from any thread
        # id(request) -> (number, request); the request is kept so its id is not reused.
        self._numbers: dict[int, tuple[int, Any]] = {}

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

    # functools is imported where it is used: on 3.13 nothing else in `import
    # pyserve` loads it, and only explain mode needs it.
    def _handler_hook(
        self, name: str, handler_class: type, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        import functools  # noqa: PLC0415 - see above

        provider = _provider(handler_class, name)
        note = _NOTES.get((name, provider), "")
        if name in ("handle", "connection_made", "data_received") and not note:
            note = "your code"

        def hook(handler: Any, *args: Any) -> Any:
            number = self._number_of(getattr(handler, "request", None))
            call = functools.partial(original, handler, *args)
            return self._call(name, provider, call, note, number=number)

        return hook

    def _wrap(self, name: str, provider: str, bound: Callable[..., Any], server: Any) -> Any:
        import functools  # noqa: PLC0415 - see above

        def traced(*args: Any, **kwargs: Any) -> Any:
            call = functools.partial(bound, *args, **kwargs)
            if name == "get_request":
                return self._call(name, provider, call, None, result_note=self._accepted)
            if name == "verify_request":
                return self._call(name, provider, call, None, result_note=_verdict,
                                  number=self._number_of(args[0] if args else None))
            if name in LOOP_HOOKS:
                return self._loop_hook(name, provider, call)
            note = _NOTES.get((name, provider))
            if note is None:
                note = _generic_note(name, provider, server)
            if os.getpid() != self._pid and name == "finish_request":
                note = "child " + note
            elif name == "close_request" and os.getpid() == self._pid and _forks(server):
                note = "closes the parent's copy"
            elif (name, provider) == ("process_request", "ThreadPoolMixIn") and not (
                getattr(self._local, "serving", False)
            ):
                note = "runs it in this worker"
            request = args[0] if args and name in _REQUEST_FIRST else None
            try:
                return self._call(name, provider, call, note, number=self._number_of(request))
            finally:
                if name in ("shutdown_request", "close_request") and request is not None:
                    self._numbers.pop(id(request), None)  # this request is over here

        functools.update_wrapper(traced, bound)
        traced._explained = True  # type: ignore[attr-defined]  # install() twice: once
        return traced

    def _loop_hook(self, name: str, provider: str, call: Callable[[], Any]) -> Any:
        """serve_forever, handle_request, _handle_request_noblock, service_actions."""
        local = self._local
        note: Optional[str] = _NOTES.get((name, provider), f"(overridden in {provider})")
        if name == "service_actions":
            if not getattr(local, "handled", False):
                return call()  # an idle turn: not shown, or an idle server floods
            local.handled = False
        if name == "_handle_request_noblock":
            local.handled = True
            if provider == "ThreadPoolMixIn" and not getattr(local, "serving", False):
                note = "woken at the listener"
            local.depth = getattr(local, "depth", 0)  # a worker at the listener: top level
        if name in ("serve_forever", "handle_request"):
            was_serving = getattr(local, "serving", False)
            local.serving = True  # process_request here is the loop's: a hand-off
            local.depth = getattr(local, "depth", 0)
            try:
                return self._call(name, provider, call, note, result_note=_returned)
            finally:
                local.serving = was_serving
        return self._call(name, provider, call, note)

    def _accepted(self, result: Any) -> str:
        number = next(self._serials)
        self._numbers[id(result[0])] = (number, result[0])
        self._local.number = number  # the get_request line itself shows it
        return f"-> request from {result[1]!r}"

    def _number_of(self, request: Any) -> Optional[int]:
        if request is None:
            return None
        known = self._numbers.get(id(request))
        return known[0] if known is not None and known[1] is request else None

    def _call(
        self,
        name: str,
        provider: str,
        call: Callable[[], Any],
        note: Optional[str],
        *,
        result_note: Optional[Callable[[Any], str]] = None,
        number: Optional[int] = None,
    ) -> Any:
        depth: int = getattr(self._local, "depth", self._spawn_depth)
        if note is not None:
            self._emit(depth, name, provider, note, number)
        if name == "process_request":
            self._spawn_depth = depth + 1
        self._local.depth = depth + 1
        try:
            result = call()
        except BaseException as exc:
            self._emit(depth, name, provider, f"raised {exc!r}", number)
            raise
        finally:
            self._local.depth = depth
        if result_note is not None:
            text = result_note(result)
            if name == "get_request":
                number, self._local.number = self._local.number, None
            self._emit(depth, name, provider, text, number)
        return result

    def _emit(self, depth: int, hook: str, provider: str, note: str,
              number: Optional[int] = None) -> None:
        # "Thread-3 (_run_request_thread)" on 3.10+: the number is what tells apart.
        thread = threading.current_thread().name.split(" (")[0]
        tag = "-" if number is None else f"#{number}"
        line = (f"{os.getpid()} {thread:<{_THREAD_WIDTH}} {tag:<3} | "
                f"{'  ' * depth}{hook} [{provider}] {note}")
        if self.stream is None:
            if logger.hasHandlers():
                logger.info("%s", line)
                return
            stream: IO[str] = sys.stderr  # nothing configured: where lastResort writes
        else:
            stream = self.stream
        with self._write_lock:
            stream.write(line + "\n")
            stream.flush()  # a forked child must not leave lines in a buffer


def _returned(result: Any) -> str:
    return "-> returned"


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
