"""Pipeline predictions for the local API and in-process callers: the served stage set, counted and recorded,
and the cloud when the pipeline does not serve here and an endpoint is configured for it.

Telemetry per stage: each stage is a model version with a manifest and a baseline, so its inputs, outputs and
latency go into that version's telemetry window (agent/telemetry), as if the model had been called on its own:
the hub sees each stage's latency and drift against the stage's own baseline. End to end, each call is counted in
the pipeline version's own window (`TelemetrySummary.unit` "pipeline": calls, errors, latency, fallback), which
the hub's telemetry gates judge for pipeline rollouts; and in a Prometheus histogram
(`edgefleet_agent_predict_seconds{model="pipeline:<name>"}`).

Cloud fallback per pipeline (`[pipeline_fallback.NAME]`): an endpoint that serves the whole pipeline as one
model (a Triton ensemble, a KServe inference graph, any server of the three protocols agent/fallback speaks)
answers when no version of the pipeline serves on the device (not installed yet, or its only version failed its
self-test) or a stage's runtime fails, as the policy allows. It is the model fallback's router
(agent/fallback/router.py) with the pipeline as the local model; the output names come from the pipeline's spec
(the serving version's, else the one being downloaded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from agent.errors import AgentError, InputError
from agent.fallback.config import EndpointConfig, FallbackPolicy
from agent.fallback.errors import FallbackError, FallbackUnavailable
from agent.fallback.router import FallbackRouter
from agent.inference import NotServing
from agent.metrics import AgentMetrics
from agent.pipeline.runner import PipelineRunner, coerce_inputs
from agent.pipeline.serving import PipelineRegistry
from agent.telemetry.recorders import Recorders
from protocol.pipeline import PipelineSpec


@dataclass(frozen=True)
class PipelineAnswer:
    """One pipeline answer: who gave it (and why the cloud did), each node's time when the device did."""

    name: str
    version: int | None
    outputs: dict[str, np.ndarray]
    node_ms: dict[str, float] = field(default_factory=dict)
    source: Literal["device", "cloud"] = "device"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "pipeline": self.name,
            "version": self.version,
            "source": self.source,
            "outputs": {k: np.asarray(v).tolist() for k, v in self.outputs.items()},
            "timings_ms": {k: round(v, 4) for k, v in self.node_ms.items()},
        }
        if self.reason is not None:
            body["fallback_reason"] = self.reason
        return body


class PipelineInference:
    """Answers `predict(name, inputs)` from the pipeline version serving now, or from its cloud endpoint."""

    def __init__(
        self,
        registry: PipelineRegistry,
        metrics: AgentMetrics | None = None,
        recorders: Recorders | None = None,
        on_window_full: Callable[[], None] = lambda: None,
        *,
        endpoints: Mapping[str, EndpointConfig] | None = None,
        policies: Mapping[str, FallbackPolicy] | None = None,
        online: Callable[[], bool] = lambda: True,
        spec_of: Callable[[str], PipelineSpec | None] = lambda _name: None,
        self_test_failed: Callable[[str], bool] = lambda _name: False,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.recorders = recorders
        self._on_window_full = on_window_full
        self.endpoints = dict(endpoints or {})
        self.policies = dict(policies or {})
        self._online = online
        self._spec_of = spec_of
        self._self_test_failed = self_test_failed
        self._routers: dict[str, tuple[tuple[str, int] | None, FallbackRouter]] = {}
        self._lock = threading.Lock()

    def serves(self, name: str) -> bool:
        """Whether a request for `name` can be answered (here, or by its cloud endpoint)."""
        return self.registry.get(name) is not None or name in self.endpoints

    def predict(self, name: str, inputs: Mapping[str, Any]) -> PipelineAnswer:
        served = self.registry.get(name)
        if served is None and name not in self.endpoints:
            raise NotServing(f"no pipeline named {name!r} is serving")
        start = time.perf_counter()
        try:
            if name in self.endpoints:
                answer = self._routed(name, served.runner if served else None, served.version if served else None,
                                      inputs)  # fmt: skip
            else:
                assert served is not None
                result = served.runner.run(inputs, self._recorder(served.runner))
                answer = PipelineAnswer(name, served.version, result.outputs, result.node_ms)
        except InputError:
            self._count_error(name, "bad_input")
            raise
        except AgentError as e:  # a stage's runtime refused inputs that passed validation (and no cloud took over)
            if served is not None:
                served.errors += 1
            self._count_error(name, "runtime")
            version = served.version if served is not None else self._version_of(name)
            self._window(name, version, None, ok=False, fallback=e.reason if isinstance(e, FallbackError) else None)
            raise
        seconds = time.perf_counter() - start
        if served is not None and answer.source == "device":
            served.requests += 1
        self._window(name, answer.version or (served.version if served else None), seconds * 1000,
                     ok=True, fallback=answer.reason)  # fmt: skip
        if self.metrics is not None:
            self.metrics.predict_series(f"pipeline:{name}").observe(seconds)
        return answer

    def _version_of(self, name: str) -> int | None:
        spec = self._spec_of(name)
        return spec.version if spec is not None else None

    def _window(self, name: str, version: int | None, ms: float | None, *, ok: bool, fallback: str | None) -> None:
        """Count one call in the pipeline version's end-to-end window."""
        if self.recorders is None or version is None:
            return
        self.recorders.record_pipeline(name, version, ms=ms, ok=ok, fallback=fallback)
        if self.recorders.pipeline_window(name, version) >= self.recorders.window_size:
            self._on_window_full()

    def _routed(
        self, name: str, runner: PipelineRunner | None, version: int | None, inputs: Mapping[str, Any]
    ) -> PipelineAnswer:
        spec = runner.spec if runner is not None else self._spec_of(name)
        if spec is None:
            raise FallbackUnavailable(
                f"pipeline {name!r} does not serve here and its spec is not known yet (fetched with its first "
                "update): the cloud's output names are unknown"
            )
        arrays = coerce_inputs(spec, inputs)
        local = _Local(runner, self._recorder(runner)) if runner is not None else None
        answer = self._router(name, spec).answer(
            arrays, local, version, self_test_failed=local is None and self._self_test_failed(name)
        )
        node_ms = local.node_ms if local is not None and answer.source == "device" else {}
        reason = answer.reason.value if answer.reason is not None else None
        return PipelineAnswer(name, answer.version, dict(answer.outputs), node_ms, answer.source, reason)

    def _router(self, name: str, spec: PipelineSpec) -> FallbackRouter:
        from agent.fallback.client import CloudClient, OutputShape  # httpx: loaded only with an endpoint

        key = (spec.name, spec.version)
        with self._lock:
            cached = self._routers.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
            outputs = [OutputShape(out, None) for out in spec.outputs]
            client = CloudClient(self.endpoints[name], outputs, online=self._online)
            router = FallbackRouter(client, self.policies.get(name, FallbackPolicy()))
            if cached is not None and cached[1].client is not None:
                cached[1].client.close()
            self._routers[name] = (key, router)
            return router

    def _count_error(self, name: str, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.prediction_errors.labels(f"pipeline:{name}", kind).inc()

    def _recorder(self, runner: PipelineRunner) -> Callable[[str, Mapping[str, Any], Mapping[str, Any], float], None]:
        recorders = self.recorders
        if recorders is None:
            return _ignore

        def record(stage: str, feeds: Mapping[str, Any], outputs: Mapping[str, Any], ms: float) -> None:
            model = runner.models[stage]
            if model.manifest is None:
                return
            rec = recorders.get(model.manifest)
            rec.record(model.resolve(feeds), outputs, ms)
            if rec.n >= rec.window_size:
                self._on_window_full()

        return record


class _Local:
    """The served pipeline as the router's local model; keeps the last call's node times."""

    def __init__(self, runner: PipelineRunner, on_stage: Callable[..., None]) -> None:
        self.runner = runner
        self.on_stage = on_stage
        self.node_ms: dict[str, float] = {}

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        result = self.runner.run(inputs, self.on_stage)
        self.node_ms = result.node_ms
        return result.outputs


def _ignore(_stage: str, _feeds: Mapping[str, Any], _outputs: Mapping[str, Any], _ms: float) -> None:
    """No telemetry (a runner used outside the daemon)."""
