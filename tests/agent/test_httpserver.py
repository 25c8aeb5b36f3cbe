"""The local API's HTTP/1.1 server on real sockets: keep-alive, JSON errors for every malformed request, body
limits, HEAD, concurrency across connections, the connection bound, the idle timeout, stop, a unix socket."""

from __future__ import annotations

import http.client
import json
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import httpserver
from agent.api import build_app
from agent.httpserver import LocalApiServer, bind_tcp_socket, bind_unix_socket
from agent.metrics import AgentMetrics
from agent.serving import ServingRegistry
from tests.agent.harness import wait_for
from tests.agent.ports import listen_port

Views = dict[str, Callable[[], Any]]


@pytest.fixture
def views() -> Views:
    """What the API's health and models views return; a test swaps them."""
    return {"health": lambda: {"status": "ok"}, "models": lambda: [{"name": "demo", "state": "committed"}]}


def start(views: Views, **options: Any) -> tuple[LocalApiServer, int]:
    app = build_app(ServingRegistry(), AgentMetrics(), lambda: views["models"](), lambda: views["health"]())
    port = listen_port()
    server = LocalApiServer(app, bind_tcp_socket("127.0.0.1", port), **options)
    server.start()
    return server, port


@pytest.fixture
def served(views: Views) -> Iterator[int]:
    server, port = start(views)
    yield port
    server.stop()


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send bytes as they are; the status, headers, body and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        response = http.client.HTTPResponse(s, method=request.split(b" ", 1)[0].decode())
        response.begin()
        body = response.read()
        s.settimeout(1.0)
        try:
            closed = s.recv(1) == b""
        except TimeoutError:  # still open a second later: kept alive
            closed = False
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body, closed


def test_keep_alive_serves_many_requests_on_one_connection(served: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served, timeout=5)
    conn.request("GET", "/healthz")
    first = conn.getresponse()
    assert first.status == 200 and json.loads(first.read()) == {"status": "ok"}
    sock = conn.sock
    for path in ("/v1/models", "/healthz?verbose=1", "/metrics"):
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200, path
        r.read()
        assert conn.sock is sock, "the server closed a keep-alive connection"
    conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501, "Unsupported method"),
        (b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "allowed: GET, HEAD"),
        (b"GET /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "allowed: POST"),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no route /nowhere"),
        (
            b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
            "Content-Length",
        ),
        (b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "not a number"),
        (b"POST /v1/models/my%20model/predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 404, "'my model'"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "Too many headers"),
    ],
)
def test_malformed_requests_get_a_json_error(served: int, request_bytes: bytes, status: int, message: str) -> None:
    got, headers, body, _ = raw(served, request_bytes)
    assert got == status and headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_refusals_that_leave_the_request_unread_close_the_connection(served: int) -> None:
    *_, closed = raw(served, b"GARBAGE\r\n\r\n")
    assert closed
    *_, closed = raw(served, b"POST /v1/models/x/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert closed
    status, headers, _, closed = raw(served, b"PUT /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD" and not closed  # read to its end: kept alive


def test_body_over_the_limit_is_refused_before_it_is_read(served: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "MAX_BODY_BYTES", 1000)
    status, _, body, closed = raw(served, b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
    assert status == 413 and "over 1000 bytes" in json.loads(body)["error"] and closed


def test_head_sends_the_length_without_the_body(served: int) -> None:
    status, headers, body, _ = raw(served, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and int(headers["content-length"]) == len(b'{"status":"ok"}') and body == b""


def test_a_failing_view_is_a_500_with_its_reason_and_the_server_goes_on(served: int, views: Views) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("store unreadable")

    views["health"] = broken
    views["models"] = lambda: [{"name": "demo", "latency_ms": float("nan")}]
    with httpx.Client(base_url=f"http://127.0.0.1:{served}") as client:
        r = client.get("/healthz")
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError: store unreadable"
        r = client.get("/v1/models")  # NaN is not JSON: refused with a reason, never an invalid body
        assert r.status_code == 500 and "not JSON compliant" in r.json()["error"]
        views["health"] = lambda: {"status": "degraded"}
        assert client.get("/healthz").status_code == 503


def test_a_slow_request_does_not_hold_up_other_connections(served: int, views: Views) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow() -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return {"status": "ok"}

    views["health"] = slow
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.update(s=httpx.get(f"http://127.0.0.1:{served}/healthz").status_code))
    t.start()
    assert entered.wait(5)
    assert httpx.get(f"http://127.0.0.1:{served}/v1/models", timeout=5).status_code == 200  # while /healthz waits
    release.set()
    t.join(10)
    assert result == {"s": 200}


def test_connections_past_the_bound_get_503_until_one_closes(views: Views) -> None:
    server, port = start(views, max_connections=2)
    try:
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2)]
        for conn in held:  # each answered once: both connections are open and counted
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        status, _, body, closed = raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status == 503 and "too many open connections" in json.loads(body)["error"] and closed
        assert server.busy_refusals == 1
        held.pop().close()
        wait_for(lambda: raw(port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")[0] == 200, what="slot freed")
        held[0].close()
    finally:
        server.stop()


def test_an_idle_connection_is_closed_after_the_timeout(views: Views) -> None:
    server, port = start(views, idle_timeout_s=0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(1) == b""  # closed by the server, not by the 10 s client timeout
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # a stalled body
            assert s.recv(1) == b""
    finally:
        server.stop()


def test_stop_closes_open_connections_and_the_listening_socket(views: Views) -> None:
    server, port = start(views)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    server.stop()
    assert conn.sock is not None and conn.sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_unix_socket_mode_0660_and_served(views: Views, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    app = build_app(ServingRegistry(), AgentMetrics(), lambda: views["models"](), lambda: views["health"]())
    server = LocalApiServer(app, bind_unix_socket(path))
    server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://agent") as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/v1/models").json()["models"][0]["name"] == "demo"
            assert client.post("/v1/models/demo/predict", json={"inputs": {}}).status_code == 404
    finally:
        server.stop()


def test_accepted_tcp_connections_have_tcp_nodelay(views: Views) -> None:
    """Without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK can hold an answer ~40 ms."""
    server, port = start(views)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        accepted = list(server._server._open)  # white box: the server's side of the open connection
        assert [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted] == [1]
        conn.close()
    finally:
        server.stop()


def test_stop_lets_a_request_being_answered_finish_then_closes(views: Views) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow() -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return {"status": "ok"}

    views["health"] = slow
    server, port = start(views)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/v1/models")
    idle.getresponse().read()
    answered: dict[str, Any] = {}

    def call() -> None:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        answered.update(status=r.status_code, connection=r.headers.get("connection"))

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert idle.sock is not None and idle.sock.recv(1) == b""  # the idle connection goes at once
    release.set()
    caller.join(10)
    stopper.join(10)
    assert answered == {"status": 200, "connection": "close"}  # the busy one got its answer, then closed


def test_a_body_that_would_be_refused_is_refused_before_100_continue(
    served: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserver, "MAX_BODY_BYTES", 1000)
    request = b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    status, _, body, _ = raw(served, request)
    assert status == 413 and "over 1000 bytes" in json.loads(body)["error"]
    request = b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served), timeout=5) as s:
        s.sendall(request)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"{}")
        response = http.client.HTTPResponse(s)
        response.begin()
        assert response.status == 404 and "no model named 'demo'" in json.loads(response.read())["error"]
