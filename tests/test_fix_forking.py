"""Issue 2, fix 5: ForkingMixIn closes the listener in children, reaps, and
respects ``max_children`` without blocking its loop.

Every scenario forks, so each runs in a subprocess of its own (no child or zombie
can outlive it: conftest kills the process group). Where pidfds are missing (pypy3)
pyserve reaps on each loop turn, so the scenarios use a short ``poll_interval``,
except the one that proves reaping does not wait for the loop to turn.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

# Shared by the scenarios: a handler that says "started" and then holds its
# connection until the client closes it, and helpers to watch children.
#
# The clients live in the server's process, so each child inherits their ends of
# the connections; a child closes those copies first (a real client lives in
# another process), or no client could ever make its handler see end-of-file.
FORKING_PRELUDE = """
CLIENTS = []

def connect(server):
    client = socket.socket()
    client.settimeout(TIMEOUT)
    CLIENTS.append(client)  # before connect(): the server may fork at once
    client.connect(server.server_address)
    return client

class Hold(socketserver.BaseRequestHandler):
    def handle(self):
        for client in CLIENTS:
            client.close()
        self.request.recv(16)
        self.request.sendall(b"started %d" % os.getpid())
        while self.request.recv(16):
            pass

def busy_client(server):
    client = connect(server)
    client.sendall(b"hold")
    reply = client.recv(64)
    assert reply.startswith(b"started"), reply
    return client, int(reply.split()[1])

def is_zombie_or_running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return True  # still there (running, or a zombie nobody reaped)
    except FileNotFoundError:
        return False

def wait_for(predicate, deadline=TIMEOUT):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()

def serve_in_thread(server, poll_interval=0.05):
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    return thread
"""


@pytest.mark.stdlib_defect("children keep the listener open: a closed server still accepts")
def test_closed_forking_server_refuses_new_connections_while_a_child_runs(impl, run_scenario):
    result = run_scenario(
        impl,
        setup=FORKING_PRELUDE,
        body="""
        class Server(socketserver.ForkingTCPServer):
            block_on_close = False  # close while the child still runs

        server = Server(("127.0.0.1", 0), Hold)
        thread = serve_in_thread(server)
        client, child = busy_client(server)
        server.shutdown()
        server.server_close()
        try:
            late = connect(server)
        except ConnectionRefusedError:
            outcome = "refused"
        else:
            outcome = "accepted by a child's copy of the listener"
            late.close()
        client.close()
        os.waitpid(child, 0)
        report(outcome=outcome)
        """,
    )
    assert result.check()["outcome"] == "refused"


def test_finished_children_are_reaped(impl, run_scenario):
    result = run_scenario(
        impl,
        setup=FORKING_PRELUDE,
        body="""
        server = socketserver.ForkingTCPServer(("127.0.0.1", 0), Hold)
        thread = serve_in_thread(server)
        children = []
        for _ in range(3):
            client, child = busy_client(server)
            children.append(child)
            client.close()  # the child's handler ends, the child exits
        reaped = wait_for(lambda: not any(is_zombie_or_running(pid) for pid in children))
        emptied = wait_for(lambda: not server.active_children)
        server.shutdown()
        server.server_close()
        report(reaped=reaped, emptied=emptied)
        """,
    )
    values = result.check()
    assert values["reaped"], "a finished child is still a zombie"
    assert values["emptied"], "active_children still lists finished children"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="without pidfds reaping is per turn")
@pytest.mark.stdlib_defect("a finished child stays a zombie until the loop turns (poll_interval)")
def test_child_is_reaped_when_it_exits_not_when_the_loop_turns(impl, run_scenario):
    result = run_scenario(
        impl,
        setup=FORKING_PRELUDE,
        body="""
        server = socketserver.ForkingTCPServer(("127.0.0.1", 0), Hold)
        thread = serve_in_thread(server, poll_interval=30)
        client, child = busy_client(server)
        client.close()
        reaped = wait_for(lambda: not is_zombie_or_running(child), deadline=5.0)
        report(reaped=reaped)
        if not reaped:
            os._exit(0)  # the stdlib's shutdown() would wait out the 30 s poll
        finishes(server.shutdown)
        server.server_close()
        """,
    )
    assert result.check()["reaped"], "the child stayed a zombie for 5 s"


@pytest.mark.stdlib_defect("max_children reached: the loop blocks in waitpid(), shutdown() hangs")
def test_max_children_keeps_extra_clients_in_backlog_and_shutdown_prompt(impl, run_scenario):
    result = run_scenario(
        impl,
        setup=FORKING_PRELUDE,
        body="""
        class Server(socketserver.ForkingTCPServer):
            max_children = 2

        def accept_queue_length(port):
            # Linux: a listening socket's rx_queue in /proc/net/tcp is its backlog.
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(":%04X" % port) and fields[3] == "0A":
                        return int(fields[4].split(":")[1], 16)
            return None

        server = Server(("127.0.0.1", 0), Hold)
        thread = serve_in_thread(server)
        clients = [busy_client(server)[0] for _ in range(2)]
        third = connect(server)
        third.sendall(b"hold")
        queued = wait_for(lambda: accept_queue_length(server.server_address[1]) == 1, 5.0)
        shutdown_took = finishes(server.shutdown)
        for client in clients + [third]:
            client.close()
        server.server_close()  # block_on_close: waits for the two children
        report(queued=queued, shutdown_took=shutdown_took,
               children_left=len(server.active_children or ()))
        """,
    )
    values = result.check()
    assert values["queued"], "the third connection should wait in the kernel's backlog"
    assert values["shutdown_took"] < 5.0
    assert values["children_left"] == 0


def test_max_children_serves_the_waiting_client_once_a_child_exits(impl, run_scenario):
    result = run_scenario(
        impl,
        setup=FORKING_PRELUDE,
        body="""
        class Server(socketserver.ForkingTCPServer):
            max_children = 2

        server = Server(("127.0.0.1", 0), Hold)
        thread = serve_in_thread(server)
        first, _ = busy_client(server)
        second, _ = busy_client(server)
        third = connect(server)
        third.sendall(b"hold")
        first.close()  # a slot frees up
        reply = third.recv(64)
        for client in (second, third):
            client.close()
        server.shutdown()
        server.server_close()
        report(third=reply.decode().split()[0])
        """,
    )
    assert result.check()["third"] == "started"
