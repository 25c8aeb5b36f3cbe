"""One candidate's open shadow window: counts that close into a `ShadowSummary` (protocol/shadow.py).

Windows are incremental: each closed one holds only what happened since the previous one closed, so the hub adds
them up (merge_shadow). A window closes after `window_samples` compared rows or `window_s` seconds, whichever
comes first, and when the serving version changes (a summary names one serving version). Not thread-safe: the
runner (agent/shadow/runner.py) holds its lock around every call.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.shadow.compare import FLOAT_MAX, Comparison, Kind
from protocol.shadow import BUCKETS, ShadowSummary
from protocol.telemetry import latency_bucket


class ShadowWindow:
    """The counts of the window open now."""

    def __init__(self, model: str, version: int, kind: Kind, clock: Callable[[], float]) -> None:
        self.model = model
        self.version = version
        self.kind = kind
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self.opened_at = self._clock()  # from the window's first evidence once it has some
        self.serving_version: int | None = None
        self.samples = self.agreed = self.dropped = self.failed = self.elements = 0
        self.abs_error_sum = self.sq_error_sum = self.max_abs_error = 0.0
        self.serving_ms_sum = self.candidate_ms_sum = 0.0
        self.serving_buckets = [0] * BUCKETS
        self.candidate_buckets = [0] * BUCKETS

    @property
    def empty(self) -> bool:
        return not (self.samples or self.dropped or self.failed)

    def add(self, comparison: Comparison, serving_ms: float, candidate_ms: float, serving_version: int) -> None:
        """One request compared (its rows, agreement and errors; both latencies of the whole request). A request
        of no rows is no evidence: left out."""
        if comparison.rows == 0:
            return
        self._opening()
        self.serving_version = serving_version
        self.samples += comparison.rows
        self.agreed += comparison.agreed
        self.abs_error_sum = min(self.abs_error_sum + comparison.abs_error_sum, FLOAT_MAX)
        self.sq_error_sum = min(self.sq_error_sum + comparison.sq_error_sum, FLOAT_MAX)
        self.max_abs_error = max(self.max_abs_error, comparison.max_abs_error)
        self.elements += comparison.elements
        self.serving_ms_sum += serving_ms
        self.candidate_ms_sum += candidate_ms
        self.serving_buckets[latency_bucket(serving_ms)] += 1
        self.candidate_buckets[latency_bucket(candidate_ms)] += 1

    def add_failed(self, rows: int, serving_version: int) -> None:
        """A request the candidate could not answer: its rows count as disagreeing (`failed`, not `samples`)."""
        self._opening()
        self.serving_version = serving_version
        self.failed += rows

    def add_dropped(self, requests: int = 1) -> None:
        """Requests sampled while the queue was full: never run."""
        self._opening()
        self.dropped += requests

    def _opening(self) -> None:
        if self.empty:
            self.opened_at = self._clock()

    def serves_other(self, serving_version: int) -> bool:
        """Whether the open window holds evidence against another serving version (then it closes first)."""
        return self.serving_version is not None and self.serving_version != serving_version and not self.empty

    def due(self, window_s: float, window_samples: int) -> bool:
        """Whether the window holds `window_samples` rows (compared or failed) or evidence `window_s` seconds old."""
        if self.empty:
            return False
        return self.samples + self.failed >= window_samples or self._clock() - self.opened_at >= window_s

    def close(self) -> ShadowSummary | None:
        """The window's summary (None when nothing happened in it); the next window opens."""
        if self.empty:
            self._reset()
            return None
        summary = ShadowSummary(
            model=self.model,
            version=self.version,
            serving_version=self.serving_version,
            kind=self.kind,
            samples=self.samples,
            agreed=self.agreed,
            dropped=self.dropped,
            failed=self.failed,
            abs_error_sum=self.abs_error_sum,
            sq_error_sum=self.sq_error_sum,
            max_abs_error=self.max_abs_error,
            elements=self.elements,
            serving_ms_sum=self.serving_ms_sum,
            candidate_ms_sum=self.candidate_ms_sum,
            serving_latency_buckets=self.serving_buckets,
            candidate_latency_buckets=self.candidate_buckets,
        )
        self._reset()
        return summary
