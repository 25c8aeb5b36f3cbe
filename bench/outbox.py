"""Outbox throughput against raw sqlite3 executemany, and summary size against the raw window, in one run.

Prints one JSON object: `outbox_rows_per_s` (Outbox.put_many, batches of 500, WAL + synchronous=FULL;
target >= 50,000 rows/s), `raw_rows_per_s` (sqlite3 executemany into the same schema with the same
pragmas), and `summary_reduction_x`: bytes of the raw float32 inputs of a 1,000-inference window over
bytes of that window's telemetry message as sent (zlib-compressed canonical JSON; target >= 100x).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.telemetry import Outbox, WindowRecorder
from converter.stats import baseline_stats
from edgefleet.samples import digits
from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    ConversionReport,
    GoldenCase,
    GoldenSet,
    Manifest,
    TensorSpec,
)
from protocol.telemetry import TelemetryMessage, encode_message

ROWS = 50_000
BATCH = 500
PAYLOAD = json.dumps({"n": 1000, "counts": list(range(60))})


def outbox_rate(folder: Path) -> float:
    box = Outbox(folder / "outbox.db", max_bytes=10**10)
    t0 = time.perf_counter()
    for _ in range(ROWS // BATCH):
        box.put_many([("telemetry", PAYLOAD)] * BATCH)
    return ROWS / (time.perf_counter() - t0)


def raw_rate(folder: Path) -> float:
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE rows (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT, payload TEXT, "
        "bytes INTEGER, created REAL)"
    )
    t0 = time.perf_counter()
    for _ in range(ROWS // BATCH):
        with conn:
            conn.executemany(
                "INSERT INTO rows (channel, payload, bytes, created) VALUES (?, ?, ?, ?)",
                [("telemetry", PAYLOAD, len(PAYLOAD), time.time())] * BATCH,
            )
    return ROWS / (time.perf_counter() - t0)


def reduction() -> tuple[float, int, int]:
    data = digits(image=False)
    x = data.x_val
    probs = np.eye(10, dtype=np.float32)[data.y_val]
    spec_in = TensorSpec(name="x", shape=[None, 64], dtype="float32")
    spec_out = TensorSpec(name="probs", shape=[None, 10], dtype="float32")
    metrics = ArtifactMetrics(kind="tflite_fp32", size_bytes=1, latency_ms_p50=0.1, latency_ms_p95=0.1)
    m = Manifest(
        name="digits",
        version=1,
        profile="raspberry_pi_4",
        format="tflite",
        quantization="fp32",
        task="classification",
        artifact=ArtifactRef(file="d.tflite", sha256="0" * 64, size=1),
        inputs=[spec_in],
        outputs=[spec_out],
        baseline=baseline_stats({"x": x}, {"probs": probs}, True),
        golden=GoldenSet(cases=[GoldenCase(inputs={"x": [0.0] * 64}, expected={"probs": [0.1] * 10})], atol=0.1),
        report=ConversionReport(chosen=metrics, validation_samples=len(x), converter_version="bench"),
    )
    rec = WindowRecorder(m, "bench-device", window_size=1000)
    rng = np.random.default_rng(0)
    window = data.x_train[rng.integers(0, len(data.x_train), 1000)]
    for row in window:
        rec.record({"x": row[None]}, {"probs": np.eye(10, dtype=np.float32)[[int(row.sum()) % 10]]}, 0.1)
    summary = rec.close_window()
    assert summary is not None
    sent = encode_message(TelemetryMessage(id=1, device_id="bench-device", summary=summary))
    raw = window.astype(np.float32).nbytes
    return raw / len(sent), raw, len(sent)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        folder = Path(tmp)
        raw = raw_rate(folder)
        ours = outbox_rate(folder)
    red, raw_bytes, sent_bytes = reduction()
    out = {
        "benchmark": "outbox",
        "rows": ROWS,
        "batch": BATCH,
        "outbox_rows_per_s": round(ours),
        "raw_rows_per_s": round(raw),
        "outbox_vs_raw": round(ours / raw, 3),
        "window_inferences": 1000,
        "raw_window_bytes": raw_bytes,
        "summary_bytes_sent": sent_bytes,
        "summary_reduction_x": round(red, 1),
        "targets": {"outbox_rows_per_s": 50_000, "summary_reduction_x": 100},
    }
    out["meets_targets"] = out["outbox_rows_per_s"] >= 50_000 and out["summary_reduction_x"] >= 100
    print(json.dumps(out))


if __name__ == "__main__":
    main()
