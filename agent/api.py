"""Local HTTP API on 127.0.0.1 or a unix socket: predict, health, models, Prometheus metrics (Starlette, no auth;
on a unix socket the file mode decides who may call it)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.errors import ConfigError, InputError, ModelLoadError
from agent.fallback import FallbackError, FallbackTimeout, FallbackUnavailable
from agent.inference import InferenceService, NotServing
from agent.metrics import AgentMetrics
from agent.serving import ServingRegistry
from protocol.drift import DriftReport
from protocol.telemetry import TelemetrySummary

MAX_BODY_BYTES = 16 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def drift_view(window: str, summary: TelemetrySummary, report: DriftReport) -> dict[str, Any]:
    """A drift report as JSON: which window, its accuracy from labels, every statistic per feature."""
    return {
        "model": summary.model,
        "version": summary.version,
        "window": window,
        "window_start": summary.window_start.isoformat(),
        "window_end": summary.window_end.isoformat(),
        "n": summary.n,
        "accuracy": summary.accuracy(),
        "score": report.score,
        "dataset_drift": report.dataset_drift,
        "drifted_share": report.drifted_share,
        "drifted_features": report.drifted_features,
        "missing_share": report.missing_share,
        "out_of_range_share": report.out_of_range_share,
        "features": [asdict(f) for f in report.features],
        "classes": asdict(report.classes) if report.classes else None,
    }


def build_app(
    serving: ServingRegistry,
    metrics: AgentMetrics,
    models_view: Callable[[], list[dict[str, Any]]],
    health_view: Callable[[], dict[str, Any]],
    request_rollback: Callable[[str], None] | None = None,
    inference: InferenceService | None = None,
) -> Starlette:
    """The local API over a serving registry; the views supply store/lifecycle and health state."""

    service = inference or InferenceService(serving, metrics)

    async def read_json(request: Request, name: str) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            metrics.prediction_errors.labels(name, "bad_json").inc()
            raise _Refused(400, f"body is not JSON: {e}") from e

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        if serving.get(name) is None and not service.has_fallback(name):
            return _error(404, f"no model named {name!r} is serving")
        try:
            payload = await read_json(request, name)
        except _Refused as e:
            return _error(e.status, str(e))
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            metrics.prediction_errors.labels(name, "bad_request").inc()
            return _error(422, 'body must be {"inputs": {"<tensor name>": [...]}}')
        try:
            if service.has_fallback(name):  # may wait on the network: keep the event loop free
                answer = await run_in_threadpool(service.predict, name, payload["inputs"])
            else:
                answer = service.predict(name, payload["inputs"])
        except NotServing as e:
            return _error(404, str(e))
        except FallbackError as e:
            status = 503 if isinstance(e, FallbackUnavailable) else 504 if isinstance(e, FallbackTimeout) else 502
            return JSONResponse({"error": f"cloud fallback failed: {e}", "fallback_reason": e.reason}, status)
        except (InputError, ModelLoadError) as e:  # ModelLoadError: the runtime refused inputs that passed validation
            return _error(422, str(e))
        return JSONResponse(answer.to_json())

    async def feedback(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            payload = await read_json(request, name)
        except _Refused as e:
            return _error(e.status, str(e))
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("prediction_id"), str)
            or type(payload.get("label")) is not int
        ):
            return _error(422, 'body must be {"prediction_id": "<id from predict>", "label": <int class>}')
        if not service.feedback(name, payload["prediction_id"], payload["label"]):
            return _error(404, f"unknown or expired prediction id {payload['prediction_id']!r}, or label out of range")
        return JSONResponse({"accepted": True, "model": name, "prediction_id": payload["prediction_id"]})

    async def drift(request: Request) -> Response:
        name = request.path_params["name"]
        found = service.recorders.drift(name) if service.recorders is not None else None
        if found is None:
            return _error(404, f"no telemetry window for {name!r} yet")
        return JSONResponse(drift_view(*found))

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
        Route("/v1/models/{name}/feedback", feedback, methods=["POST"]),
        Route("/v1/models/{name}/drift", drift, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def bind_unix_socket(path: Path, mode: int = 0o660) -> socket.socket:
    """The local API's unix socket, bound before the daemon starts: owner and group may connect (`mode`).

    A socket file left by an agent that was killed is replaced; one another agent still listens on is not,
    and neither is a path that is not a socket."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:  # nobody listens: left by a killed agent
            path.unlink(missing_ok=True)
        else:
            raise ConfigError(f"api_uds: another process is serving on {path}")
        finally:
            probe.close()
    elif path.exists() or path.is_symlink():
        raise ConfigError(f"api_uds: {path} exists and is not a socket")
    if not path.parent.is_dir():
        raise ConfigError(f"api_uds: directory {path.parent} does not exist")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"api_uds: cannot listen on {path}: {e.strerror or e}") from e
    return sock


def bind_tcp_socket(host: str, port: int) -> socket.socket:
    """The local API's TCP socket, bound before the daemon starts (a port in use stops the start with one line)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say IPPROTO_TCP (socket.create_server leaves 0): asyncio sets TCP_NODELAY only on accepted
        # sockets whose proto says TCP, and without it Nagle + delayed ACKs add ~40 ms to every response.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:
        raise ConfigError(f"api_host/api_port: cannot listen on {host}:{port}: {e.strerror or e}") from e
