"""Local API routes: predict, feedback, drift, health, models, Prometheus metrics, rollback (no auth of its own;
on a unix socket the file mode decides who may call it). `LocalApi.handle` is the whole API without sockets;
agent/httpserver.py serves it over HTTP/1.1."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.errors import InputError, ModelLoadError
from agent.fallback import FallbackError, FallbackTimeout, FallbackUnavailable
from agent.inference import InferenceService, NotServing
from agent.metrics import AgentMetrics
from agent.pipeline.inference import PipelineInference
from agent.serving import ServingRegistry
from protocol.drift import DriftReport
from protocol.telemetry import TelemetrySummary

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
JSON = "application/json"
MAX_JSON_DEPTH = 64  # arrays and objects within each other; a tensor needs one level per dimension
MAX_NUMBER_CHARS = 100  # one number literal; a float64 needs at most 24 characters, an int64 20

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as int8
_NUMBER_CHAR = bytes(ord("0") if c in b"0123456789+-.eE" else ord(" ") for c in range(256))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(obj: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    # NaN/inf are not JSON: a model that produced them gets a 500 with a message, not an invalid body.
    body = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Reply(status, body, JSON, headers)


def error_reply(status: int, message: str, **extra: Any) -> Reply:
    return json_reply({"error": message, **extra}, status)


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


_MODEL_ROUTE = re.compile(r"/v1/models/([^/]+)/(predict|feedback|rollback|drift)")
_PIPELINE_ROUTE = re.compile(r"/v1/pipelines/([^/]+)/predict")
# Which method each route answers (GET routes answer HEAD too).
_METHODS = {"predict": "POST", "feedback": "POST", "rollback": "POST", "drift": "GET"}
_PLAIN_ROUTES = {"/healthz": "healthz", "/v1/models": "models", "/v1/pipelines": "pipelines", "/metrics": "prometheus"}


class LocalApi:
    """The local API over a serving registry; the views supply store/lifecycle and health state.

    Handlers run on the server's connection threads: predictions on different connections run at once (the
    runtimes and the telemetry recorder hold their own locks), and a prediction that waits on a cloud
    fallback holds only its own connection."""

    def __init__(
        self,
        serving: ServingRegistry,
        metrics: AgentMetrics,
        models_view: Callable[[], list[dict[str, Any]]],
        health_view: Callable[[], dict[str, Any]],
        request_rollback: Callable[[str], None] | None = None,
        inference: InferenceService | None = None,
        pipelines: PipelineInference | None = None,
        pipelines_view: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.serving = serving
        self.metrics = metrics
        self.models_view = models_view
        self.health_view = health_view
        self.request_rollback = request_rollback
        self.service = inference or InferenceService(serving, metrics)
        self.pipeline_service = pipelines
        self.pipelines_view = pipelines_view or list

    def handle(self, method: str, path: str, body: bytes) -> Reply:
        """One request: route by method and path (query strings are ignored), answer with a `Reply`. Every
        failure is a JSON `{"error": ...}`: 4xx for the caller's mistakes, 500 (logged) for the agent's."""
        path = path.split("?", 1)[0]
        try:
            plain = _PLAIN_ROUTES.get(path)
            if plain is not None:
                if method not in ("GET", "HEAD"):
                    return self._not_allowed(method, path, "GET")
                handler: Callable[[], Reply] = getattr(self, plain)
                return handler()
            piped = _PIPELINE_ROUTE.fullmatch(path)
            if piped is not None:
                if method != "POST":
                    return self._not_allowed(method, path, "POST")
                return self.predict_pipeline(unquote(piped.group(1)), body)
            found = _MODEL_ROUTE.fullmatch(path)
            if found is None:
                return error_reply(404, f"no route {path}")
            name, action = unquote(found.group(1)), found.group(2)
            allowed = _METHODS[action]
            if method != allowed and not (method == "HEAD" and allowed == "GET"):
                return self._not_allowed(method, path, allowed)
            if action == "predict":
                return self.predict(name, body)
            if action == "feedback":
                return self.feedback(name, body)
            if action == "rollback":
                return self.rollback(name)
            return self.drift(name)
        except Exception as e:  # the agent's fault, not the caller's: say so, keep serving
            log.exception("local API: %s %s failed", method, path)
            return error_reply(500, f"internal error: {type(e).__name__}: {e}")

    @staticmethod
    def _not_allowed(method: str, path: str, allowed: str) -> Reply:
        allow = f"{allowed}, HEAD" if allowed == "GET" else allowed
        return json_reply({"error": f"{method} is not allowed on {path} (allowed: {allow})"}, 405, (("Allow", allow),))

    def _json_body(self, name: str, body: bytes) -> Any:
        """The parsed body; _BadBody (a 400) for what is not JSON or is JSON the agent will not parse."""
        refusal = json_refusal(body)
        if refusal is None:
            # orjson first: RFC 8259 JSON (what clients send) parses 3-4x faster than with the standard parser,
            # which matters for tensors (a 24x24 image: 0.14 ms -> 0.03 ms). What it refuses (NaN, Infinity,
            # UTF-16/32, 1e400, lone surrogates: Python's json writes and reads some of these) goes to the
            # standard parser, which decides as before: same answers, same error messages.
            with contextlib.suppress(orjson.JSONDecodeError):
                return orjson.loads(body)
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self.metrics.prediction_errors.labels(name, "bad_json").inc()
                raise _BadBody(f"body is not JSON: {e}") from e
            except RecursionError:  # a backstop: reached only with MAX_JSON_DEPTH above the parser's limit
                refusal = "json_depth", f"body is JSON nested too deep to parse (at most {MAX_JSON_DEPTH} levels)"
            except ValueError as e:  # likewise: an integer past Python's 4300-digit limit
                refusal = "json_number", f"body is JSON with a number the agent will not read: {e}"
        reason, message = refusal
        self.metrics.prediction_errors.labels(name, "bad_json").inc()
        self.metrics.api_refusals.labels(reason).inc()
        raise _BadBody(message)

    def predict(self, name: str, body: bytes) -> Reply:
        service = self.service
        if self.serving.get(name) is None and not service.has_fallback(name):
            return error_reply(404, f"no model named {name!r} is serving")
        try:
            payload = self._json_body(name, body)
        except _BadBody as e:
            return error_reply(400, str(e))
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            self.metrics.prediction_errors.labels(name, "bad_request").inc()
            return error_reply(422, 'body must be {"inputs": {"<tensor name>": [...]}}')
        try:
            answer = service.predict(name, payload["inputs"])
        except NotServing as e:
            return error_reply(404, str(e))
        except FallbackError as e:
            status = 503 if isinstance(e, FallbackUnavailable) else 504 if isinstance(e, FallbackTimeout) else 502
            return error_reply(status, f"cloud fallback failed: {e}", fallback_reason=e.reason)
        except (InputError, ModelLoadError) as e:  # ModelLoadError: the runtime refused inputs that passed validation
            return error_reply(422, str(e))
        nonfinite = [k for k, v in answer.outputs.items() if _float(v) and not np.isfinite(v).all()]
        if nonfinite:  # JSON has no NaN or inf: say why instead of sending an invalid body
            names = ", ".join(nonfinite)
            if _has_nonfinite(payload["inputs"]):
                self.metrics.prediction_errors.labels(name, "bad_input").inc()
                return error_reply(422, f"inputs hold NaN or inf, so output(s) {names} do too (not valid JSON)")
            self.metrics.prediction_errors.labels(name, "nonfinite_output").inc()
            return error_reply(500, f"the model's output(s) {names} hold NaN or inf for these inputs (not valid JSON)")
        return json_reply(answer.to_json())

    def predict_pipeline(self, name: str, body: bytes) -> Reply:
        """`{"inputs": {...}}` -> the pipeline's outputs, its version and each stage's and step's time."""
        label = f"pipeline:{name}"
        if self.pipeline_service is None or not self.pipeline_service.serves(name):
            return error_reply(404, f"no pipeline named {name!r} is serving")
        try:
            payload = self._json_body(label, body)
        except _BadBody as e:
            return error_reply(400, str(e))
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            self.metrics.prediction_errors.labels(label, "bad_request").inc()
            return error_reply(422, 'body must be {"inputs": {"<pipeline input name>": [...]}}')
        try:
            answer = self.pipeline_service.predict(name, payload["inputs"])
        except NotServing as e:
            return error_reply(404, str(e))
        except FallbackError as e:
            status = 503 if isinstance(e, FallbackUnavailable) else 504 if isinstance(e, FallbackTimeout) else 502
            return error_reply(status, f"cloud fallback failed: {e}", fallback_reason=e.reason)
        except (InputError, ModelLoadError) as e:
            return error_reply(422, str(e))
        nonfinite = [k for k, v in answer.outputs.items() if _float(v) and not np.isfinite(v).all()]
        if nonfinite:
            return error_reply(500, f"the pipeline's output(s) {', '.join(nonfinite)} hold NaN or inf (not valid JSON)")
        return json_reply(answer.to_json())

    def pipelines(self) -> Reply:
        return json_reply({"pipelines": self.pipelines_view()})

    def feedback(self, name: str, body: bytes) -> Reply:
        try:
            payload = self._json_body(name, body)
        except _BadBody as e:
            return error_reply(400, str(e))
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("prediction_id"), str)
            or type(payload.get("label")) is not int
        ):
            return error_reply(422, 'body must be {"prediction_id": "<id from predict>", "label": <int class>}')
        if not self.service.feedback(name, payload["prediction_id"], payload["label"]):
            pid = payload["prediction_id"]
            return error_reply(404, f"unknown or expired prediction id {pid!r}, or label out of range")
        return json_reply({"accepted": True, "model": name, "prediction_id": payload["prediction_id"]})

    def drift(self, name: str) -> Reply:
        recorders = self.service.recorders
        found = recorders.drift(name) if recorders is not None else None
        if found is None:
            return error_reply(404, f"no telemetry window for {name!r} yet")
        return json_reply(drift_view(*found))

    def healthz(self) -> Reply:
        health = self.health_view()
        return json_reply(health, 200 if health.get("status") == "ok" else 503)

    def models(self) -> Reply:
        return json_reply({"models": self.models_view()})

    def prometheus(self) -> Reply:
        return Reply(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    def rollback(self, name: str) -> Reply:
        if self.request_rollback is None:
            return error_reply(404, "rollback is not available here")
        if not any(m["name"] == name for m in self.models_view()):
            return error_reply(404, f"no model named {name!r}")
        self.request_rollback(name)
        return json_reply({"queued": "rollback", "model": name}, 202)


class _BadBody(Exception):
    pass


def json_refusal(body: bytes) -> tuple[str, str] | None:
    """Why the agent will not parse `body` (reason, message): nested deeper than MAX_JSON_DEPTH or a number
    longer than MAX_NUMBER_CHARS; None when neither. A scan of the bytes with strings blanked out, before
    parsing: json.loads recurses once per level (a 100k-deep body was a 500 RecursionError) and refuses
    integers past 4300 digits with a ValueError. It costs about a fifth of what json.loads does."""
    encoding = json.detect_encoding(body)
    if not encoding.startswith("utf-8"):  # UTF-16/32, which json.loads accepts: scan its UTF-8 form
        with contextlib.suppress(UnicodeDecodeError):
            body = body.decode(encoding).encode()
    structure = _JSON_STRING.sub(b'""', body)
    steps = structure.translate(_BRACKET_STEP, _NOT_BRACKET)
    if len(steps) > MAX_JSON_DEPTH and np.cumsum(np.frombuffer(steps, np.int8), dtype=np.int32).max() > MAX_JSON_DEPTH:
        return "json_depth", f"body is JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if b"0" * (MAX_NUMBER_CHARS + 1) in structure.translate(_NUMBER_CHAR):
        return "json_number", f"body is JSON with a number longer than {MAX_NUMBER_CHARS} characters"
    return None


def _float(value: Any) -> bool:
    """Float outputs can hold NaN/inf; integer, bool and string ones (an ONNX label output) cannot."""
    return np.asarray(value).dtype.kind in "fc"


def _has_nonfinite(inputs: dict[str, Any]) -> bool:
    for value in inputs.values():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            continue
        if not np.isfinite(array).all():
            return True
    return False
