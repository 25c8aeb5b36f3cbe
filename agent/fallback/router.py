"""Decide, per request, whether the device or the cloud answers — and record why."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from agent.errors import AgentError, InputError
from agent.fallback.config import FallbackPolicy
from agent.fallback.errors import FallbackError, FallbackUnavailable
from agent.fallback.protocols import Arrays

if TYPE_CHECKING:  # the client module imports httpx: only a daemon with an endpoint loads it
    from agent.fallback.client import CloudClient


class FallbackReason(StrEnum):
    NO_MODEL = "no_model"
    RUNTIME_ERROR = "runtime_error"
    SELF_TEST_FAILED = "self_test_failed"
    DATA_QUALITY = "data_quality"
    LOW_CONFIDENCE = "low_confidence"


class LocalModel(Protocol):
    """What the router needs from the device's model (agent.model.LoadedModel fits)."""

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Answer:
    """Outputs and where they came from."""

    outputs: Arrays
    source: Literal["device", "cloud"]
    version: int | None
    reason: FallbackReason | None = None
    note: str | None = None


@dataclass
class FallbackStats:
    """Fallback use for telemetry: calls and errors by reason, and cloud latency."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, reason: FallbackReason, ok: bool, latency_ms: float) -> None:
        with self._lock:
            self.calls[reason.value] += 1
            if not ok:
                self.errors[reason.value] += 1
            self.latency_ms.append(latency_ms)
            del self.latency_ms[:-4096]  # bounded window

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.asarray(self.latency_ms) if self.latency_ms else None
            return {
                "calls": dict(self.calls),
                "errors": dict(self.errors),
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat is not None else None,
                "latency_ms_p95": float(np.percentile(lat, 95)) if lat is not None else None,
            }


def finite_inputs(inputs: Arrays) -> str | None:
    """The default data-quality check: NaN or inf in any input is a reason not to trust the device."""
    for name, value in inputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return f"input {name!r} contains NaN or inf"
    return None


class FallbackRouter:
    """One model's routing: device first, the cloud when the policy says so."""

    def __init__(
        self,
        client: CloudClient | None,
        policy: FallbackPolicy,
        *,
        cloud_version: int | None = None,
        quality_check: Callable[[Arrays], str | None] = finite_inputs,
        stats: FallbackStats | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.cloud_version = cloud_version if cloud_version is not None else (client.cfg.version if client else None)
        self.quality_check = quality_check
        self.stats = stats or FallbackStats()

    def answer(
        self, inputs: Arrays, local: LocalModel | None, local_version: int | None, *, self_test_failed: bool = False
    ) -> Answer:
        """Device answer, or cloud answer with its reason; raises InputError or FallbackError otherwise."""
        if local is None:
            reason = FallbackReason.SELF_TEST_FAILED if self_test_failed else FallbackReason.NO_MODEL
            allowed = self.policy.on_self_test_failed if self_test_failed else self.policy.on_no_model
            return self._cloud(inputs, reason, allowed, "no local model is serving")
        problem = self.quality_check(inputs)
        if problem is not None and self.policy.on_data_quality:
            return self._cloud(inputs, FallbackReason.DATA_QUALITY, True, problem)
        try:
            outputs = local.predict(inputs)
        except InputError:
            raise  # the caller's mistake: the cloud would refuse it too
        except AgentError as e:
            return self._cloud(inputs, FallbackReason.RUNTIME_ERROR, self.policy.on_runtime_error, str(e))
        local_answer = Answer(outputs, "device", local_version)
        threshold = self.policy.min_confidence
        if threshold is not None and _top1(outputs) < threshold:
            try:
                return self._cloud(inputs, FallbackReason.LOW_CONFIDENCE, True, "")
            except FallbackError as e:  # the device's answer is still an answer
                return Answer(outputs, "device", local_version, FallbackReason.LOW_CONFIDENCE, f"cloud failed: {e}")
        return local_answer

    def _cloud(self, inputs: Arrays, reason: FallbackReason, allowed: bool, why: str) -> Answer:
        if not allowed or self.client is None:
            refused = FallbackUnavailable(
                f"{why}; fallback for {reason.value} is off" if not allowed else f"{why}; no cloud endpoint configured"
            )
            refused.reason = reason.value
            raise refused
        start = time.perf_counter()
        try:
            outputs = self.client.predict({k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})
        except FallbackError as e:
            self.stats.record(reason, False, (time.perf_counter() - start) * 1000)
            e.reason = reason.value
            raise
        self.stats.record(reason, True, (time.perf_counter() - start) * 1000)
        return Answer(outputs, "cloud", self.cloud_version, reason, why or None)


def _top1(outputs: Arrays) -> float:
    """Smallest top-1 probability in the batch (first output)."""
    first = np.asarray(next(iter(outputs.values())), dtype=np.float32)
    rows = first.reshape(len(first), -1)
    return float(rows.max(axis=1).min()) if rows.size else 1.0
