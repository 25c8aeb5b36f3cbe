"""The recorders of every model version this device serves (or falls back for), and their last windows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.telemetry.recorder import WindowRecorder
from protocol.drift import DriftReport, drift_report
from protocol.manifest import Manifest
from protocol.telemetry import LATENCY_BUCKETS_MS, TelemetrySummary, latency_bucket

Key = tuple[str, int]


class _CountWindow:
    """Answers counted without features, closed like a window: a model's fallback answers while no local version
    serves it, or a pipeline's calls end to end (its stages have windows of their own)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.start = clock()
        self.n = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # answers given here
        self.fallback: dict[str, int] = {}
        self.fallback_errors: dict[str, int] = {}
        self.fallback_latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def add(self, *, ms: float | None, ok: bool, fallback: str | None, rows: int = 1) -> None:
        self.n += rows
        self.errors += 0 if ok else rows
        if fallback is None:
            if ms is not None and ok:
                self.latency[latency_bucket(ms)] += rows
            return
        self.fallback[fallback] = self.fallback.get(fallback, 0) + rows
        if not ok:
            self.fallback_errors[fallback] = self.fallback_errors.get(fallback, 0) + rows
        if ms is not None:
            self.fallback_latency[latency_bucket(ms)] += rows


class Recorders:
    """Thread-safe (model, version) -> WindowRecorder; windows close by size or age, or on flush."""

    def __init__(
        self,
        device_id: str,
        profile: str,
        *,
        window_size: int,
        window_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.profile = profile
        self.window_size = window_size
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[Key, WindowRecorder] = {}
        self._current: dict[str, int] = {}  # model -> version serving now
        self._no_model: dict[Key, _CountWindow] = {}
        self._pipelines: dict[Key, _CountWindow] = {}
        self.last: dict[str, tuple[Manifest, TelemetrySummary]] = {}
        # Set by the telemetry thread's owner (TelemetryUplink): wakes it to count full chunks of rows off
        # the serving path (`bin_pending`). Without it, recorders count them where they fill up.
        self.on_pending: Callable[[], None] | None = None

    def get(self, manifest: Manifest) -> WindowRecorder:
        """The recorder of this version (created on its first prediction)."""
        key = (manifest.name, manifest.version)
        rec = self._live.get(key)  # lock-free fast path: dict reads are atomic
        if rec is not None:
            return rec
        with self._lock:
            rec = self._live.get(key)
            if rec is None:
                rec = WindowRecorder(
                    manifest,
                    self.device_id,
                    window_size=self.window_size,
                    window_seconds=self.window_seconds,
                    clock=self._clock,
                    on_pending=self.on_pending,
                )
                self._live[key] = rec
            self._current[manifest.name] = manifest.version
            return rec

    def bin_pending(self) -> None:
        """Count the rows the serving path copied in (telemetry thread; see `on_pending`)."""
        for rec in list(self._live.values()):
            rec.bin_pending()

    def current(self, name: str) -> WindowRecorder | None:
        version = self._current.get(name)
        return None if version is None else self._live.get((name, version))

    def find(self, name: str, version: int) -> WindowRecorder | None:
        return self._live.get((name, version))

    def record_no_model(self, name: str, version: int, reason: str, ok: bool, latency_ms: float | None = None) -> None:
        """A fallback answer (or failure) while no local version of `name` serves."""
        with self._lock:
            window = self._no_model.setdefault((name, version), _CountWindow(self._clock))
            window.add(ms=latency_ms, ok=ok, fallback=reason)

    def record_pipeline(
        self, name: str, version: int, *, ms: float | None, ok: bool = True, fallback: str | None = None
    ) -> None:
        """One call of a pipeline end to end: answered here in `ms`, failed (`ok` False), or sent to the cloud for
        `fallback` (the reason; `ms` the round trip)."""
        with self._lock:
            window = self._pipelines.setdefault((name, version), _CountWindow(self._clock))
            window.add(ms=ms, ok=ok, fallback=fallback)

    def pipeline_window(self, name: str, version: int) -> int:
        """Calls counted in the open window of a pipeline version (0 without one)."""
        window = self._pipelines.get((name, version))
        return window.n if window is not None else 0

    def close(self, all_windows: bool = False) -> list[TelemetrySummary]:
        """Summaries of every due window (every open one when `all_windows`); retires replaced versions."""
        out: list[TelemetrySummary] = []
        with self._lock:
            live = list(self._live.items())
            current = dict(self._current)
        for (name, version), rec in live:
            retired = current.get(name) != version
            if all_windows or retired or rec.due():
                summary = rec.close_window()
                if summary is not None:
                    out.append(summary)
                    self.last[name] = (rec.manifest, summary)
            if retired:
                with self._lock:
                    self._live.pop((name, version), None)
        now = self._clock()
        for unit, windows in (("model", self._no_model), ("pipeline", self._pipelines)):
            with self._lock:
                due = [(key, w) for key, w in windows.items()
                       if all_windows or w.n >= self.window_size or now - w.start >= self.window_seconds]  # fmt: skip
                for key, _w in due:
                    windows.pop(key, None)
            out += [self._count_summary(unit, name, version, w, now) for (name, version), w in due]
        return out

    def _count_summary(self, unit: str, name: str, version: int, window: _CountWindow, now: float) -> TelemetrySummary:
        return TelemetrySummary(
            device_id=self.device_id,
            unit="pipeline" if unit == "pipeline" else "model",
            model=name,
            version=version,
            profile=self.profile,
            window_start=datetime.fromtimestamp(window.start, UTC),
            window_end=datetime.fromtimestamp(max(now, window.start), UTC),
            n=window.n,
            errors=window.errors,
            fallback=dict(window.fallback),
            fallback_errors=dict(window.fallback_errors),
            fallback_latency_buckets=list(window.fallback_latency),
            latency_buckets=list(window.latency),
        )

    def drift(self, name: str) -> tuple[str, TelemetrySummary, DriftReport] | None:
        """Drift of the open window when it has data, else of the last closed one."""
        rec = self.current(name)
        if rec is not None:
            snap = rec.snapshot()
            if snap.n:
                return "current", snap, drift_report(rec.manifest.baseline, snap)
        if name in self.last:
            manifest, summary = self.last[name]
            return "last", summary, drift_report(manifest.baseline, summary)
        return None
