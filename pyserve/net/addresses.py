"""What a server address means: which address family it asks for, and what kind of
Unix address it is.

Theory of operation
-------------------
The stdlib creates every ``TCPServer`` socket as AF_INET, so ``("::1", 8000)``
fails with a resolver error and IPv6 needs a subclass. pyserve reads the family
from the address instead, unless the server class chose one:

* a 4-tuple ``(host, port, flowinfo, scope_id)`` or an IPv6 literal (``"::1"``,
  ``"fe80::1%eth0"``): AF_INET6;
* ``""`` and ``"<broadcast>"`` keep their stdlib meaning (IPv4 any/broadcast);
* a hostname: AF_INET whenever it has an IPv4 address, since that is what the
  stdlib binds (``("localhost", 80)`` behaves exactly as before), AF_INET6 when it
  has only IPv6 ones;
* anything else (a Unix path): the class's family.

A class *chose* its family when ``address_family`` is set anywhere in its MRO
below pyserve's transport classes: a user's ``address_family = socket.AF_INET6``,
or ``AF_UNIX`` on the Unix servers, always wins.

``dualstack_ipv6`` serves IPv4 and IPv6 on one AF_INET6 socket: ``""`` then means
``"::"``, and an IPv4 address is a mistake reported with ``ValueError``.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Union

__all__ = ["Address", "family_for_address", "is_filesystem_path"]

#: What a server may be bound to: (host, port), (host, port, flowinfo, scope_id), or
#: a Unix path (str or bytes; a leading NUL byte means Linux's abstract namespace).
if TYPE_CHECKING:
    Address = Union[tuple[str, int], tuple[str, int, int, int], str, bytes]
else:  # for type checkers only: at run time its spelling (typing is not imported)
    Address = "Union[tuple[str, int], tuple[str, int, int, int], str, bytes]"


def _family_of_host(host: object) -> int:
    if not isinstance(host, str) or host in ("", "<broadcast>"):
        return socket.AF_INET  # the stdlib's spellings of INADDR_ANY / BROADCAST
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    else:
        return socket.AF_INET  # the common case: no resolver call at all
    try:
        found = {info[0] for info in socket.getaddrinfo(host, None, flags=socket.AI_PASSIVE)}
    except socket.gaierror:
        return socket.AF_INET  # let bind() report it, as the stdlib does
    if socket.AF_INET not in found and socket.AF_INET6 in found:
        return socket.AF_INET6
    return socket.AF_INET


def family_for_address(
    address: Any, class_family: int, family_chosen: bool, dualstack_ipv6: bool
) -> int:
    """The family of the socket to create for ``address`` (see the module docstring)."""
    family = class_family
    if not family_chosen and isinstance(address, tuple) and address:
        if len(address) == 4 or (dualstack_ipv6 and address[0] == ""):
            family = socket.AF_INET6  # (host, port, flowinfo, scope_id), or "" as "::"
        else:
            family = _family_of_host(address[0])
    if dualstack_ipv6 and (family != socket.AF_INET6 or not socket.has_dualstack_ipv6()):
        raise ValueError(
            f"dualstack_ipv6 needs an IPv6 address such as ('::', port) on a system "
            f"with dual-stack support, not {address!r}"
        )
    return family


def is_filesystem_path(address: Any) -> bool:
    """True for a Unix path on the filesystem (not abstract, not a tuple)."""
    if isinstance(address, str):
        return bool(address) and not address.startswith("\0")
    if isinstance(address, bytes):
        return bool(address) and not address.startswith(b"\0")
    return False
