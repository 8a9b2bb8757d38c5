"""Issue 2, fixes 1 and 2: ``shutdown()`` is prompt and never hangs.

Each scenario where the stdlib waits out ``poll_interval`` or deadlocks runs in a
subprocess with a deadline (see ``run_scenario`` in conftest.py): the stdlib's
hang is reported as a failure and killed, never left in the pytest process.
``poll_interval=30`` makes the stdlib's wait unmistakable, while pyserve must
return well inside a generous 5 s on a loaded machine.
"""

from __future__ import annotations

import threading

import pytest
from conftest import TIMEOUT

# -------------------------------------------------------------- fix 1: promptness


@pytest.mark.stdlib_defect("shutdown() waits out poll_interval (here 30 s)")
def test_shutdown_returns_promptly_despite_long_poll_interval(impl, run_scenario):
    result = run_scenario(
        impl,
        """
        loop_thread = {}
        turned = threading.Event()

        class Server(socketserver.TCPServer):
            def service_actions(self):
                loop_thread["id"] = threading.get_native_id()
                turned.set()

        class Echo(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.sendall(self.request.recv(16))

        server = Server(("127.0.0.1", 0), Echo)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 30})
        thread.start()
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            client.sendall(b"x")
            assert client.recv(16) == b"x"
        # One request handled and service_actions() run: the loop is waiting again.
        assert turned.wait(TIMEOUT)
        wait_until_polling(loop_thread["id"])
        elapsed = finishes(server.shutdown)
        thread.join(TIMEOUT)
        server.server_close()
        report(elapsed=elapsed, joined=not thread.is_alive())
        """,
    )
    values = result.check()
    assert values["joined"]
    assert values["elapsed"] < 5.0


def test_poll_interval_still_paces_service_actions(impl, running):
    turns = 0
    three_turns = threading.Event()

    class Server(impl.TCPServer):
        def service_actions(self) -> None:
            nonlocal turns
            turns += 1
            if turns >= 3:
                three_turns.set()

    with running(Server(("127.0.0.1", 0), impl.BaseRequestHandler), poll_interval=0.02):
        # No request arrives: only poll_interval can make the loop turn.
        assert three_turns.wait(TIMEOUT)


# -------------------------------------------------------------- fix 2: never hangs


@pytest.mark.stdlib_defect("shutdown() from a synchronous server's handler deadlocks")
def test_shutdown_from_synchronous_handler_stops_after_that_request(impl, run_scenario):
    result = run_scenario(
        impl,
        """
        handled = []

        class Stopper(socketserver.BaseRequestHandler):
            def handle(self):
                data = self.request.recv(16)
                handled.append(data.decode())
                if data == b"stop":
                    self.server.shutdown()
                self.request.sendall(b"ok")

        server = socketserver.TCPServer(("127.0.0.1", 0), Stopper)
        replies = []

        def clients():
            for message in (b"stop", b"after"):
                with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
                    c.sendall(message)
                    try:
                        replies.append(c.recv(16).decode())
                    except OSError as exc:
                        replies.append(type(exc).__name__)

        client_thread = threading.Thread(target=clients, daemon=True)
        client_thread.start()
        finishes(lambda: server.serve_forever(poll_interval=30))
        server.server_close()
        client_thread.join(TIMEOUT)
        report(handled=handled, first_reply=replies[0])
        """,
    )
    values = result.check()
    assert values["first_reply"] == "ok"
    assert values["handled"] == ["stop"]  # the loop exited after that request


@pytest.mark.stdlib_defect("shutdown() from service_actions() deadlocks")
def test_shutdown_from_service_actions_stops_the_loop(impl, run_scenario):
    result = run_scenario(
        impl,
        """
        calls = []

        class Server(socketserver.TCPServer):
            def service_actions(self):
                calls.append(1)
                self.shutdown()

        server = Server(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        finishes(lambda: server.serve_forever(poll_interval=0.01))
        server.server_close()
        report(service_actions_calls=len(calls))
        """,
    )
    assert result.check()["service_actions_calls"] == 1


@pytest.mark.stdlib_defect("shutdown() in a forked child hangs the child; the parent serves on")
def test_shutdown_from_forked_child_stops_the_parent_loop(impl, run_scenario):
    if not hasattr(impl, "ForkingTCPServer"):
        pytest.skip("no fork() on this platform")
    result = run_scenario(
        impl,
        """
        class StopFromChild(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.recv(16)
                self.server.shutdown()
                self.request.sendall(str(os.getpid()).encode())

        server = socketserver.ForkingTCPServer(("127.0.0.1", 0), StopFromChild)
        replies = []

        def client():
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
                c.sendall(b"stop")
                replies.append(c.recv(16).decode())

        client_thread = threading.Thread(target=client, daemon=True)
        client_thread.start()
        finishes(lambda: server.serve_forever(poll_interval=0.05))  # once the child asked
        client_thread.join(TIMEOUT)
        server.server_close()  # block_on_close: reaps the child
        report(child_pid=int(replies[0]), parent_pid=os.getpid(),
               children_left=len(server.active_children or ()))
        """,
    )
    values = result.check()
    assert values["child_pid"] != values["parent_pid"]
    assert values["children_left"] == 0


@pytest.mark.stdlib_defect("shutdown() before serve_forever() waits forever")
def test_shutdown_before_serve_forever_returns_and_serve_forever_returns_at_once(
    impl, run_scenario
):
    result = run_scenario(
        impl,
        """
        server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        shutdown_took = finishes(server.shutdown)
        serve_took = finishes(lambda: server.serve_forever(poll_interval=30))
        server.server_close()
        report(shutdown_took=shutdown_took, serve_took=serve_took)
        """,
    )
    values = result.check()
    assert values["shutdown_took"] < 5.0
    assert values["serve_took"] < 5.0

