"""helpers.connection_guard on a bare uvicorn server (no model, no TensorFlow): over the cap the
oldest idle connection is closed, and a client that does not finish its headers in time is dropped."""
import socket
import threading
import time

import pytest
import uvicorn

from helpers.connection_guard import GuardedHttp
from helpers.model_server import free_port


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


HEADER_TIMEOUT_S = 1.0  # the test server's; the production default is 10 s (helpers.connection_guard)


@pytest.fixture(scope="module")
def port():
    protocol = type("GuardedHttp", (GuardedHttp,), {"header_timeout_s": HEADER_TIMEOUT_S, "max_connections": 3})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_level="error",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def closed_by_server(sock, wait_s=3):
    """True if the server closed `sock` (recv sees end of file or a reset) within `wait_s`."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        return True
    except socket.timeout:
        return False


def get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(100)


def test_over_the_cap_the_oldest_idle_connection_is_closed(port):
    socks = []
    first = time.monotonic()
    for _ in range(4):  # one over the cap of 3
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.05)  # accepted in this order
    try:
        assert closed_by_server(socks[0], wait_s=3)
        assert time.monotonic() - first < HEADER_TIMEOUT_S - 0.1  # by the cap, before the header timeout
        assert get(port).startswith(b"HTTP/1.1 200")  # a new client still gets in
    finally:
        for sock in socks:
            sock.close()


def test_headers_not_finished_in_time_are_dropped(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")  # and nothing more
        assert closed_by_server(slow, wait_s=5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as quick:
        quick.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert quick.recv(100).startswith(b"HTTP/1.1 200")  # a complete request is answered
        assert not closed_by_server(quick, wait_s=0.2)  # ... and kept alive, no header timer running
