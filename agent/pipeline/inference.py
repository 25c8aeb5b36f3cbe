"""Pipeline predictions for the local API and in-process callers: the served stage set, counted and recorded.

Telemetry per stage: each stage is a model version with a manifest and a baseline, so its inputs, outputs and
latency go into that version's telemetry window (agent/telemetry), as if the model had been called on its own:
the hub sees each stage's latency and drift against the stage's own baseline. The whole pipeline's latency is a
Prometheus histogram (`edgefleet_agent_predict_seconds{model="pipeline:<name>"}`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import AgentError, InputError
from agent.inference import NotServing
from agent.metrics import AgentMetrics
from agent.pipeline.runner import PipelineResult, PipelineRunner
from agent.pipeline.serving import PipelineRegistry
from agent.telemetry.recorders import Recorders


class PipelineInference:
    """Answers `predict(name, inputs)` from the pipeline version serving now."""

    def __init__(
        self,
        registry: PipelineRegistry,
        metrics: AgentMetrics | None = None,
        recorders: Recorders | None = None,
        on_window_full: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.recorders = recorders
        self._on_window_full = on_window_full

    def predict(self, name: str, inputs: Mapping[str, Any]) -> tuple[int, PipelineResult]:
        served = self.registry.get(name)
        if served is None:
            raise NotServing(f"no pipeline named {name!r} is serving")
        start = time.perf_counter()
        try:
            result = served.runner.run(inputs, self._recorder(served.runner))
        except InputError:
            if self.metrics is not None:
                self.metrics.prediction_errors.labels(f"pipeline:{name}", "bad_input").inc()
            raise
        except AgentError:  # a stage's runtime refused inputs that passed validation
            served.errors += 1
            if self.metrics is not None:
                self.metrics.prediction_errors.labels(f"pipeline:{name}", "runtime").inc()
            raise
        served.requests += 1
        if self.metrics is not None:
            self.metrics.predict_series(f"pipeline:{name}").observe(time.perf_counter() - start)
        return served.version, result

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


def _ignore(_stage: str, _feeds: Mapping[str, Any], _outputs: Mapping[str, Any], _ms: float) -> None:
    """No telemetry (a runner used outside the daemon)."""
