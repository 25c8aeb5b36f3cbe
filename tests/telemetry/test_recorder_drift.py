"""Recording against a real manifest: bins match the converter's, merges equal pooling, shifts are caught."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry import WindowRecorder
from converter.stats import bin_counts
from protocol import layout
from protocol.drift import drift_report
from protocol.manifest import Manifest
from protocol.telemetry import TelemetrySummary, merge
from tests.support.converted import Converted

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def manifest(keras_converted: Converted) -> Manifest:
    return Manifest.from_json((keras_converted.out / "raspberry_pi_4" / layout.MANIFEST_FILE).read_text())


def _model(keras_converted: Converted, m: Manifest):  # type: ignore[no-untyped-def]
    from agent.model import LoadedModel

    return LoadedModel.from_file(keras_converted.out / m.profile / m.artifact.file, manifest=m)


def _feed(rec: WindowRecorder, model, x: np.ndarray, batch: int = 1) -> None:  # type: ignore[no-untyped-def]
    name = rec.manifest.inputs[0].name
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        rec.record({name: xb}, model.predict({name: xb}), 0.05)


def test_bins_match_the_converters(keras_converted: Converted, manifest: Manifest) -> None:
    model = _model(keras_converted, manifest)
    rec = WindowRecorder(manifest, "dev-1", window_size=10_000)
    x = keras_converted.data.x_val
    _feed(rec, model, x, batch=7)
    s = rec.close_window()
    assert s is not None and s.n == len(x)
    flat = x.reshape(len(x), -1)
    for j, (f, h) in enumerate(zip(s.inputs, manifest.baseline.inputs, strict=True)):
        assert f.counts == list(bin_counts(flat[:, j], np.asarray(h.edges)))
        assert f.counts == h.counts  # same data as the baseline: identical histograms
    assert s.class_counts == manifest.baseline.class_counts
    assert s.latency_ms(0.5) is not None
    assert drift_report(manifest.baseline, s).dataset_drift is False


@pytest.mark.parametrize("keep_up", [True, False])
def test_bins_match_when_a_telemetry_thread_counts_them(
    keras_converted: Converted, manifest: Manifest, keep_up: bool
) -> None:
    """Full chunks counted on another thread while predictions go on (as in the daemon): the same counts.
    When that thread does not keep up, the serving path counts the backlog itself past MAX_PENDING_CHUNKS."""
    import threading

    from agent.telemetry.recorder import CHUNK_ROWS, MAX_PENDING_CHUNKS

    model = _model(keras_converted, manifest)
    wake, stop = threading.Event(), threading.Event()
    rec = WindowRecorder(manifest, "dev-1", window_size=10_000, on_pending=wake.set)
    backlog: list[int] = []

    def telemetry_thread() -> None:
        while not stop.is_set():
            if wake.wait(0.05) and keep_up:
                wake.clear()
                rec.bin_pending()
            backlog.append(rec._waiting())

    worker = threading.Thread(target=telemetry_thread)
    worker.start()
    x = np.concatenate([keras_converted.data.x_val] * 8)
    chunks = len(x) // CHUNK_ROWS
    assert chunks > MAX_PENDING_CHUNKS + 1
    try:
        _feed(rec, model, x, batch=7)
    finally:
        stop.set()
        worker.join(5)
    assert max(backlog) <= MAX_PENDING_CHUNKS
    if not keep_up:  # nobody counted: the serving path took the backlog each time it passed the bound
        assert rec._waiting() == chunks % (MAX_PENDING_CHUNKS + 1)
    s = rec.close_window()
    assert s is not None and s.n == len(x)
    flat = x.reshape(len(x), -1)
    for j, (f, h) in enumerate(zip(s.inputs, manifest.baseline.inputs, strict=True)):
        assert f.counts == list(bin_counts(flat[:, j], np.asarray(h.edges)))


def test_merge_equals_pooled(keras_converted: Converted, manifest: Manifest) -> None:
    model = _model(keras_converted, manifest)
    x = keras_converted.data.x_train[:600]
    parts = np.array_split(x, 4)
    summaries = []
    for i, part in enumerate(parts):
        rec = WindowRecorder(manifest, f"dev-{i}", window_size=10_000)
        _feed(rec, model, part, batch=5)
        rec.record_fallback("no_model", ok=i != 0, latency_ms=3.0 + i)
        summaries.append(rec.close_window())
    pooled_rec = WindowRecorder(manifest, "dev-0", window_size=10_000)
    _feed(pooled_rec, model, x, batch=5)
    for i, _ in enumerate(parts):
        pooled_rec.record_fallback("no_model", ok=i != 0, latency_ms=3.0 + i)
    pooled = pooled_rec.close_window()
    merged = merge([s for s in summaries if s is not None])
    assert pooled is not None
    assert merged.n == pooled.n == 600 and merged.devices == 4 and merged.device_id == "*"
    assert merged.inputs == pooled.inputs
    assert merged.class_counts == pooled.class_counts
    assert merged.fallback == pooled.fallback == {"no_model": 4}
    assert merged.fallback_errors == pooled.fallback_errors == {"no_model": 1}
    assert merged.fallback_latency_buckets == pooled.fallback_latency_buckets
    assert sum(merged.fallback_latency_buckets) == 4
    assert TelemetrySummary.from_json(merged.to_json()) == merged


def _windows(x: np.ndarray, n_windows: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [x[rng.integers(0, len(x), size)] for _ in range(n_windows)]


def _report(manifest: Manifest, model, window: np.ndarray):  # type: ignore[no-untyped-def]
    rec = WindowRecorder(manifest, "dev-1", window_size=10_000)
    _feed(rec, model, window, batch=len(window))
    s = rec.close_window()
    assert s is not None
    return drift_report(manifest.baseline, s)


def test_no_false_alarms_on_unshifted_data(keras_converted: Converted, manifest: Manifest) -> None:
    model = _model(keras_converted, manifest)
    reports = [_report(manifest, model, w) for w in _windows(keras_converted.data.x_train, 40, 300, seed=3)]
    feature_flags = [f.drifted for r in reports for f in r.features]
    assert np.mean(feature_flags) <= 0.05  # KS at p < 0.05 per feature, conservative on the sketch
    assert sum(r.dataset_drift for r in reports) <= 2  # 40 windows, at most 5% flagged overall


@pytest.mark.parametrize("shift", ["mean", "variance", "stuck", "prior"])
def test_shifts_are_detected(keras_converted: Converted, manifest: Manifest, shift: str) -> None:
    model = _model(keras_converted, manifest)
    data = keras_converted.data
    flagged = 0
    for w in _windows(data.x_train, 10, 300, seed=7):
        if shift == "mean":
            w = w + 0.25
        elif shift == "variance":
            w = np.clip(w.mean() + (w - w.mean()) * 2.0, 0, 1)
        elif shift == "stuck":
            w = w.copy()
            w[:, 3, 3, 0] = 0.5  # one pixel sensor stuck mid-range
        elif shift == "prior":
            pool = data.x_train[data.y_train < 3]  # only digits 0, 1, 2 arrive
            w = pool[np.random.default_rng(len(pool)).integers(0, len(pool), 300)]
        r = _report(manifest, model, w.astype(np.float32))
        if shift == "stuck":
            flagged += "pixels[27]" in r.drifted_features
        elif shift == "prior":
            flagged += bool(r.classes and r.classes.drifted)
        else:
            flagged += r.dataset_drift
    assert flagged == 10


def test_feedback_accuracy(keras_converted: Converted, manifest: Manifest) -> None:
    model = _model(keras_converted, manifest)
    rec = WindowRecorder(manifest, "dev-1")
    name = manifest.inputs[0].name
    x, y = keras_converted.data.x_val[:100], keras_converted.data.y_val[:100]
    ids = rec.record({name: x}, model.predict({name: x}), 1.0, keep_ids=True)
    assert len(ids) == 100
    assert all(rec.feedback(pid, int(label)) for pid, label in zip(ids, y, strict=True))
    assert rec.feedback(ids[0], 1) is False  # each prediction takes one label
    s = rec.close_window()
    assert s is not None and s.confusion is not None
    pred = model.predict({name: x})[manifest.outputs[0].name].argmax(axis=1)
    assert s.accuracy() == pytest.approx(float(np.mean(pred == y)))




def test_feedback_ids_expire_after_the_newest_max_open_and_reject_strangers(
    keras_converted: Converted, manifest: Manifest
) -> None:
    from agent.telemetry.recorder import MAX_OPEN_PREDICTIONS

    model = _model(keras_converted, manifest)
    rec = WindowRecorder(manifest, "dev-1")
    name = manifest.inputs[0].name
    x = keras_converted.data.x_val[:100]
    outputs = model.predict({name: x})
    first = rec.record({name: x}, outputs, 1.0, keep_ids=True)
    rounds = MAX_OPEN_PREDICTIONS // 100 + 1  # wraps the ring: the first 100 ids are no longer open
    for _ in range(rounds):
        last = rec.record({name: x}, outputs, 1.0, keep_ids=True)
    assert rec.feedback(first[0], 1) is False and rec.feedback(first[-1], 1) is False
    assert rec.feedback(last[-1], 1) is True and rec.feedback(last[0], 1) is True
    oldest_open = int(last[-1].split("-")[1]) - MAX_OPEN_PREDICTIONS + 1
    assert rec.feedback(f"{manifest.version}-{oldest_open}", 1) is True
    assert rec.feedback(f"{manifest.version}-{oldest_open - 1}", 1) is False
    for stranger in ["", "x", f"{manifest.version}-", f"{manifest.version}-0", f"{manifest.version + 1}-5",
                     f"{manifest.version}-99999999", f"{manifest.version}--3", f"{manifest.version}-1.5"]:  # fmt: skip
        assert rec.feedback(stranger, 1) is False, stranger
    assert rec.feedback(last[1], 10_000) is False  # not a class of this model
