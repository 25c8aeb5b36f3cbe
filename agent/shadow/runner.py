"""The shadow worker of one candidate: sampled live requests, after their reply, on a thread of its own.

The serving path calls `offer` once a request has been answered and recorded. `offer` draws the sample
(`fraction`, one `random()` call), and either copies the request's inputs and the serving outputs into a
bounded queue or, when the queue is full, counts the request as dropped: it never waits for the candidate and
never touches the caller's arrays or answer. The worker thread takes samples one at a time, runs the candidate on
the same inputs, compares (agent/shadow/compare.py) and adds the result to the open window
(agent/shadow/window.py). After each sample that kept it busy for t seconds it idles t * (1 - b) / b, so it keeps
at most `cpu_budget` (b) of one core; what arrives meanwhile waits in the queue or is dropped.

The busy time is wall time on the worker thread (candidate run, comparison, bookkeeping): for a candidate whose
runtime spreads one call over several threads it undercounts; for one that waits on memory it overcounts.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import AgentError
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.settings import ShadowSettings
from agent.shadow.compare import Kind, compare, paired, rows_of
from agent.shadow.window import ShadowWindow
from protocol.manifest import Manifest, Task
from protocol.shadow import ShadowSummary

log = logging.getLogger(__name__)

IDLE_TICK_S = 1.0  # how long the worker sleeps at most with nothing to do (it wakes at once for a sample)
STOP_WAIT_S = 10.0

Emit = Callable[[ShadowSummary], None]


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered request handed to the shadow: copies of its inputs and the serving version's outputs."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    serving_ms: float
    serving_version: int


def idle_after(busy_s: float, budget: float) -> float:
    """Seconds to idle after `busy_s` of work, so that the work is at most `budget` of the time."""
    return busy_s * (1.0 - budget) / budget


def kind_of(manifest: Manifest) -> Kind:
    return "classifier" if manifest.task is Task.CLASSIFICATION else "regressor"


class ShadowRunner:
    """Runs one candidate version on sampled requests of its model and sends its windows through `emit`."""

    def __init__(
        self,
        model: LoadedModel,
        manifest: Manifest,
        *,
        fraction: float,
        settings: ShadowSettings,
        emit: Emit,
        metrics: AgentMetrics,
        rollout_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = manifest.name
        self.version = manifest.version
        self.model = model
        self.kind = kind_of(manifest)
        self.atol, self.rtol = manifest.golden.atol, manifest.golden.rtol
        self.fraction = fraction
        self.rollout_id = rollout_id
        self.settings = settings
        self._emit = emit
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._batch_first = model.outputs[0].batch_first if model.outputs else True
        self._capacity = settings.queue_size
        self._pending: deque[Sample] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._halt = threading.Event()
        self._closed = False  # set by stop(): the last window is out; nothing more is added
        self._window = ShadowWindow(self.name, self.version, self.kind, clock)
        self.totals = {"samples": 0, "agreed": 0, "dropped": 0, "failed": 0}  # since the shadow started
        self.busy_s = self.idle_s = 0.0
        self.last_failure: str | None = None
        self._samples_metric = metrics.shadow_samples.labels(self.name)
        self._dropped_metric = metrics.shadow_dropped.labels(self.name)
        self._failed_metric = metrics.shadow_failed.labels(self.name)
        self._thread = threading.Thread(target=self._run, name=f"shadow-{self.name}", daemon=True)

    def start(self) -> ShadowRunner:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # ---- the serving thread's side --------------------------------------------------------------
    def offer(
        self, inputs: Mapping[str, Any], outputs: Mapping[str, Any], serving_ms: float, serving_version: int
    ) -> None:
        """One answered request: sampled, then queued (copied) or counted as dropped. Never blocks on the worker."""
        if self.fraction < 1.0 and self._random() >= self.fraction:
            return
        if len(self._pending) < self._capacity:  # read without the lock: a full queue costs no copy
            sample = Sample(
                {k: np.array(v) for k, v in inputs.items()},
                {k: np.array(v) for k, v in outputs.items()},
                serving_ms,
                serving_version,
            )
            with self._ready:
                if len(self._pending) < self._capacity:
                    self._pending.append(sample)
                    self._ready.notify()
                    return
        with self._lock:
            self._window.add_dropped()
            self.totals["dropped"] += 1
        self._dropped_metric.inc()

    # ---- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._halt.is_set():
            sample = self._take()
            busy = 0.0
            if sample is not None:
                began = time.perf_counter()
                self._evaluate(sample)
                busy = time.perf_counter() - began
            self._close_if_due()
            if busy:
                idle = idle_after(busy, self.settings.cpu_budget)
                self.busy_s += busy
                self.idle_s += idle
                if idle > 0:
                    self._halt.wait(idle)

    def _take(self) -> Sample | None:
        with self._ready:
            if not self._pending and not self._halt.is_set():
                self._ready.wait(self._until_due())
            return self._pending.popleft() if self._pending else None

    def _until_due(self) -> float:
        """How long the worker may sleep: until the open window's time is up, at most IDLE_TICK_S (lock held)."""
        if self._window.empty:
            return IDLE_TICK_S
        left = self._window.opened_at + self.settings.window_s - self._clock()
        return min(IDLE_TICK_S, max(0.01, left))

    def _evaluate(self, sample: Sample) -> None:
        first = next(iter(sample.outputs.values()), None)
        rows = rows_of(first, self._batch_first) if first is not None else 1
        try:
            began = time.perf_counter()
            outputs = self.model.predict(sample.inputs)
            candidate_ms = (time.perf_counter() - began) * 1000
            comparison = compare(self.kind, paired(outputs, sample.outputs), rows=rows, atol=self.atol, rtol=self.rtol)
        except AgentError as e:  # the candidate refused these inputs, or its outputs do not line up
            self._failed(rows, sample.serving_version, f"{type(e).__name__}: {e}")
            return
        except Exception as e:  # a runtime's bug must not end the worker: logged with its traceback, counted
            log.exception("shadow %s v%s: unexpected error", self.name, self.version)
            self._failed(rows, sample.serving_version, f"unexpected {type(e).__name__}: {e}")
            return
        closed = None
        with self._lock:
            if self._closed:
                return
            if self._window.serves_other(sample.serving_version):
                closed = self._window.close()
            self._window.add(comparison, sample.serving_ms, candidate_ms, sample.serving_version)
            self.totals["samples"] += comparison.rows
            self.totals["agreed"] += comparison.agreed
        self._samples_metric.inc(comparison.rows)
        if closed is not None:
            self._send(closed)

    def _failed(self, rows: int, serving_version: int, reason: str) -> None:
        if reason != self.last_failure:  # each new reason once; repeats are counted, not logged
            log.warning("shadow %s v%s cannot answer a request: %s", self.name, self.version, reason)
            self.last_failure = reason
        closed = None
        with self._lock:
            if self._closed:
                return
            if self._window.serves_other(serving_version):
                closed = self._window.close()
            self._window.add_failed(rows, serving_version)
            self.totals["failed"] += rows
        self._failed_metric.inc(rows)
        if closed is not None:
            self._send(closed)

    def _close_if_due(self) -> None:
        with self._lock:
            if self._closed or not self._window.due(self.settings.window_s, self.settings.window_samples):
                return
            summary = self._window.close()
        if summary is not None:
            self._send(summary)

    def _send(self, summary: ShadowSummary) -> None:
        try:
            self._emit(summary)
        except Exception:  # the events outbox failed (disk full...): this window is lost, the worker goes on
            log.exception("shadow %s v%s: cannot store a window", self.name, self.version)

    # ---- stop -----------------------------------------------------------------------------------
    def stop(self) -> ShadowSummary | None:
        """Stop the worker; what still waits in the queue is counted as dropped in the open window, which is sent
        (and returned)."""
        self._halt.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("shadow %s v%s: the candidate is still running after %.0f s; its window is sent "
                            "without it", self.name, self.version, STOP_WAIT_S)  # fmt: skip
        with self._lock:
            self._closed = True
            unrun = len(self._pending)  # sampled, never compared: dropped, as when the queue is full
            self._pending.clear()
            if unrun:
                self._window.add_dropped(unrun)
                self.totals["dropped"] += unrun
            summary = self._window.close()
        if unrun:
            self._dropped_metric.inc(unrun)
        if summary is not None:
            self._send(summary)
        return summary

    def status(self) -> dict[str, Any]:
        """Where the shadow stands, for the local API's health view."""
        with self._lock:
            totals, queued = dict(self.totals), len(self._pending)
        return {
            "version": self.version,
            "state": "running" if self.running else "stopped",
            "kind": self.kind,
            "fraction": self.fraction,
            "rollout_id": self.rollout_id,
            **totals,
            "queued": queued,
            "busy_s": round(self.busy_s, 3),
            "idle_s": round(self.idle_s, 3),
            "last_failure": self.last_failure,
        }
