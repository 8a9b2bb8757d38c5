"""RESP commands about the connection and the server, not the data.

PING, ECHO, QUIT, SELECT (database 0 only), HELLO (protocol 2 only: ``HELLO 3``
gets Redis's ``-NOPROTO``), CLIENT (SETNAME, GETNAME, ID, SETINFO, INFO), COMMAND
(COUNT, DOCS, INFO, and the list: enough for clients that look before they
talk), CONFIG GET (a few read-only settings, so redis-benchmark can print them)
and INFO. Each function follows the contract of :mod:`handlers.resp.session`.
"""

from __future__ import annotations

import os
import time

from handlers.resp.encoding import (
    EMPTY_ARRAY,
    OK,
    PONG,
    encode_array,
    encode_bulk,
    encode_error,
    encode_integer,
    encode_simple,
)
from handlers.resp.glob import compile_glob
from handlers.resp.session import (
    REDIS_VERSION,
    SYNTAX_ERROR,
    TRANSACTION_CONTROL,
    CommandTable,
    ReplyError,
    Session,
    integer_argument,
    text,
    wrong_arity,
)

__all__ = ["CONNECTION_COMMANDS"]


def ping(session: Session, args: list[bytes]) -> bytes:
    if len(args) > 2:
        return wrong_arity(args[0])
    return PONG if len(args) == 1 else encode_bulk(args[1])


def echo(session: Session, args: list[bytes]) -> bytes:
    return encode_bulk(args[1])


def quit_(session: Session, args: list[bytes]) -> bytes:
    session.closing = True
    return OK


def select(session: Session, args: list[bytes]) -> bytes:
    index = integer_argument(args[1])
    if index != 0:  # one database: Redis Cluster's rule, and clients cope with it
        return b"-ERR DB index is out of range\r\n"
    return OK


def hello(session: Session, args: list[bytes]) -> bytes:
    rest = args[1:]
    if rest:
        try:
            version = int(rest[0])
        except ValueError:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if version != 2:
            return b"-NOPROTO sorry, this protocol version is not supported\r\n"
        rest = rest[1:]
    while rest:
        option = rest[0].lower()
        if option == b"setname" and len(rest) >= 2:
            _set_client_name(session, rest[1])
            rest = rest[2:]
        elif option == b"auth" and len(rest) >= 3:
            return b"-ERR AUTH is not supported by this server\r\n"
        else:
            return SYNTAX_ERROR
    fields = [
        (b"server", encode_bulk(b"redis")),
        (b"version", encode_bulk(REDIS_VERSION.encode())),
        (b"proto", encode_integer(2)),
        (b"id", encode_integer(session.client_id)),
        (b"mode", encode_bulk(b"standalone")),
        (b"role", encode_bulk(b"master")),
        (b"modules", EMPTY_ARRAY),
    ]
    return encode_array([part for key, value in fields for part in (encode_bulk(key), value)])


def _set_client_name(session: Session, name: bytes) -> None:
    if any(byte <= 32 or byte > 126 for byte in name):
        raise ReplyError(
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        )
    session.name = name


def client(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    if sub == b"setname" and len(args) == 3:
        _set_client_name(session, args[2])
        return OK
    if sub == b"getname" and len(args) == 2:
        return encode_bulk(session.name or None)
    if sub == b"id" and len(args) == 2:
        return encode_integer(session.client_id)
    if sub == b"setinfo" and len(args) == 4:
        return OK  # library name and version: accepted, not kept
    if sub == b"info" and len(args) == 2:
        return encode_bulk(b"id=%d addr=%s name=%s db=0\n" % (
            session.client_id, str(session.address).encode(), session.name))
    return encode_error(
        f"ERR unknown subcommand or wrong number of arguments for '{text(args[1])[:64]}'."
        " Try CLIENT HELP."
    )


def command(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower() if len(args) > 1 else b""
    canonical = [name for name in session.commands if name.islower()]
    if sub == b"count":
        return encode_integer(len(canonical))
    if sub == b"docs":
        return EMPTY_ARRAY  # no documentation: clients only use it for hints
    if sub == b"info":
        names = args[2:] or canonical
        return encode_array([_command_info(session, name.lower()) for name in names])
    if sub == b"":
        return encode_array([_command_info(session, name) for name in canonical])
    return encode_error(f"ERR unknown subcommand '{text(args[1])[:64]}'. Try COMMAND HELP.")


def _command_info(session: Session, name: bytes) -> bytes:
    entry = session.commands.get(name)
    if entry is None:
        return b"*-1\r\n"
    write = name in _WRITE_COMMANDS
    first, last, step = _KEY_POSITIONS.get(name, (0, 0, 0))
    flags = [encode_simple(b"write" if write else b"readonly")]
    return encode_array([
        encode_bulk(name), encode_integer(entry[1]) if entry[1] >= 0
        else b":%d\r\n" % entry[1], encode_array(flags), b":%d\r\n" % first,
        b":%d\r\n" % last, b":%d\r\n" % step,
    ])


def config(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    if sub == b"get" and len(args) >= 3:
        settings = {
            b"maxmemory": b"%d" % session.store.max_memory,
            b"save": b"",
            b"appendonly": b"no",
            b"databases": b"1",
        }
        found: list[bytes] = []
        for pattern in args[2:]:
            match = compile_glob(pattern.lower())
            for key, value in settings.items():
                if match(key):
                    found += [encode_bulk(key), encode_bulk(value)]
        return encode_array(found)
    if sub == b"resetstat" and len(args) == 2:
        session.state.commands_processed = 0
        return OK
    return encode_error(f"ERR unknown subcommand '{text(args[1])[:64]}'. Try CONFIG HELP.")


def info(session: Session, args: list[bytes]) -> bytes:
    state = session.state
    store = state.store
    store.expire_due()
    sections = {
        "server": [f"redis_version:{REDIS_VERSION}", "redis_mode:standalone",
                   "server_name:pyserve", f"process_id:{os.getpid()}",
                   f"uptime_in_seconds:{int(time.monotonic() - state.started)}"],
        "clients": [f"connected_clients:{state.connected_clients}"],
        "memory": [f"used_memory:{store.used_memory}", f"maxmemory:{store.max_memory}",
                   "maxmemory_policy:noeviction"],
        "stats": [f"total_commands_processed:{state.commands_processed}"],
        "keyspace": [f"db0:keys={len(store.data)},expires={len(store.expires)},avg_ttl=0"]
        if store.data else [],
    }
    wanted = {text(arg).lower() for arg in args[1:]} - {"all", "everything", "default"}
    lines: list[str] = []
    for title, body in sections.items():
        if not wanted or title in wanted:
            lines += [f"# {title.capitalize()}", *body, ""]
    return encode_bulk("\r\n".join(lines).encode())


#: Name (lower case) -> (function, arity).
CONNECTION_COMMANDS: CommandTable = {
    b"ping": (ping, -1), b"echo": (echo, 2), b"quit": (quit_, -1), b"select": (select, 2),
    b"hello": (hello, -1), b"client": (client, -2), b"command": (command, -1),
    b"config": (config, -2), b"info": (info, -1),
}

# What COMMAND reports about the data commands: write or read-only, key positions.
_WRITE_COMMANDS = frozenset(
    b"set mset del unlink incr decr incrby decrby expire pexpire persist flushdb flushall"
    b" lpush rpush lpop rpop lset ltrim sadd srem spop hset hmset hsetnx hdel hincrby"
    b" zadd zincrby zrem zpopmin zpopmax".split()
)
_KEY_POSITIONS = {
    b"get": (1, 1, 1), b"set": (1, 1, 1), b"mget": (1, -1, 1), b"mset": (1, -1, 2),
    b"del": (1, -1, 1), b"unlink": (1, -1, 1), b"exists": (1, -1, 1), b"type": (1, 1, 1),
    b"incr": (1, 1, 1), b"decr": (1, 1, 1), b"incrby": (1, 1, 1), b"decrby": (1, 1, 1),
    b"expire": (1, 1, 1), b"pexpire": (1, 1, 1), b"ttl": (1, 1, 1), b"pttl": (1, 1, 1),
    b"persist": (1, 1, 1),
}
TRANSACTION_CONTROL.add(quit_)  # QUIT inside MULTI ends the connection at once
