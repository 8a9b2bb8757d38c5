"""PerServer: one object per server, made once, gone with the server."""

from __future__ import annotations

import gc
import threading
import weakref

from handlers._per_server import PerServer


class Server:
    pass


class SlottedServer:
    __slots__ = ()


def test_each_server_gets_its_own_object_and_keeps_it() -> None:
    kept: PerServer[list[int]] = PerServer(list)
    one, two = Server(), Server()
    assert kept.get(one) is kept.get(one)
    assert kept.get(one) is not kept.get(two)


def test_the_object_dies_with_its_server() -> None:
    kept: PerServer[Server] = PerServer(Server)
    server = Server()
    value = weakref.ref(kept.get(server))
    del server
    for _ in range(3):  # PyPy frees the key in one pass and the value in the next
        gc.collect()
    assert value() is None


def test_a_server_without_weak_references_shares_one_object() -> None:
    kept: PerServer[list[int]] = PerServer(list)
    one, two = SlottedServer(), SlottedServer()
    try:
        weakref.ref(one)
    except TypeError:  # CPython: __slots__ without __weakref__
        assert kept.get(one) is kept.get(two)
    else:  # PyPy refers weakly to every object: each server keeps its own
        assert kept.get(one) is not kept.get(two)


def test_a_maker_given_on_first_use_builds_the_object() -> None:
    kept: PerServer[list[int]] = PerServer(list)
    server = Server()
    assert kept.get(server, lambda: [7]) == [7]
    assert kept.get(server, lambda: [8]) == [7]  # made once


def test_connections_arriving_at_once_share_one_object() -> None:
    made: list[object] = []

    def slow_factory() -> object:
        made.append(object())
        return made[-1]

    kept: PerServer[object] = PerServer(slow_factory)
    server = Server()
    start = threading.Barrier(8, timeout=10)
    seen: list[object] = []

    def connection() -> None:
        start.wait()
        seen.append(kept.get(server))

    threads = [threading.Thread(target=connection) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(made) == 1
    assert seen == made * 8
