"""Per-inference telemetry that costs a row copy: values are buffered and binned in bulk per chunk.

The recorder for one model version keeps in memory: a buffer of input rows, predicted classes (or
output rows) and latencies; counts per baseline bin; error, fallback and label counts. Nothing is
written per inference: `close_window()` returns one `TelemetrySummary` for the outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from protocol.manifest import HistogramBaseline, Manifest, Task
from protocol.telemetry import LATENCY_BUCKETS_MS, FeatureWindow, TelemetrySummary, channel_axis, latency_bucket

CHUNK_ROWS = 256
PIXELS_PER_SAMPLE = 16  # channel grouping: sampled positions per sample and channel
MAX_OPEN_PREDICTIONS = 10_000  # predictions awaiting a delayed label
SETTLE_EVERY = 32  # predict calls whose output rows are kept before their classes are taken in bulk
MAX_PENDING_CHUNKS = 8  # full chunks waiting for the telemetry thread; past this the serving path counts them
# Rows of tensors whose values float32 holds exactly are buffered and binned in float32: half the bytes of
# float64, the same counts (edges rounded outward, `_ceil32` / `_floor32`). A float64 value from JSON for
# such a tensor is rounded to float32 on the way in, as it is for the model. Other dtypes bin in float64.
FLOAT32_EXACT = frozenset({"float32", "float16", "int8", "uint8", "int16", "bool"})


def _ceil32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each value: for any float32 v, `v >= x` exactly when `v >= _ceil32(x)`."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float32)
        below = y < x  # compared in float64
    y[below] = np.nextafter(y[below], np.float32(np.inf))
    return y


def _floor32(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= each value: for any float32 v, `v > x` exactly when `v > _floor32(x)`."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float32)
        above = y > x
    y[above] = np.nextafter(y[above], np.float32(-np.inf))
    return y


class _Binner:
    """Counts of a (rows x features) stream over per-feature baseline bins, with data-quality counts."""

    def __init__(self, hists: list[HistogramBaseline], dtype: str = "float64") -> None:
        self.names = [h.name for h in hists]
        self.bins = max(len(h.counts) for h in hists)
        interior = np.full((len(hists), max(self.bins - 1, 1)), np.inf)
        for i, h in enumerate(hists):
            inner = h.edges[1:-1]
            interior[i, : len(inner)] = inner
        lo, hi = np.array([h.min for h in hists], np.float64), np.array([h.max for h in hists], np.float64)
        interior = interior[:, : self.bins - 1]
        self.lo: np.ndarray
        self.hi: np.ndarray
        if dtype in FLOAT32_EXACT:
            # Values held in float32 compare with the baseline's float64 edges exactly as with these float32
            # ones: bin index (v >= edge) and below (v < min) on edges rounded up, above (v > max) on max
            # rounded down. Same counts as float64 for such values, at half the bytes per pass.
            interior, self.lo, self.hi = _ceil32(interior), _ceil32(lo), _floor32(hi)
        else:
            self.lo, self.hi = lo, hi
        self._edges = np.ascontiguousarray(interior.T)  # row k: every feature's k-th interior edge
        self.counts = np.zeros((len(hists), self.bins), np.int64)
        self.missing = np.zeros(len(hists), np.int64)
        self.below = np.zeros(len(hists), np.int64)
        self.above = np.zeros(len(hists), np.int64)
        self.buffer = np.empty((CHUNK_ROWS, len(hists)), self._edges.dtype)
        self._idx_dtype = np.int8 if self.bins <= 127 else np.int16 if self.bins <= 32767 else np.intp
        # Feature i's bins start at i * bins; int32 keeps the flat bin numbers half the size of intp.
        flat_dtype = np.dtype(np.int32) if (len(hists) * self.bins) < 2**31 - 1 else np.dtype(np.intp)
        self._offsets = (np.arange(len(hists)) * self.bins).astype(flat_dtype)
        self.filled = 0
        self.full: list[np.ndarray] = []  # chunks of CHUNK_ROWS rows copied in and not yet counted
        self._spare: list[np.ndarray] = []

    def add_rows(self, rows: np.ndarray) -> int:
        """Copy rows in; a chunk that fills up waits in `full` to be counted. Returns how many filled up."""
        start = completed = 0
        # float64 into float32 (JSON's numbers): a finite value past float32's range, which only a tensor
        # that does not take it as float32 (bool) lets through validation, becomes inf and counts as
        # non-finite, without numpy's overflow warning.
        narrowing = rows.dtype.kind == "f" and rows.dtype.itemsize > self.buffer.dtype.itemsize
        while start < len(rows):
            take = min(len(rows) - start, CHUNK_ROWS - self.filled)
            if narrowing:
                with np.errstate(over="ignore"):
                    self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            else:
                self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == CHUNK_ROWS:
                self.full.append(self.buffer)
                self.buffer = self._spare.pop() if self._spare else np.empty_like(self.buffer)
                self.filled = 0
                completed += 1
        return completed

    def take_full(self) -> list[np.ndarray]:
        full, self.full = self.full, []
        return full

    def count(self, chunks: list[np.ndarray]) -> _Delta:
        """What `chunks` add to the counts. Reads only the bins, never the counts: safe without the lock
        (numpy lets the GIL go for most of it, so predictions run meanwhile)."""
        delta = (
            np.zeros_like(self.counts),
            np.zeros_like(self.missing),
            np.zeros_like(self.below),
            np.zeros_like(self.above),
        )
        for v in chunks:
            counts, missing, below, above = delta
            finite = np.isfinite(v)
            missing += (~finite).sum(axis=0)
            with np.errstate(invalid="ignore"):
                below += (finite & (v < self.lo)).sum(axis=0)
                above += (finite & (v > self.hi)).sum(axis=0)
                # Bin index = how many interior edges are <= the value; one (rows x features) pass per
                # edge is several times cheaper than a (rows x features x edges) array once features are many.
                # Small integers, one reused mask, float32 values and each edge row contiguous: a 256 x 256
                # chunk of 10 bins takes 0.5-0.7 ms (float64 values and strided edges: 1.6-2.1 ms).
                idx = np.zeros(v.shape, self._idx_dtype)
                ge = np.empty(v.shape, np.bool_)
                for edges in self._edges:
                    np.greater_equal(v, edges, out=ge)
                    idx += ge
            flat = np.add(idx, self._offsets, dtype=self._offsets.dtype)
            flat[~finite] = counts.size  # NaN/inf go to a discard slot
            counts += np.bincount(flat.ravel(), minlength=counts.size + 1)[:-1].reshape(counts.shape)
        return delta

    def add(self, delta: _Delta, chunks: list[np.ndarray]) -> None:
        """Fold counted chunks in (lock held) and keep up to two of their buffers for reuse."""
        for mine, more in zip((self.counts, self.missing, self.below, self.above), delta, strict=True):
            mine += more
        self._spare.extend(chunks[: max(0, 2 - len(self._spare))])

    def flush(self) -> None:
        """Count everything copied in so far, here and now (lock held)."""
        chunks = self.take_full()
        if self.filled:
            chunks.append(self.buffer[: self.filled])
            self.filled = 0
        if chunks:
            self.add(self.count(chunks), [c for c in chunks if len(c) == CHUNK_ROWS])

    def take(self, reset: bool = True) -> _Counts:
        """The window's counts (copies), reset when `reset`; turned into FeatureWindows outside the lock."""
        self.flush()
        counts = (self.names, self.counts.copy(), self.missing.copy(), self.below.copy(), self.above.copy())
        if reset:
            for arr in (self.counts, self.missing, self.below, self.above):
                arr[...] = 0
        return counts


_Counts = tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_Delta = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # counts, missing, below, above


def _features(taken: _Counts) -> list[FeatureWindow]:
    names, counts, missing, below, above = taken
    return [
        FeatureWindow(
            name=n,
            counts=counts[i].tolist(),
            missing=int(missing[i]),
            below_min=int(below[i]),
            above_max=int(above[i]),
        )
        for i, n in enumerate(names)
    ]


def _flat_rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _extractor(name: str, hists: list[HistogramBaseline]) -> Callable[[np.ndarray], np.ndarray]:
    """Rows of feature values for one tensor, matching how the converter grouped it (converter/stats.py)."""
    channel = hists[0].name.startswith(f"{name}[c")
    if not channel:
        return _flat_rows
    n_channels = len(hists)

    def rows(x: np.ndarray) -> np.ndarray:
        moved = np.moveaxis(x, channel_axis(x.shape), -1).reshape(len(x), -1, n_channels)
        pick = np.linspace(0, moved.shape[1] - 1, min(PIXELS_PER_SAMPLE, moved.shape[1])).astype(int)
        return moved[:, pick, :].reshape(-1, n_channels)

    return rows


class WindowRecorder:
    """Telemetry of one model version on this device, one window at a time."""

    def __init__(
        self,
        manifest: Manifest,
        device_id: str,
        *,
        window_size: int = 1000,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.device_id = device_id
        self.window_size = window_size
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # Full chunks of rows are counted by `bin_pending` on the telemetry thread when `on_pending` (which
        # wakes it) is given, else right where they fill up. `_bin_lock` keeps a summary from being taken
        # while chunks are out being counted.
        self._on_pending = on_pending
        self._bin_lock = threading.Lock()
        base = manifest.baseline
        # (name, whole, rows of features, binner): a tensor that is not batch-first (a 0-d scalar, recurrent
        # state) is one row per call, as the converter counted it.
        self._inputs: list[tuple[str, bool, Callable[[np.ndarray], np.ndarray], _Binner]] = []
        for spec in manifest.inputs:
            hists = [h for h in base.inputs if h.name.startswith(f"{spec.name}[")]
            if hists:
                binner = _Binner(hists, spec.dtype)
                self._inputs.append((spec.name, not spec.batch_first, _extractor(spec.name, hists), binner))
        self._output_whole = bool(manifest.outputs) and not manifest.outputs[0].batch_first
        self.classifier = manifest.task is Task.CLASSIFICATION and base.class_counts is not None
        self.n_classes = len(base.class_counts or [])
        out_dtype = manifest.outputs[0].dtype if manifest.outputs else "float64"
        # The first output's histograms (a manifest from before the converter kept only those has every output's:
        # the others are never recorded), rows taken as the converter grouped them (per element or per channel).
        first_out = manifest.outputs[0].name if manifest.outputs else ""
        out_hists = [h for h in base.outputs if h.name.startswith(f"{first_out}[")] or base.outputs
        self._out_binner = _Binner(out_hists, out_dtype) if out_hists and not self.classifier else None
        self._out_rows = _extractor(first_out, out_hists) if out_hists else _flat_rows
        self._binners = [b for _, _, _, b in self._inputs] + ([self._out_binner] if self._out_binner else [])
        self._classes = np.zeros(max(self.n_classes, 1), np.int64)
        self._confusion = np.zeros((self.n_classes, self.n_classes), np.int64) if self.classifier else None
        self._lat: list[float] = []
        # Predictions awaiting a delayed label: id i (`<version>-<i>`) keeps its class in slot i % size,
        # so the newest MAX_OPEN_PREDICTIONS stay answerable at the cost of one slice copy per call.
        self._next_id = 1
        self._id_prefix = f"{manifest.version}-"
        self._open = np.full(MAX_OPEN_PREDICTIONS, -1, np.int32)
        self._unsettled: list[tuple[int, np.ndarray]] = []  # (first prediction id or 0, output rows)
        self._reset()

    def _reset(self) -> None:
        self._start = self._clock()
        self.n = 0
        self.errors = 0
        self.fallback: dict[str, int] = {}
        self.fallback_errors: dict[str, int] = {}
        self.fallback_latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def record(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        latency_ms: float,
        keep_ids: bool = False,
    ) -> list[str]:
        """One predict call (any batch size). Returns prediction ids when `keep_ids` (for delayed labels)."""
        ids: list[str] = []
        filled = 0
        with self._lock:
            batch = 0
            for name, whole, extract, binner in self._inputs:
                x = np.asarray(inputs[name])
                if whole:
                    x = x[None]
                else:
                    batch = len(x)
                filled += binner.add_rows(extract(x))
            first = np.asarray(next(iter(outputs.values())))
            if self._output_whole:
                first = first[None]
            batch = batch or len(first)
            if self.classifier:
                # Predicted classes are taken in bulk (`_settle`): here the output rows are only kept.
                first_id = 0
                if keep_ids:
                    first_id = self._next_id
                    self._next_id += len(first)
                    prefix = self._id_prefix
                    ids = [prefix + str(i) for i in range(first_id, self._next_id)]
                self._unsettled.append((first_id, first.reshape(len(first), -1)))
                if len(self._unsettled) >= SETTLE_EVERY:
                    self._settle()
            elif self._out_binner is not None:
                filled += self._out_binner.add_rows(self._out_rows(first))
            self._lat.append(latency_ms / max(batch, 1))
            self.n += batch
            if filled and (self._on_pending is None or self._waiting() > MAX_PENDING_CHUNKS):
                for binner in self._binners:  # no telemetry thread, or one that falls behind: count here
                    binner.flush()
                filled = 0
        if filled and self._on_pending is not None:
            self._on_pending()
        return ids

    def _waiting(self) -> int:
        return sum(len(b.full) for b in self._binners)

    def bin_pending(self) -> None:
        """Count the chunks that filled up (telemetry thread): the serving path only copied their rows."""
        with self._bin_lock:
            with self._lock:
                work = [(b, b.take_full()) for b in self._binners if b.full]
            if not work:
                return
            counted = [(b, b.count(chunks), chunks) for b, chunks in work]  # without the lock
            with self._lock:
                for b, delta, chunks in counted:
                    b.add(delta, chunks)

    def _settle(self) -> None:
        """Predicted classes of the kept output rows: counted, and remembered for delayed labels (lock held)."""
        if not self._unsettled:
            return
        pending, self._unsettled = self._unsettled, []
        pred = np.concatenate([rows for _, rows in pending]).argmax(axis=1)
        self._classes += np.bincount(pred, minlength=self._classes.size)[: self._classes.size]
        # Prediction ids row by row, in a few array operations (an arange per call cost more than the rest).
        firsts = np.fromiter((first for first, _ in pending), np.int64, len(pending))
        lengths = np.fromiter((len(rows) for _, rows in pending), np.int64, len(pending))
        starts = np.cumsum(lengths) - lengths  # where each call's rows start in `pred`
        ids = np.repeat(firsts - starts, lengths) + np.arange(len(pred))
        kept = np.repeat(firsts > 0, lengths)  # calls made without ids (first id 0) keep no class
        self._open[ids[kept] % MAX_OPEN_PREDICTIONS] = pred[kept]

    def record_error(self, rows: int = 1) -> None:
        """A request of `rows` samples that got no answer: counted per row, as `record` counts inferences."""
        with self._lock:
            self.errors += rows
            self.n += rows

    def record_fallback(self, reason: str, ok: bool = True, latency_ms: float | None = None) -> None:
        """One request sent to the cloud: its reason, whether it was answered, and its round trip."""
        with self._lock:
            self.fallback[reason] = self.fallback.get(reason, 0) + 1
            if not ok:
                self.fallback_errors[reason] = self.fallback_errors.get(reason, 0) + 1
            if latency_ms is not None:
                self.fallback_latency[latency_bucket(latency_ms)] += 1

    def feedback(self, prediction_id: str, label: int) -> bool:
        """Fold a delayed true label into the window; False when the id is unknown or expired."""
        prefix, _, number = prediction_id.partition(self._id_prefix)
        if prefix or not number.isdigit():
            return False
        i = int(number)
        with self._lock:
            self._settle()
            if not self._next_id - MAX_OPEN_PREDICTIONS <= i < self._next_id or i < 1:
                return False  # never issued, or older than the newest MAX_OPEN_PREDICTIONS
            pred = int(self._open[i % MAX_OPEN_PREDICTIONS])
            if pred < 0 or self._confusion is None or not 0 <= label < self.n_classes:
                return False
            self._open[i % MAX_OPEN_PREDICTIONS] = -1  # one label per prediction
            self._confusion[label, pred] += 1
            return True

    def due(self) -> bool:
        return self.n >= self.window_size or (self.n > 0 and self._clock() - self._start >= self.window_seconds)

    def close_window(self) -> TelemetrySummary | None:
        """The finished window's summary (None if nothing happened); starts the next window."""
        with self._bin_lock, self._lock:
            if self.n == 0 and not self.fallback and (self._confusion is None or not self._confusion.any()):
                self._start = self._clock()
                return None
            state = self._state(reset=True)
            self._classes[:] = 0
            if self._confusion is not None:
                self._confusion[:] = 0
            self._lat = []
            self._reset()
        return self._summary(state)

    def snapshot(self) -> TelemetrySummary:
        """The open window so far, without closing it (for the local drift view)."""
        with self._bin_lock, self._lock:
            state = self._state(reset=False)
        return self._summary(state)

    def _state(self, reset: bool) -> dict[str, Any]:
        """The window's numbers, copied (lock held): the summary is built from them after the lock is let go,
        so a prediction never waits for a few hundred pydantic objects to be validated."""
        self._settle()
        return {
            "window_start": self._start,
            "window_end": max(self._clock(), self._start),
            "n": self.n,
            "errors": self.errors,
            "fallback": dict(self.fallback),
            "fallback_errors": dict(self.fallback_errors),
            "fallback_latency_buckets": list(self.fallback_latency),
            "lat": list(self._lat),
            "inputs": [b.take(reset) for _, _, _, b in self._inputs],
            "class_counts": self._classes.tolist() if self.classifier else None,
            "outputs": self._out_binner.take(reset) if self._out_binner else None,
            "confusion": self._confusion.tolist() if self._confusion is not None else None,
        }

    def _summary(self, state: dict[str, Any]) -> TelemetrySummary:
        lat = np.bincount(
            np.searchsorted(LATENCY_BUCKETS_MS, state["lat"], side="left"), minlength=len(LATENCY_BUCKETS_MS) + 1
        )
        return TelemetrySummary(
            device_id=self.device_id,
            model=self.manifest.name,
            version=self.manifest.version,
            profile=self.manifest.profile,
            window_start=_ts(state["window_start"]),
            window_end=_ts(state["window_end"]),
            n=state["n"],
            errors=state["errors"],
            fallback=state["fallback"],
            fallback_errors=state["fallback_errors"],
            fallback_latency_buckets=state["fallback_latency_buckets"],
            latency_buckets=lat.tolist(),
            inputs=[f for taken in state["inputs"] for f in _features(taken)],
            class_counts=state["class_counts"],
            outputs=_features(state["outputs"]) if state["outputs"] is not None else [],
            confusion=state["confusion"],
        )


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
