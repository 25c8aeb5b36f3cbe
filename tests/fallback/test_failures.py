"""Bad networks and bad servers: a clear error or the local answer, never a hang; the breaker works."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.errors import ModelLoadError
from agent.fallback import (
    BreakerState,
    CircuitBreaker,
    CloudClient,
    EndpointConfig,
    FallbackBadResponse,
    FallbackHTTPError,
    FallbackPolicy,
    FallbackReason,
    FallbackRouter,
    FallbackTimeout,
    FallbackUnavailable,
    OutputShape,
)
from tests.fallback.servers import ServerThread
from tests.support.broker import free_port

OUT = [OutputShape("probs", (3,))]
X = {"x": np.ones((2, 4), np.float32)}


def _misbehaving() -> Starlette:
    calls: dict[str, int] = {}

    async def handler(request: Request) -> Response:
        mode = request.path_params["mode"]
        calls[mode] = calls.get(mode, 0) + 1
        body = await request.json()
        n = len(body["instances"])
        if mode == "ok":
            return JSONResponse({"predictions": [[0.1, 0.7, 0.2]] * n})
        if mode == "slow":
            await asyncio.sleep(2.0)
            return JSONResponse({"predictions": [[0.1, 0.7, 0.2]] * n})
        if mode == "error500":
            return JSONResponse({"error": "model crashed"}, status_code=500)
        if mode == "flaky503" and calls[mode] % 2 == 1:
            return JSONResponse({"error": "busy"}, status_code=503)
        if mode == "flaky503":
            return JSONResponse({"predictions": [[0.1, 0.7, 0.2]] * n})
        if mode == "notjson":
            return PlainTextResponse("<html>gateway</html>")
        if mode == "wrongshape":
            return JSONResponse({"predictions": [[0.5, 0.5]] * n})
        return JSONResponse({"error": "unknown"}, status_code=404)

    async def counts(_: Request) -> Response:
        return JSONResponse(calls)

    return Starlette(routes=[Route("/v1/models/{mode}:predict", handler, methods=["POST"]),
                             Route("/calls", counts)])


@pytest.fixture(scope="module")
def server() -> ServerThread:
    with ServerThread(_misbehaving()) as s:
        yield s  # type: ignore[misc]


def _client(url: str, mode: str, **kw: object) -> CloudClient:
    cfg = EndpointConfig(type="tfserving", url=url, model=mode, **kw)  # type: ignore[arg-type]
    return CloudClient(cfg, OUT)


def test_ok(server: ServerThread) -> None:
    out = _client(server.url, "ok").predict(X)
    assert out["probs"].shape == (2, 3)


def test_slow_endpoint_times_out_quickly(server: ServerThread) -> None:
    client = _client(server.url, "slow", timeout_s=0.3, retries=1, backoff_s=0.01)
    before = httpx.get(f"{server.url}/calls").json().get("slow", 0)
    with pytest.raises(FallbackTimeout, match=r"no answer within 0\.3s"):  # the server answers after 2 s
        client.predict(X)
    assert httpx.get(f"{server.url}/calls").json()["slow"] - before == 2  # one try and one retry, each cut short


def test_endpoint_down_is_a_clear_error() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}", "ok", retries=0)
    with pytest.raises(FallbackTimeout, match="ConnectError"):
        client.predict(X)


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [("error500", FallbackHTTPError, "HTTP 500: model crashed"), ("notjson", FallbackBadResponse, "not JSON"),
     ("wrongshape", FallbackBadResponse, r"shape \[2, 2\], expected \(2, 3\)")],
)
def test_bad_answers(server: ServerThread, mode: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _client(server.url, mode, retries=0).predict(X)


def test_retry_on_503_then_success(server: ServerThread) -> None:
    client = _client(server.url, "flaky503", retries=2, backoff_s=0.01)
    assert client.predict(X)["probs"].shape == (2, 3)
    assert client.breaker.state is BreakerState.CLOSED


def test_breaker_opens_fails_fast_and_probes_again(server: ServerThread) -> None:
    now = [0.0]
    cfg = EndpointConfig(type="tfserving", url=server.url, model="error500", retries=0, breaker_failures=3,
                         breaker_reset_s=5.0)
    client = CloudClient(cfg, OUT, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(FallbackHTTPError):
            client.predict(X)
    assert client.breaker.state is BreakerState.OPEN
    before = httpx.get(f"{server.url}/calls").json()["error500"]
    with pytest.raises(FallbackUnavailable, match="circuit open"):
        client.predict(X)  # no network call while open: the server's count below is unchanged
    assert httpx.get(f"{server.url}/calls").json()["error500"] == before
    now[0] = 5.0  # cool-down over: one probe goes out, fails, breaker re-opens
    assert client.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(FallbackHTTPError):
        client.predict(X)
    assert client.breaker.state is BreakerState.OPEN
    assert httpx.get(f"{server.url}/calls").json()["error500"] == before + 1
    # The endpoint recovers: the next probe succeeds and closes the breaker.
    now[0] = 10.0
    client.cfg = cfg.model_copy(update={"model": "ok"})
    assert client.predict(X)["probs"].shape == (2, 3)
    assert client.breaker.state is BreakerState.CLOSED


def test_breaker_unit() -> None:
    now = [0.0]
    b = CircuitBreaker(2, 1.0, clock=lambda: now[0])
    b.record_failure()
    assert b.allow()
    b.record_failure()
    assert not b.allow() and b.opened_count == 1
    now[0] = 1.0
    assert b.allow() and not b.allow()  # exactly one probe in half-open
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_offline_fails_fast_without_network(server: ServerThread) -> None:
    client = CloudClient(EndpointConfig(type="tfserving", url=server.url, model="ok"), OUT, online=lambda: False)
    before = httpx.get(f"{server.url}/calls").json().get("ok", 0)
    with pytest.raises(FallbackUnavailable, match="device offline"):
        client.predict(X)
    assert httpx.get(f"{server.url}/calls").json().get("ok", 0) == before  # not even one request was sent


class _Local:
    def __init__(self, probs: list[float] | None = None, fail: bool = False) -> None:
        self.probs, self.fail = probs, fail

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail:
            raise ModelLoadError("runtime crashed")
        n = len(inputs["x"])
        return {"probs": np.asarray([self.probs] * n, np.float32)}


def test_router_policy(server: ServerThread) -> None:
    router = FallbackRouter(_client(server.url, "ok"), FallbackPolicy(min_confidence=0.6), cloud_version=4)
    confident = router.answer(X, _Local([0.05, 0.9, 0.05]), 3)
    assert (confident.source, confident.version, confident.reason) == ("device", 3, None)
    unsure = router.answer(X, _Local([0.4, 0.3, 0.3]), 3)
    assert (unsure.source, unsure.version, unsure.reason) == ("cloud", 4, FallbackReason.LOW_CONFIDENCE)
    crashed = router.answer(X, _Local(fail=True), 3)
    assert crashed.source == "cloud" and crashed.reason is FallbackReason.RUNTIME_ERROR
    nan = router.answer({"x": np.full((2, 4), np.nan, np.float32)}, _Local([0.05, 0.9, 0.05]), 3)
    assert nan.source == "cloud" and nan.reason is FallbackReason.DATA_QUALITY
    assert router.stats.snapshot()["calls"] == {"low_confidence": 1, "runtime_error": 1, "data_quality": 1}


def test_low_confidence_keeps_local_answer_when_cloud_fails(server: ServerThread) -> None:
    router = FallbackRouter(_client(server.url, "error500", retries=0), FallbackPolicy(min_confidence=0.6))
    answer = router.answer(X, _Local([0.4, 0.3, 0.3]), 3)
    assert answer.source == "device" and answer.note and "cloud failed" in answer.note
    assert router.stats.snapshot()["errors"] == {"low_confidence": 1}


def test_policy_off_and_no_endpoint() -> None:
    off = FallbackRouter(None, FallbackPolicy(on_no_model=False))
    with pytest.raises(FallbackUnavailable, match="fallback for no_model is off"):
        off.answer(X, None, None)
    with pytest.raises(FallbackUnavailable, match="no cloud endpoint configured"):
        FallbackRouter(None, FallbackPolicy()).answer(X, None, None)


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    for bad in ({"type": "triton"}, {"url": "ftp://x"}, {"timeout_s": 0}, {"colour": 1}):
        with pytest.raises(ValidationError):
            EndpointConfig.model_validate({"type": "kserve", "url": "http://h:1", "model": "m", **bad})


def test_auth_header_and_tls_default() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"predictions": [[0.2, 0.3, 0.5]]})

    cfg = EndpointConfig(type="tfserving", url="https://cloud.example:8501", model="m", auth_token="s3cret")
    assert cfg.verify_tls is True
    client = CloudClient(cfg, OUT, transport=httpx.MockTransport(handler))  # unit test: no network
    client.predict({"x": np.ones((1, 4), np.float32)})
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert str(seen[0].url) == "https://cloud.example:8501/v1/models/m:predict"
    assert "s3cret" not in repr(cfg)
