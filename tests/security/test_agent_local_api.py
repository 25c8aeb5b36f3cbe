"""Hostile clients against the agent's local API on real sockets (agent/httpserver.py, agent/httplimits.py): a
trickling client is cut at the request deadline, one address cannot take every slot, /healthz answers from
another address throughout, and JSON too deep or with numbers too long is a 400, not a 500.

The servers here run with deadlines of 1-2 s (15 s by default) so each test takes a few seconds at most."""

from __future__ import annotations

import http.client
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import api
from agent.api import LocalApi
from agent.httpserver import LocalApiServer, bind_tcp_socket, bind_unix_socket
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.serving import ServingRegistry
from tests.agent.builders import onnx_linear
from tests.agent.harness import wait_for
from tests.agent.ports import listen_port

DEADLINE_S = 2.0
# A predict request, sent one byte at a time: its head alone outlasts any deadline used here.
TRICKLED = b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: agent\r\nContent-Length: 30\r\n\r\n" + b" " * 30


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> ServingRegistry:
    """A real ONNX model "demo" (x: [?, 4] float -> y: [?, 3])."""
    registry = ServingRegistry()
    registry.install("demo", 1, LoadedModel.from_file(onnx_linear(tmp_path_factory.mktemp("api") / "lin.onnx")))
    return registry


@pytest.fixture
def start(serving: ServingRegistry) -> Iterator[Any]:
    """Start a server on 127.0.0.1 with the given limits; returns (server, port); stopped after the test."""
    servers: list[LocalApiServer] = []

    def make(**limits: Any) -> tuple[LocalApiServer, int]:
        app = LocalApi(serving, AgentMetrics(), lambda: [{"name": "demo"}], lambda: {"status": "ok"})
        port = listen_port()
        server = LocalApiServer(app, bind_tcp_socket("127.0.0.1", port), **limits)
        server.start()
        servers.append(server)
        return server, port

    yield make
    for server in servers:
        server.stop()


def fresh_get(port: int, path: str, source: str = "127.0.0.2") -> tuple[int, dict[str, Any]]:
    """GET on a new connection from `source` (Linux routes all of 127/8 to loopback); status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(s, method="GET")
        response.begin()
        return response.status, json.loads(response.read())


@dataclass
class Trickler:
    opened: float
    closed: float | None = None
    answer: bytes = b""  # what the server sent before it closed the connection

    def lifetime(self, now: float) -> float:
        return (self.closed or now) - self.opened


def trickle(made: list[Trickler], port: int, connections: int, seconds: float, reconnect: bool) -> None:
    """`connections` connections from 127.0.0.1, each sending one byte of a request every second for `seconds`;
    with `reconnect`, each one the server closes is replaced at the next tick. Every connection is in `made`."""
    live: dict[socket.socket, tuple[Trickler, list[int]]] = {}

    def connect() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        live[s] = (Trickler(time.monotonic()), [0])
        made.append(live[s][0])

    def closed(s: socket.socket) -> None:
        live.pop(s)[0].closed = time.monotonic()
        s.close()

    for _ in range(connections):
        connect()
    end, tick = time.monotonic() + seconds, 0.0
    while time.monotonic() < end:
        for s in select.select(list(live), [], [], 0.01)[0]:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            if data:
                live[s][0].answer += data
            else:
                closed(s)
        if time.monotonic() >= tick:
            tick = time.monotonic() + 1.0
            for s, (_, sent) in list(live.items()):
                try:
                    s.send(TRICKLED[sent[0] : sent[0] + 1])
                    sent[0] += 1
                except OSError:
                    closed(s)
            while reconnect and len(live) < connections:
                connect()
    for s in list(live):
        s.close()


@pytest.mark.slow
def test_trickling_connections_are_cut_at_the_deadline_and_healthz_answers_throughout(start: Any) -> None:
    server, port = start(request_deadline_s=DEADLINE_S)  # 64 slots, 16 per address, 4 in reserve
    made: list[Trickler] = []
    attack = threading.Thread(target=trickle, args=(made, port, 70, 6.0, True))
    attack.start()
    checks = []
    while attack.is_alive():
        checks.append(fresh_get(port, "/healthz")[0])
        time.sleep(0.2)
    attack.join()
    now = time.monotonic()
    assert len(checks) >= 20 and set(checks) == {200}, checks
    cut = [t for t in made if t.answer.startswith(b"HTTP/1.1 408")]
    refused = [t for t in made if t.answer.startswith(b"HTTP/1.1 503")]
    assert len(cut) >= 16 * 2  # each wave of those holding a slot was cut by the deadline
    assert all(DEADLINE_S - 0.2 < t.lifetime(now) < DEADLINE_S + 1 for t in cut), [t.lifetime(now) for t in cut]
    assert all(t.lifetime(now) < DEADLINE_S + 1 for t in made)  # no connection outlived the deadline
    assert b"not received in full within 2 s" in cut[0].answer
    assert refused and b"too many open connections from 127.0.0.1 (at most 16 per address)" in refused[0].answer
    assert {"deadline", "per_peer"} <= set(server.refusals)
    assert fresh_get(port, "/healthz", source="127.0.0.1")[0] == 200  # and from the attacker's address after


@pytest.mark.slow
def test_without_a_per_peer_cap_the_deadline_alone_frees_every_slot(start: Any) -> None:
    server, port = start(request_deadline_s=DEADLINE_S, max_per_peer=64)
    made: list[Trickler] = []
    attack = threading.Thread(target=trickle, args=(made, port, 70, 4.0, False))
    attack.start()
    time.sleep(0.5)
    started = min(t.opened for t in made)
    status, answer = fresh_get(port, "/healthz")  # every slot and the reserve taken: refused at once
    assert status == 503 and "too many open connections to the local API" in answer["error"]
    refused_checks = 1
    while (status := fresh_get(port, "/healthz")[0]) != 200 and time.monotonic() - started < 10:
        refused_checks += 1
        time.sleep(0.05)
    recovered = time.monotonic() - started
    attack.join()
    assert status == 200 and recovered < DEADLINE_S + 1  # while the trickling goes on: it no longer holds them
    assert sum(t.answer.startswith(b"HTTP/1.1 408") for t in made) == 68  # 64 slots + 4 reserve
    assert server.refusals == {"deadline": 68, "busy": 2 + refused_checks}


def test_one_address_past_its_cap_gets_503_while_another_address_is_served(start: Any) -> None:
    server, port = start(max_per_peer=4)
    held = [http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.1", 0)) for _ in "abcd"]
    for conn in held:  # each answered once: all four are open and counted against 127.0.0.1
        conn.request("GET", "/v1/models")
        conn.getresponse().read()
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.1", 0)) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: agent\r\n\r\n")
        response = http.client.HTTPResponse(s)
        response.begin()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        error = json.loads(response.read())["error"]
        assert error == "too many open connections from 127.0.0.1 (at most 4 per address); close some and retry"
    assert fresh_get(port, "/healthz", source="127.0.0.1") == (200, {"status": "ok"})  # from the reserve
    assert fresh_get(port, "/v1/models", source="127.0.0.2")[0] == 200
    assert server.refusals == {"per_peer": 1}
    held.pop().close()  # a slot of its own again: served
    metrics = wait_for(lambda: (r := httpx.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200 and r.text)
    assert 'edgefleet_agent_api_refusals_total{reason="per_peer"} 1.0' in metrics
    for conn in held:
        conn.close()


def test_on_a_unix_socket_only_the_global_cap_applies(serving: ServingRegistry, tmp_path: Path) -> None:
    """Every unix-socket peer has the same empty address; the socket's mode decides who may connect."""
    app = LocalApi(serving, AgentMetrics(), lambda: [], lambda: {"status": "ok"})
    server = LocalApiServer(app, bind_unix_socket(tmp_path / "agent.sock"), max_per_peer=1)
    server.start()
    try:
        transports = [httpx.HTTPTransport(uds=str(tmp_path / "agent.sock")) for _ in range(3)]
        clients = [httpx.Client(transport=t, base_url="http://agent", timeout=5) for t in transports]
        assert [c.get("/v1/models").status_code for c in clients] == [200, 200, 200]  # three held at once
        for client in clients:
            client.close()
        assert server.refusals == {}
    finally:
        server.stop()


def _predict(port: int, body: bytes, model: str = "demo") -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/models/{model}/predict", content=body, timeout=10)


def test_json_nested_100k_deep_is_a_400_and_the_server_goes_on(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, port = start()
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"inputs": {"x": ' + deep + b"}}"):
        r = _predict(port, body)
        assert r.status_code == 400 and r.json() == {"error": "body is JSON nested deeper than 64 levels"}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/demo/feedback", content=deep, timeout=10)
    assert r.status_code == 400 and "nested deeper than 64 levels" in r.json()["error"]
    assert _predict(port, b'{"inputs": {"x": [[1, 2, 3, 4]]}}').status_code == 200
    assert _predict(port, b"[" * 64 + b"]" * 64).status_code == 422  # 64 levels are parsed (and not a tensor)
    monkeypatch.setattr(api, "MAX_JSON_DEPTH", 10**6)  # past the scan, the parser's recursion limit: still a 400
    # At Python's default limit: libraries imported earlier in this test process (TensorFlow, onnx2tf) raise it
    # so far that a 100k-deep parse in a server thread would overflow the C stack before RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        r = _predict(port, deep)
    finally:
        sys.setrecursionlimit(limit)
    assert r.status_code == 400 and r.json()["error"].startswith("body is JSON nested too deep to parse")
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'edgefleet_agent_api_refusals_total{reason="json_depth"} 4.0' in metrics
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_a_5000_digit_number_is_a_400(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, port = start()
    for number in (b"7" * 5000, b"0." + b"7" * 5000, b"-1e" + b"7" * 5000):
        r = _predict(port, b'{"inputs": {"x": [[' + number + b", 1, 2, 3]]}}")
        assert r.status_code == 400 and r.json() == {"error": "body is JSON with a number longer than 100 characters"}
    assert _predict(port, b'{"inputs": {"x": [["' + b"7" * 5000 + b'", 1, 2, 3]]}}').status_code == 422  # a string
    monkeypatch.setattr(api, "MAX_NUMBER_CHARS", 10**6)  # past the scan, Python's 4300-digit limit: still a 400
    r = _predict(port, b'{"inputs": {"x": [[' + b"7" * 5000 + b", 1, 2, 3]]}}")
    assert r.status_code == 400 and "Exceeds the limit (4300 digits)" in r.json()["error"]
    assert _predict(port, b'{"inputs": {"x": [[1, 2, 3, 4]]}}').status_code == 200


def _response(s: socket.socket) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = http.client.HTTPResponse(s)
    response.begin()
    return response.status, json.loads(response.read()), time.monotonic() - started


def test_content_length_over_the_cap_is_413_at_once(start: Any) -> None:
    _, port = start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: {api.MAX_BODY_BYTES + 1}\r\n\r\n".encode())
        status, answer, waited = _response(s)
        assert status == 413 and answer["error"] == f"request body over {api.MAX_BODY_BYTES} bytes" and waited < 1
        assert s.recv(1) == b""


def test_a_body_that_never_comes_or_trickles_is_cut_at_the_deadline(start: Any) -> None:
    server, port = start(request_deadline_s=1.5, idle_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # the body never comes: the idle timeout
        s.sendall(b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        status, answer, waited = _response(s)
        assert status == 408 and answer["error"].startswith("request stalled: nothing received for 0.5 s")
        assert 0.4 < waited < 1.4 and s.recv(1) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a byte every 0.3 s: the deadline
        s.sendall(b"POST /v1/models/demo/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        while not select.select([s], [], [], 0.3)[0]:  # each byte restarts the 0.5 s idle timeout
            s.sendall(b" ")
        status, answer, _ = _response(s)
        assert status == 408 and answer["error"] == "request not received in full within 1.5 s; closing the connection"
        assert 1.3 < time.monotonic() - started < 2.5
    assert server.refusals == {"stalled": 1, "deadline": 1}


def test_keep_alive_idle_time_between_requests_is_not_held_to_the_deadline(start: Any) -> None:
    _, port = start(request_deadline_s=0.5, idle_timeout_s=5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    sock = conn.sock
    time.sleep(1.0)  # idle for twice the deadline
    conn.request("GET", "/v1/models")
    assert conn.getresponse().status == 200 and conn.sock is sock
    conn.close()
