"""Cloud-fallback overhead: a fallback answer vs a direct HTTP call to the same server, in one run.

Prints one JSON object: `fallback_added_p50_ms` (router + client + validation over a raw httpx
post of the same body; target <= 2 ms) and `breaker_open_fail_ms` (median time to fail fast with
the circuit open; target <= 1 ms). The server is a real uvicorn on loopback answering the TF Serving
REST format for a 64-feature, 10-class model.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent.fallback import (
    BreakerState,
    CloudClient,
    EndpointConfig,
    FallbackError,
    FallbackPolicy,
    FallbackRouter,
    FallbackUnavailable,
    OutputShape,
)
from tests.fallback.servers import ServerThread

RUNS = 500
PROBS = [[0.01] * 9 + [0.91]]


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"predictions": PROBS * len(body["instances"])})


def _p50(samples: list[float]) -> float:
    return float(np.median(samples))


def main() -> None:
    x = {"x": np.random.default_rng(0).random((1, 64), dtype=np.float32)}
    app = Starlette(routes=[Route("/v1/models/{rest:path}", predict, methods=["POST"])])
    with ServerThread(app) as server:
        cfg = EndpointConfig(type="tfserving", url=server.url, model="digits", version=1)
        router = FallbackRouter(CloudClient(cfg, [OutputShape("probs", (10,))]), FallbackPolicy())
        raw = httpx.Client(base_url=server.url)
        body = json.dumps({"instances": x["x"].tolist()}).encode()
        path = "/v1/models/digits/versions/1:predict"
        direct, via = [], []
        for _ in range(50):  # warm both paths
            raw.post(path, content=body, headers={"Content-Type": "application/json"}).json()
            router.answer(x, None, None)
        for _ in range(RUNS):  # interleaved so both see the same machine state
            t0 = time.perf_counter()
            np.asarray(raw.post(path, content=body, headers={"Content-Type": "application/json"}).json()["predictions"])
            t1 = time.perf_counter()
            router.answer(x, None, None)
            t2 = time.perf_counter()
            direct.append((t1 - t0) * 1000)
            via.append((t2 - t1) * 1000)
        down = CloudClient(
            cfg.model_copy(update={"url": "http://127.0.0.1:9", "retries": 0, "breaker_failures": 1}),
            [OutputShape("probs", (10,))],
        )
        with contextlib.suppress(FallbackError):  # connection refused: the breaker opens
            down.predict(x)
        assert down.breaker.state is BreakerState.OPEN
        fail = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            with contextlib.suppress(FallbackUnavailable):
                down.predict(x)
            fail.append((time.perf_counter() - t0) * 1000)
    out = {
        "benchmark": "fallback",
        "runs": RUNS,
        "direct_p50_ms": round(_p50(direct), 4),
        "fallback_p50_ms": round(_p50(via), 4),
        "fallback_added_p50_ms": round(_p50(via) - _p50(direct), 4),
        "breaker_open_fail_ms": round(_p50(fail), 5),
        "targets": {"fallback_added_p50_ms": 2.0, "breaker_open_fail_ms": 1.0},
    }
    out["meets_targets"] = out["fallback_added_p50_ms"] <= 2.0 and out["breaker_open_fail_ms"] <= 1.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
