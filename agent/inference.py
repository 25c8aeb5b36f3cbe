"""The serving path: device or cloud answers, recorded into telemetry, for the local API and in-process use.

Per request: the serving version's model (or none), the model's FallbackRouter when an endpoint is
configured, then one in-memory `WindowRecorder.record` (no I/O). Without an endpoint the router is
skipped entirely, so the device-only path costs what it did before plus the recording. When a candidate
of the model is under shadow evaluation, a device answer is then handed to it (agent/shadow/runner.py:
a sampling draw, and for a sampled request a copy into a bounded queue; never a wait for the candidate).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from agent.errors import AgentError, InputError
from agent.fallback.config import EndpointConfig, FallbackPolicy
from agent.fallback.errors import FallbackError
from agent.fallback.router import FallbackRouter
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.serving import ServedModel, ServingRegistry
from agent.telemetry.recorders import Recorders
from protocol.manifest import Manifest

log = logging.getLogger(__name__)


class ShadowSink(Protocol):
    """A candidate under shadow evaluation (agent.shadow.runner.ShadowRunner), as the serving path sees it."""

    def offer(
        self, inputs: Mapping[str, Any], outputs: Mapping[str, Any], serving_ms: float, serving_version: int
    ) -> None: ...


class NotServing(AgentError):
    """No local version of the model serves and no cloud endpoint is configured for it."""


@dataclass(frozen=True)
class Prediction:
    """One answer: outputs, who answered (and why the cloud did), ids for delayed labels."""

    model: str
    outputs: dict[str, np.ndarray]
    source: Literal["device", "cloud"]
    version: int | None
    reason: str | None = None
    note: str | None = None
    prediction_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "source": self.source,
            "outputs": {k: np.asarray(v).tolist() for k, v in self.outputs.items()},
        }
        if self.prediction_ids:
            body["prediction_ids"] = self.prediction_ids
        if self.reason is not None:
            body["fallback_reason"] = self.reason
        if self.note:
            body["note"] = self.note
        return body


def batch_arrays(model: LoadedModel, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inputs as arrays under their public names (a flat list of whole samples of a batch-first tensor becomes
    rows), for the model and the recorder."""
    out: dict[str, np.ndarray] = {}
    for key, raw in model.resolve(inputs).items():
        try:
            value = np.asarray(raw)
        except (ValueError, TypeError) as e:
            raise InputError(f"input {key!r}: not a numeric array: {e}") from e
        b = model.binding(key)
        size = b.sample_size
        if b.batch_first and value.ndim == 1 and len(b.shape) > 1 and size and value.size and value.size % size == 0:
            value = value.reshape((-1, *(d for d in b.shape[1:] if d is not None)))
        out[key] = value
    return out


def request_rows(model: LoadedModel, arrays: Mapping[str, np.ndarray]) -> int:
    """Rows (samples) of one request: the batch of its first batch-first input, else one, as telemetry counts."""
    for b in model.inputs:
        value = arrays.get(b.name)
        if b.batch_first and value is not None and np.ndim(value) >= 1:
            return len(value)
    return 1


class InferenceService:
    """Answers predictions for every model name; owns the per-model fallback routers."""

    def __init__(
        self,
        serving: ServingRegistry,
        metrics: AgentMetrics,
        recorders: Recorders | None = None,
        *,
        endpoints: Mapping[str, EndpointConfig] | None = None,
        policies: Mapping[str, FallbackPolicy] | None = None,
        online: Callable[[], bool] = lambda: True,
        self_test_failed: Callable[[str], bool] = lambda _name: False,
        manifest_of: Callable[[str], Manifest | None] = lambda _name: None,
        on_window_full: Callable[[], None] = lambda: None,
        shadows: Mapping[str, ShadowSink] | None = None,
    ) -> None:
        self.serving = serving
        self.metrics = metrics
        self.recorders = recorders
        self.endpoints = dict(endpoints or {})
        self.policies = dict(policies or {})
        self._online = online
        self._self_test_failed = self_test_failed
        self._manifest_of = manifest_of
        self._on_window_full = on_window_full
        # Model name -> its shadow (the daemon's ShadowManager.active: mutated in place, read here without a lock).
        self.shadows: Mapping[str, ShadowSink] = shadows if shadows is not None else {}
        self._routers: dict[str, tuple[int | None, FallbackRouter]] = {}
        self._unrecordable: set[tuple[str, int]] = set()  # model versions whose telemetry refused an answer (logged)
        self._lock = threading.Lock()

    def has_fallback(self, name: str) -> bool:
        """Whether a request for `name` may go over the network (then callers run it off the event loop)."""
        return name in self.endpoints

    def router(self, name: str, manifest: Manifest | None) -> FallbackRouter:
        """The model's router, rebuilt when a (new) manifest names its outputs."""
        from agent.fallback.client import CloudClient, OutputShape  # httpx: loaded only with an endpoint

        key = manifest.version if manifest else None
        with self._lock:
            cached = self._routers.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
            if manifest is not None:
                outputs = [OutputShape(o.name, tuple(o.shape[1:])) for o in manifest.outputs]
            else:  # nothing fetched yet: one output, only the batch size can be checked
                outputs = [OutputShape("output", None)]
            client = CloudClient(self.endpoints[name], outputs, online=self._online)
            router = FallbackRouter(client, self.policies.get(name, FallbackPolicy()))
            if cached is not None and cached[1].client is not None:
                cached[1].client.close()
            self._routers[name] = (key, router)
            return router

    def predict(self, name: str, inputs: Mapping[str, Any]) -> Prediction:
        """Answer from the device, or from the cloud when the policy says so; telemetry either way."""
        served = self.serving.get(name)
        if name not in self.endpoints:
            if served is None:
                raise NotServing(f"no model named {name!r} is serving")
            return self._device(served, inputs)
        manifest = served.model.manifest if served is not None else self._manifest_of(name)
        router = self.router(name, manifest)
        try:
            arrays = batch_arrays(served.model, inputs) if served is not None else dict(inputs)
            start = time.perf_counter()
            answer = router.answer(
                arrays,
                served.model if served is not None else None,
                served.version if served is not None else None,
                self_test_failed=served is None and self._self_test_failed(name),
            )
        except InputError:
            self.metrics.prediction_errors.labels(name, "bad_input").inc()
            raise
        except FallbackError as e:
            seconds = time.perf_counter() - start
            rows = request_rows(served.model, arrays) if served is not None else 1
            self._fallback_done(name, served, manifest, e.reason, ok=False, failed=True, seconds=seconds, rows=rows)
            raise
        ms = (time.perf_counter() - start) * 1000
        if answer.reason is not None:
            ok = answer.source == "cloud"
            self._fallback_done(name, served, manifest, answer.reason.value, ok=ok, failed=False, seconds=ms / 1000)
        ids: list[str] = []
        if served is not None:
            ids = self._record(served, arrays, answer.outputs, ms)
        self._count(name, ms)
        if served is not None and answer.source == "device":  # a cloud answer is not shadowed
            shadow = self.shadows.get(name)
            if shadow is not None:
                shadow.offer(arrays, answer.outputs, ms, served.version)
        return Prediction(
            name, answer.outputs, answer.source, answer.version, answer.reason and answer.reason.value, answer.note, ids
        )

    def _device(self, served: ServedModel, inputs: Mapping[str, Any]) -> Prediction:
        try:
            arrays = batch_arrays(served.model, inputs)
            start = time.perf_counter()
            outputs = served.model.predict(arrays)
        except InputError:
            self.metrics.prediction_errors.labels(served.name, "bad_input").inc()
            raise
        except AgentError:  # the runtime refused inputs that passed validation
            served.errors += 1
            self.metrics.prediction_errors.labels(served.name, "runtime").inc()
            if self.recorders is not None and served.model.manifest is not None:
                self.recorders.get(served.model.manifest).record_error(request_rows(served.model, arrays))
            raise
        ms = (time.perf_counter() - start) * 1000
        ids = self._record(served, arrays, outputs, ms)
        self._count(served.name, ms)
        shadow = self.shadows.get(served.name)
        if shadow is not None:  # after the answer is made and recorded; it is returned unchanged
            shadow.offer(arrays, outputs, ms, served.version)
        return Prediction(served.name, outputs, "device", served.version, prediction_ids=ids)

    def _record(
        self, served: ServedModel, arrays: dict[str, np.ndarray], outputs: Mapping[str, np.ndarray], ms: float
    ) -> list[str]:
        served.requests += 1
        if self.recorders is None or served.model.manifest is None:
            return []
        rec = self.recorders.get(served.model.manifest)
        try:
            ids = rec.record(arrays, outputs, ms, keep_ids=True)
        except (ValueError, IndexError) as e:  # values the manifest's baseline cannot bin: the answer still goes out
            key = (served.name, served.version)
            if key not in self._unrecordable:
                self._unrecordable.add(key)
                log.warning("telemetry of %s v%s cannot record this model's answers (%s); they are served "
                            "unrecorded", served.name, served.version, e)  # fmt: skip
            self.metrics.telemetry_unrecorded.labels(served.name).inc()
            return []
        if rec.n >= rec.window_size:
            self._on_window_full()  # the uplink closes it now instead of at its next tick
        return ids

    def _count(self, name: str, ms: float) -> None:
        self.metrics.predict_series(name).observe(ms / 1000)

    def _fallback_done(
        self,
        name: str,
        served: ServedModel | None,
        manifest: Manifest | None,
        reason: str | None,
        *,
        ok: bool,
        failed: bool,
        seconds: float,
        rows: int = 1,
    ) -> None:
        """Count one fallback (answered or failed) in Prometheus and in the window of the right version."""
        reason = reason or "unknown"
        self.metrics.fallback.labels(name, reason, "ok" if ok else "error").inc()
        self.metrics.fallback_seconds.labels(name).observe(seconds)
        if self.recorders is None:
            return
        if served is not None and served.model.manifest is not None:
            rec = self.recorders.get(served.model.manifest)
            rec.record_fallback(reason, ok, seconds * 1000)
            if failed:  # no answer at all for this request: an error per row, as requests are counted per row
                rec.record_error(rows)
            return
        version = manifest.version if manifest is not None else self.endpoints[name].version
        if version is not None:
            self.recorders.record_no_model(name, version, reason, ok, seconds * 1000)

    def feedback(self, name: str, prediction_id: str, label: int) -> bool:
        """Fold a delayed label into the window of the version that made the prediction."""
        if self.recorders is None:
            return False
        head = prediction_id.split("-", 1)[0]
        rec = self.recorders.find(name, int(head)) if head.isdigit() else None
        return rec is not None and rec.feedback(prediction_id, label)
