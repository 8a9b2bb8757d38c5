"""What pyserve's core needs from :mod:`typing` at run time, without importing it.

Theory of operation
-------------------
``import pyserve`` should cost about what ``import socketserver`` costs
(bench/import_time.py). :mod:`typing` alone (with :mod:`re`, which it imports on
some versions) adds several milliseconds to every process that imports pyserve,
although the type checker is the only reader of nearly every typing name.

So the core modules import typing names under ``if TYPE_CHECKING:`` (a module
constant ``TYPE_CHECKING = False``, which mypy treats as true) and, for the few
names that do something at run time, take the stand-ins below in the ``else:``
branch. The type checker sees the real :mod:`typing` objects; the interpreter
sees these:

- :func:`NamedTuple`: ``class Stats(NamedTuple): active: int = 0`` makes the
  same kind of class typing's does: a :func:`collections.namedtuple` with the
  annotated fields (in order, with their defaults), ``__annotations__``, and the
  class body's docstring and methods.
- :class:`Generic` and :class:`TypeVar`: ``class H(Generic[T])`` makes ``H``
  subscriptable (``H[MyServer]`` is a :class:`types.GenericAlias`, and a class
  may inherit from it), which is all the run time does with the parameter.

Code that needs more of typing (``get_type_hints``, a ``Protocol`` at run time)
imports typing itself and pays for it then.
"""

from __future__ import annotations

import collections
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Generic", "NamedTuple", "TypeVar"]


class TypeVar:
    """A type parameter's name at run time (the checker sees ``typing.TypeVar``)."""

    def __init__(self, name: str, *constraints: object, **options: object) -> None:
        self.__name__ = name
        # Where it was defined, as typing records it (documentation tools read it).
        self.__module__ = sys._getframe(1).f_globals.get("__name__", "")

    def __repr__(self) -> str:
        return f"~{self.__name__}"


class Generic:
    """A base that makes its subclasses subscriptable: ``Handler[Server]``."""

    __slots__ = ()

    # Generic[T] and Handler[Server] alike: an alias whose origin is the class, so
    # `class H(Handler[Server])` inherits from Handler itself.
    __class_getitem__: Any = classmethod(types.GenericAlias)


_NOT_COPIED = ("__annotations__", "__module__", "__qualname__", "__orig_bases__")


class _NamedTupleMeta(type):
    """Turns ``class X(NamedTuple)`` bodies into namedtuple classes."""

    def __new__(
        cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]
    ) -> Any:
        if bases == ():  # _NamedTupleBase itself
            return super().__new__(cls, name, bases, namespace)
        annotations: dict[str, Any] = namespace.get("__annotations__", {})
        fields = list(annotations)
        defaulted = [field in namespace for field in fields]
        if defaulted != sorted(defaulted):  # False before True: defaults come last
            raise TypeError(f"{name}: a field without a default follows one with a default")
        defaults = [namespace[field] for field in fields if field in namespace]
        module = namespace.get("__module__")
        # mypy checks only literal arguments of namedtuple(); these are computed.
        record = collections.namedtuple(name, fields, defaults=defaults, module=module)  # type: ignore[misc]
        record.__annotations__ = dict(annotations)
        for key, value in namespace.items():
            # __orig_bases__ would name this stand-in: typing's records have none (3.11).
            if key in fields or key in _NOT_COPIED:
                continue
            setattr(record, key, value)  # the docstring, methods, properties
        record.__qualname__ = namespace.get("__qualname__", name)
        return record


class _NamedTupleBase(metaclass=_NamedTupleMeta):
    pass


def NamedTuple(typename: str, fields: object = None) -> type:  # noqa: N802 - typing's name
    """Only the class syntax is supported at run time: ``class X(NamedTuple): ...``."""
    raise TypeError("use the class syntax: class X(NamedTuple): field: type")


def _mro_entries(bases: tuple[object, ...]) -> tuple[type, ...]:
    return (_NamedTupleBase,)


NamedTuple.__mro_entries__ = _mro_entries  # type: ignore[attr-defined]
