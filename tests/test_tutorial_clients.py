"""The ready handlers against the tutorials' own client code (docs' tutorials 000-004).

Each client below is the tutorial's code as written (only re-indented where the
page lost its line breaks, and adapted from Python 2 where it must run on Python 3;
every adaptation is named in a comment). It runs through :func:`run_client`,
which changes three things from the outside, never the code itself:

* the tutorial's address literal is replaced by the test server's address;
* the ``socket`` module it imports has a ``socket`` class with a 10 s timeout
  (every client socket in a test has one), and those sockets are closed
  afterwards, even if the code stops half-way;
* ``print`` and ``input`` are the test's: prints are collected, inputs scripted
  (when the script is exhausted the client's endless loop ends with ``_Done``).
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time
import types
from typing import Any, Callable, ClassVar, Optional

import pytest

from handlers import registry
from handlers.auth_classic import ClassicHMACAuthMixIn
from handlers.auth_classic import authenticate as classic_authenticate
from pyserve import StreamRequestHandler, ThreadingTCPServer
from pyserve.testing import serving

TIMEOUT = 10.0


def wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.005)


class _Done(Exception):
    """The scripted ``input()`` ran out: the client's endless loop ends here."""


def run_client(
    code: str,
    literal: str,
    address: Any,
    inputs: Optional[list[str]] = None,
) -> list[Any]:
    """Run tutorial client ``code`` against ``address``; return what it printed."""
    assert literal in code, f"the tutorial's address {literal} is not in the code"
    printed: list[Any] = []
    opened: list[socket.socket] = []
    script = list(inputs or [])

    class TimedSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.settimeout(TIMEOUT)
            opened.append(self)

    fake_socket = types.ModuleType("socket")
    fake_socket.__dict__.update(socket.__dict__)
    fake_socket.socket = TimedSocket  # type: ignore[misc]

    def scripted_input(prompt: str = "") -> str:
        if not script:
            raise _Done
        return script.pop(0)

    def collect(*values: Any, **_: Any) -> None:
        printed.append(values[0] if len(values) == 1 else values)

    # print and input as globals: they shadow the builtins on every interpreter
    # (PyPy ignores a __builtins__ mapping given to exec). The client's own
    # `import socket` finds the wrapped module in sys.modules for the duration;
    # code that imported socket before keeps its reference to the real one.
    namespace: dict[str, Any] = {
        "print": collect,
        "input": scripted_input,
        "ADDRESS": tuple(address[:2]),
    }
    real_socket = sys.modules["socket"]
    sys.modules["socket"] = fake_socket
    try:
        exec(code.replace(literal, "ADDRESS"), namespace)
    except _Done:
        pass
    finally:
        sys.modules["socket"] = real_socket
        for sock in opened:
            sock.close()
    assert opened, "the client's sockets did not come from the wrapped module"
    return printed


def service(name: str) -> Callable[[], ThreadingTCPServer]:
    return lambda: ThreadingTCPServer(("127.0.0.1", 0), registry.get(name, "tcp"))


# -- tutorial 000: the threaded server that welcomes each client ---------------------

TUTORIAL_000_CLIENT = """
# 导入socket库
import socket
# 建立TCP连接
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# 与服务器建立连接
s.connect(('127.0.0.1', 6666))
# 接受服务器的连接成功提示信息
print(s.recv(1024).decode('utf-8'))
# 发送数据并接受服务器返回结果
for data in [b'Tom', b'Jerry', b'Spike']:
    s.send(data)
    print(s.recv(1024).decode('utf-8'))
# 发送退出信息断开连接
s.send(b'exit')
s.close()
"""


def test_tutorial_000_client_is_welcomed_as_the_tutorial_shows() -> None:
    with serving(service("welcome")()) as server:
        printed = run_client(TUTORIAL_000_CLIENT, "('127.0.0.1', 6666)", server.server_address)
    # The tutorial server's own bytes: b'Success!' then 'Welcom! %s!' (its spelling).
    assert printed == ["Success!", "Welcom! Tom!", "Welcom! Jerry!", "Welcom! Spike!"]


def test_tutorial_000_exit_closes_the_connection() -> None:
    server = service("welcome")()
    # One line, not a parenthesised with: Python 3.9 cannot parse those.
    with serving(server), socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        assert sock.recv(1024) == b"Success!"
        sock.send(b"exit")
        assert sock.recv(1024) == b""  # closed, no reply: the tutorial's `break`


def test_welcome_still_answers_newline_terminated_lines_with_lines() -> None:
    server = service("welcome")()
    with serving(server), socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        assert sock.recv(1024) == b"Success!"
        sock.sendall(b"Ada\r\n")
        assert sock.recv(1024) == b"Welcom! Ada!\n"
        sock.sendall(b"exit\n")
        assert sock.recv(1024) == b""


# -- tutorial 001: the upper-casing server, its clients and the empty-message rule ------

TUTORIAL_001_FIRST_CLIENT = """
#客户端
import socket
phone=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
phone.connect(('127.0.0.9',8888))
phone.send("hello".encode("utf8"))#发送内容hello给服务端,由于服务端只接收字节,所以需要转换成字节发送给服务端
print('has send===========>')
data=phone.recv(1024)#收到服务端返回的信息
print('has recv===========>')
print(data)#
phone.close()
"""

TUTORIAL_001_LOOP_CLIENT = """
#客户端
import socket
phone=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
phone.connect(('127.0.0.9',8888))
# phone.send("hello".encode("utf8"))
while True: #通信循环
    msg=input('>>: ').strip()
    if not msg:continue#如果输入的信息为空的话,则继续输入
    phone.send(msg.encode('utf-8'))#发送内容给服务端,由于服务端只接收字节,所以需要转换成字节发送给服务端
    print('has send===========>')
    data=phone.recv(1024)#收到服务端返回的信息
    print('has recv===========>')
    print(data)#
phone.close()
"""

TUTORIAL_001_ADDRESS = "('127.0.0.9',8888)"


def test_tutorial_001_first_client_gets_hello_upper_cased() -> None:
    with serving(service("uppercase")()) as server:
        printed = run_client(TUTORIAL_001_FIRST_CLIENT, TUTORIAL_001_ADDRESS, server.server_address)
    assert printed == ["has send===========>", "has recv===========>", b"HELLO"]


def test_tutorial_001_loop_client_skips_empty_input_and_gets_each_reply() -> None:
    with serving(service("uppercase")()) as server:
        printed = run_client(
            TUTORIAL_001_LOOP_CLIENT, TUTORIAL_001_ADDRESS, server.server_address,
            inputs=["aaa", "", "  ", "bbb", "ccc"],
        )
    replies = [p for p in printed if isinstance(p, bytes)]
    assert replies == [b"AAA", b"BBB", b"CCC"]


def test_a_client_that_crashes_mid_session_does_not_stop_the_server() -> None:
    with serving(service("uppercase")()) as server:
        crashing = socket.create_connection(server.server_address, timeout=TIMEOUT)
        crashing.sendall(b"half")
        assert crashing.recv(1024) == b"HALF"
        # An abrupt end, as when the tutorial's client is killed: RST, not FIN.
        crashing.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        crashing.close()
        printed = run_client(
            TUTORIAL_001_LOOP_CLIENT, TUTORIAL_001_ADDRESS, server.server_address,
            inputs=["still here"],
        )
    assert b"STILL HERE" in printed


# -- tutorial 002: binary struct messages, in the machine's own byte order ----------------

# Tutorial 002 (after PyMOTW's socket_binary_client.py) packs its values with
# struct.Struct('I 2s f'): native byte order. Its page shows no framing code; a
# message-echo client frames each struct the same way, with a native 'I' length.
TUTORIAL_002_CLIENT = """
import binascii
import socket
import struct

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server_address = ('localhost', 10000)
sock.connect(server_address)

values = (1, b'ab', 2.7)
packer = struct.Struct('I 2s f')
packed_data = packer.pack(*values)

sock.sendall(struct.pack('I', len(packed_data)) + packed_data)
(length,) = struct.unpack('I', sock.recv(4))
data = sock.recv(length)
print(packer.unpack(data))
sock.close()
"""


def test_tutorial_002_struct_messages_echo_with_the_registered_message_echo() -> None:
    with serving(service("message-echo")()) as server:
        printed = run_client(TUTORIAL_002_CLIENT, "('localhost', 10000)", server.server_address)
    (number, text, real) = printed[0]
    assert (number, text) == (1, b"ab")
    assert real == pytest.approx(2.7, rel=1e-6)


# -- tutorial 004: the classic HMAC challenge-response ------------------------------------

# Python 3 adaptation: hmac.new() lost its default digest (MD5 in Python 2), so the
# call names it: hmac.new(key, msg) -> hmac.new(key, msg, 'md5'). The page's curly
# quotes are straight quotes here.
TUTORIAL_004_CLIENT = """
#client
import hmac
import socket
def auth(sk):
    msg = sk.recv(32)
    result = hmac.new(key, msg, 'md5')
    res = result.hexdigest()
    sk.send(res.encode('utf-8'))
key =b'wangwang'
sk = socket.socket()
sk.connect(('127.0.0.1', 8520))
auth(sk)
sk.send(b'upload') #正常的和server端进行通信
sk.close()
"""


class Recorder(StreamRequestHandler):
    """Keeps what the client sends after the handshake (the tutorial prints it)."""

    received: list[bytes]

    def handle(self) -> None:
        self.received.append(self.rfile.read())


class TutorialAuth(ClassicHMACAuthMixIn, Recorder):
    # What tutorial 004's client needs, each relaxed by name: its key and MD5.
    auth_key = b"wangwang"
    auth_digest = "md5"
    auth_min_key_size = 8
    received: ClassVar[list[bytes]] = []


def test_tutorial_004_client_authenticates_and_its_message_reaches_the_handler() -> None:
    TutorialAuth.received = []
    with serving(ThreadingTCPServer(("127.0.0.1", 0), TutorialAuth)) as server:
        run_client(TUTORIAL_004_CLIENT, "('127.0.0.1', 8520)", server.server_address)
        wait_until(lambda: TutorialAuth.received)
    assert TutorialAuth.received == [b"upload"]


def test_tutorial_004_client_with_the_wrong_key_never_reaches_the_handler(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    TutorialAuth.received = []
    wrong = TUTORIAL_004_CLIENT.replace("key =b'wangwang'", "key =b'wangwanG'")
    with serving(ThreadingTCPServer(("127.0.0.1", 0), TutorialAuth)) as server:
        run_client(wrong, "('127.0.0.1', 8520)", server.server_address)
        wait_until(lambda: any("wrong answer" in r.getMessage() for r in caplog.records))
    assert TutorialAuth.received == []


def test_the_tutorials_key_and_digest_are_refused_unless_relaxed_by_name() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes, not 8 bytes"):

        class Strict(ClassicHMACAuthMixIn, Recorder):
            auth_key = b"wangwang"

    with pytest.raises(ValueError, match="auth_digest 'md6'"):

        class Unknown(ClassicHMACAuthMixIn, Recorder):
            auth_digest = "md6"

    with pytest.raises(ValueError, match="auth_min_key_size 4 is below 8"):

        class Tiny(ClassicHMACAuthMixIn, Recorder):
            auth_min_key_size = 4


def test_classic_default_is_sha256_with_the_client_helper() -> None:
    class Strong(ClassicHMACAuthMixIn, Recorder):
        auth_key = b"a key of sixteen bytes or more"
        received: ClassVar[list[bytes]] = []

    server = ThreadingTCPServer(("127.0.0.1", 0), Strong)
    with serving(server), socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        classic_authenticate(sock, Strong.auth_key)
        sock.sendall(b"after")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
        wait_until(lambda: Strong.received)
    assert Strong.received == [b"after"]
