"""The models currently serving: swapped atomically after a self-test, read by the API and metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.model import LoadedModel


@dataclass
class ServedModel:
    """One model version that answers predictions, with its counters."""

    name: str
    version: int
    model: LoadedModel
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    requests: int = 0
    errors: int = 0


class ServingRegistry:
    """Thread-safe name -> served model map."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}

    def install(self, name: str, version: int, model: LoadedModel) -> ServedModel:
        """Serve `model` as `name` from now on (the old one finishes its in-flight calls)."""
        served = ServedModel(name, version, model)
        with self._lock:
            self._models[name] = served
        return served

    def remove(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def get(self, name: str) -> ServedModel | None:
        with self._lock:
            return self._models.get(name)

    def all(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())
