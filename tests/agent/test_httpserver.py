"""The local API's HTTP/1.1 server on real sockets: keep-alive, JSON errors for every malformed request, body
limits, HEAD, concurrency across connections, the connection bound and its /healthz reserve, the idle timeout,
stop, a unix socket. Hostile clients (trickling, per-peer floods, deep JSON): tests/security."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import httpserver
from agent.api import LocalApi
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
    app = LocalApi(ServingRegistry(), AgentMetrics(), lambda: views["models"](), lambda: views["health"]())
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


def test_connections_past_the_bound_get_503_until_one_closes(views: Views, caplog: pytest.LogCaptureFixture) -> None:
    server, port = start(views, max_connections=2)
    try:
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2)]
        for conn in held:  # each answered once: both connections are open and counted
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        status, headers, body, closed = raw(port, b"GET /v1/models HTTP/1.1\r\n\r\n")
        assert status == 503 and "too many open connections" in json.loads(body)["error"] and closed
        assert headers["retry-after"] == "1"
        assert raw(port, b"GET /v1/models HTTP/1.1\r\n\r\n")[0] == 503
        assert server.busy_refusals == 2
        warnings = [r for r in caplog.records if r.name.startswith("agent.http") and r.levelname == "WARNING"]
        assert len(warnings) == 1  # a flood of refusals is one line per interval, not one per connection
        status, _, body, closed = raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")  # from a reserve slot, then closed
        assert (status, json.loads(body), closed) == (200, {"status": "ok"}, True)
        held.pop().close()
        request = b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n"
        wait_for(lambda: raw(port, request)[0] == 200, what="slot freed")
        held[0].close()
    finally:
        server.stop()


def test_with_the_reserve_full_too_a_connection_gets_503_before_it_sends_anything(views: Views) -> None:
    server, port = start(views, max_connections=1, health_reserve=1)
    try:
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]  # full + reserve
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            response = http.client.HTTPResponse(third)
            response.begin()  # unasked: refused at the accept
            assert response.status == 503 and response.getheader("Retry-After") == "1"
            assert "too many open connections" in json.loads(response.read())["error"]
        assert server.refusals == {"busy": 1}
        for s in silent:
            s.close()
    finally:
        server.stop()


def test_an_idle_connection_is_closed_after_the_timeout_and_a_stalled_request_gets_408(views: Views) -> None:
    server, port = start(views, idle_timeout_s=0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(1) == b""  # closed by the server, not by the 10 s client timeout; nothing to answer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # a stalled body
            response = http.client.HTTPResponse(s)
            response.begin()
            assert response.status == 408 and response.getheader("Connection") == "close"
            assert "nothing received for 0.3 s" in json.loads(response.read())["error"]
            assert s.recv(1) == b""
        assert server.refusals == {"stalled": 1}
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
    app = LocalApi(ServingRegistry(), AgentMetrics(), lambda: views["models"](), lambda: views["health"]())
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


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A server with real ONNX models and short timeouts: "demo" (x: [?, 4] float -> y: [?, 3]), "poisoned"
    (the same times NaN) and "ints" (x: [?, 2] int8 -> y float)."""
    import onnx
    from onnx import TensorProto, helper

    from agent.model import LoadedModel
    from tests.agent.builders import onnx_linear

    work = tmp_path_factory.mktemp("fuzz")
    serving = ServingRegistry()
    serving.install("demo", 1, LoadedModel.from_file(onnx_linear(work / "lin.onnx")))
    serving.install("poisoned", 1, LoadedModel.from_file(onnx_linear(work / "nan.onnx", poison="nan")))
    cast = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    onnx.save(helper.make_model(cast, opset_imports=[helper.make_opsetid("", 17)]), work / "ints.onnx")
    serving.install("ints", 1, LoadedModel.from_file(work / "ints.onnx"))
    app = LocalApi(serving, AgentMetrics(), lambda: [{"name": "demo"}], lambda: {"status": "ok"})
    port = listen_port()
    server = LocalApiServer(app, bind_tcp_socket("127.0.0.1", port), idle_timeout_s=0.5)
    server.start()
    yield port
    server.stop()


_token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_path = st.sampled_from(
    ["/healthz", "/metrics", "/v1/models", "/v1/models/demo/predict", "/v1/models/demo/feedback",
     "/v1/models/demo/drift", "/v1/models/demo/rollback", "/v1/models/%00/predict", "/", "*"]
) | _token.map(lambda t: "/" + t)  # fmt: skip
_body = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["inputs", "x", "y"]), inner),
        max_leaves=30,
    ).map(lambda v: json.dumps(v).encode()),
    st.lists(st.lists(st.floats(width=32), min_size=4, max_size=4), min_size=1, max_size=3).map(
        lambda rows: json.dumps({"inputs": {"x": rows}}).encode()
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]) | _token,
    path=_path,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]) | _token,
    headers=st.lists(st.tuples(_token, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))),
    body=_body,
    declare_length=st.booleans(),
)
def test_any_request_gets_an_http_answer_and_the_server_goes_on(
    fuzz_target: int, method: str, path: str, version: str, headers: list[tuple[str, str]], body: bytes,
    declare_length: bool,
) -> None:  # fmt: skip
    head = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers if k.lower() != "content-length"]
    if declare_length:
        head.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body if declare_length else b"")
    with socket.create_connection(("127.0.0.1", fuzz_target), timeout=10) as s:
        s.sendall(request)
        response = http.client.HTTPResponse(s, method=method)
        response.begin()  # an HTTP answer, not a dropped connection
        payload = response.read()
    assert 200 <= response.status < 600
    # Nothing the caller sends is the agent's own failure (501: a method HTTP does not know, RFC 9110 15.6.2).
    assert response.status < 500 or response.status == 501, payload
    if response.getheader("Content-Type") == "application/json" and method != "HEAD":
        answer = json.loads(payload)
        assert response.status < 400 or isinstance(answer["error"], str)
    assert httpx.get(f"http://127.0.0.1:{fuzz_target}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("model", "inputs", "status", "message"),
    [
        ("demo", [[float("nan"), 1, 2, 3]], 422, "inputs hold NaN or inf, so output(s) y do too"),
        ("demo", [[float("inf"), 1, 2, 3]], 422, "inputs hold NaN or inf"),
        ("demo", [[1e39, 1, 2, 3]], 422, "input 'x': values outside float32 range"),
        ("poisoned", [[1, 2, 3, 4]], 500, "the model's output(s) y hold NaN or inf for these inputs"),
        ("ints", [[300, 1]], 422, "input 'x': values outside int8 range [-128, 127]"),
        ("ints", [[-129, 1]], 422, "values outside int8 range"),
        ("ints", [[0.5, 1]], 422, "float values for integer tensor"),
    ],
)
def test_values_json_cannot_carry_or_the_tensor_cannot_hold_are_refused_with_a_reason(
    fuzz_target: int, model: str, inputs: list[list[float]], status: int, message: str
) -> None:
    # Python's json reads NaN and Infinity, so a client may send them; no JSON reader must be sent them back.
    body = json.dumps({"inputs": {"x": inputs}})
    r = httpx.post(f"http://127.0.0.1:{fuzz_target}/v1/models/{model}/predict", content=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_int_inputs_in_range_are_cast_exactly(fuzz_target: int) -> None:
    r = httpx.post(f"http://127.0.0.1:{fuzz_target}/v1/models/ints/predict", json={"inputs": {"x": [[-128, 127]]}})
    assert r.status_code == 200 and r.json()["outputs"]["y"] == [[-128.0, 127.0]]


def test_nonfinite_outputs_are_counted(fuzz_target: int) -> None:
    url = f"http://127.0.0.1:{fuzz_target}"
    assert httpx.post(f"{url}/v1/models/poisoned/predict", json={"inputs": {"x": [[1, 2, 3, 4]]}}).status_code == 500
    metrics = httpx.get(f"{url}/metrics").text
    assert 'edgefleet_agent_prediction_errors_total{kind="nonfinite_output",model="poisoned"}' in metrics
