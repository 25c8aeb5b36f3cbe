"""Telemetry cost per inference, against the same predict without telemetry, in one run.

Prints one JSON object: `record_us_per_inference` (mean cost of WindowRecorder.record for one
sample of the digits CNN, bulk binning and window closes included; target <= 10 us), and the agent's in-process
predict p50 with and without recording.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.model import LoadedModel
from agent.telemetry import WindowRecorder
from converter.pipeline import ConvertRequest, convert
from edgefleet.samples import digits, train_keras_cnn
from protocol.manifest import Manifest

RUNS = 5000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        folder = Path(tmp)
        data = digits()
        calib, val = data.write(folder)
        model_path = train_keras_cnn(folder / "digits.keras", data)
        convert(
            ConvertRequest(
                model=model_path,
                profiles=["raspberry_pi_4"],
                calibration=calib,
                validation=val,
                out=folder / "out",
                latency_runs=20,
                cloud=False,
            )
        )
        m = Manifest.from_json((folder / "out" / "raspberry_pi_4" / "manifest.json").read_text())
        model = LoadedModel.from_file(folder / "out" / "raspberry_pi_4" / m.artifact.file, manifest=m)
    rec = WindowRecorder(m, "bench", window_size=1000, window_seconds=3600)
    name = m.inputs[0].name
    xs = [data.x_val[i % len(data.x_val)][None] for i in range(RUNS)]
    outs = [model.predict({name: x}) for x in xs[:100]]
    record_ns, plain_ns, with_ns = [], [], []
    for i in range(RUNS):
        x, out = xs[i], outs[i % 100]
        t0 = time.perf_counter_ns()
        rec.record({name: x}, out, 0.05)
        if rec.due():
            rec.close_window()
        record_ns.append(time.perf_counter_ns() - t0)
    for i in range(RUNS):
        x = xs[i]
        t0 = time.perf_counter_ns()
        model.predict({name: x})
        t1 = time.perf_counter_ns()
        out = model.predict({name: x})
        rec.record({name: x}, out, (time.perf_counter_ns() - t1) / 1e6)
        if rec.due():
            rec.close_window()
        t2 = time.perf_counter_ns()
        plain_ns.append(t1 - t0)
        with_ns.append(t2 - t1)
    result = {
        "benchmark": "telemetry_overhead",
        "runs": RUNS,
        "features": len(m.baseline.inputs),
        # Amortised: the mean includes the bulk binning every 256 rows and the window closes.
        "record_us_per_inference": round(float(np.mean(record_ns)) / 1000, 3),
        "record_us_p50": round(float(np.median(record_ns)) / 1000, 3),
        "record_us_p99": round(float(np.percentile(record_ns, 99)) / 1000, 3),
        "predict_p50_us_without": round(float(np.median(plain_ns)) / 1000, 3),
        "predict_p50_us_with": round(float(np.median(with_ns)) / 1000, 3),
        "target_record_us": 10.0,
    }
    result["meets_targets"] = result["record_us_per_inference"] <= 10.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
