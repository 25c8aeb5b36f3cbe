"""Local HTTP API on 127.0.0.1: predict, health, models, Prometheus metrics (Starlette, no auth)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.errors import InputError, ModelLoadError
from agent.metrics import AgentMetrics
from agent.serving import ServingRegistry

MAX_BODY_BYTES = 16 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(
    serving: ServingRegistry,
    metrics: AgentMetrics,
    models_view: Callable[[], list[dict[str, Any]]],
    health_view: Callable[[], dict[str, Any]],
    request_rollback: Callable[[str], None] | None = None,
) -> Starlette:
    """The local API over a serving registry; the views supply store/lifecycle and health state."""

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        served = serving.get(name)
        if served is None:
            return _error(404, f"no model named {name!r} is serving")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            metrics.prediction_errors.labels(name, "bad_json").inc()
            return _error(400, f"body is not JSON: {e}")
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            metrics.prediction_errors.labels(name, "bad_request").inc()
            return _error(422, 'body must be {"inputs": {"<tensor name>": [...]}}')
        start = time.perf_counter()
        try:
            outputs = served.model.predict(payload["inputs"])
        except InputError as e:
            metrics.prediction_errors.labels(name, "bad_input").inc()
            return _error(422, str(e))
        except ModelLoadError as e:  # the runtime refused inputs that passed validation
            served.errors += 1
            metrics.prediction_errors.labels(name, "runtime").inc()
            return _error(422, str(e))
        metrics.latency.labels(name).observe(time.perf_counter() - start)
        served.requests += 1
        metrics.predictions.labels(name).inc()
        body_out = {
            "model": name,
            "version": served.version,
            "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
        }
        return JSONResponse(body_out)

    async def healthz(_: Request) -> Response:
        health = health_view()
        return JSONResponse(health, status_code=200 if health.get("status") == "ok" else 503)

    async def models(_: Request) -> Response:
        return JSONResponse({"models": models_view()})

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def rollback(request: Request) -> Response:
        name = request.path_params["name"]
        if request_rollback is None:
            return _error(404, "rollback is not available here")
        if not any(m["name"] == name for m in models_view()):
            return _error(404, f"no model named {name!r}")
        request_rollback(name)
        return JSONResponse({"queued": "rollback", "model": name}, status_code=202)

    routes = [
        Route("/v1/models/{name}/rollback", rollback, methods=["POST"]),
        Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes)
