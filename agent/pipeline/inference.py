"""Pipeline predictions for the local API and in-process callers: the served stage set, counted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.errors import AgentError, InputError
from agent.inference import NotServing
from agent.pipeline.runner import PipelineResult
from agent.pipeline.serving import PipelineRegistry


class PipelineInference:
    """Answers `predict(name, inputs)` from the pipeline version serving now."""

    def __init__(self, registry: PipelineRegistry) -> None:
        self.registry = registry

    def predict(self, name: str, inputs: Mapping[str, Any]) -> tuple[int, PipelineResult]:
        served = self.registry.get(name)
        if served is None:
            raise NotServing(f"no pipeline named {name!r} is serving")
        try:
            result = served.runner.run(inputs)
        except InputError:
            raise
        except AgentError:  # a stage's runtime refused inputs that passed validation
            served.errors += 1
            raise
        served.requests += 1
        return served.version, result
