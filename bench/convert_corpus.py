"""Real third-party models (tests/corpus/catalog.py) through the converter and the agent.

Prints one JSON object. Per ONNX / PyTorch corpus model and profile (raspberry_pi_4: TFLite, x86_gateway: ONNX):
converted (some artifact built and measured against the source) or the reason; whether one fits the bundled
profile's budgets; per kind: size ratio vs its format's fp32 artifact, agreement with the source (top-1 for
classifiers, max abs error and its share of the output range otherwise), latency ratio vs its fp32 artifact
(measured afresh, interleaved, bench/interleave.py). ONNX sources are re-quantised (--requantize) so that every
kind is measured. Per corpus model (ONNX, TFLite and PyTorch): whether the agent reproduces the package's own
runtime within the test tolerance. Targets: pairs_converted_ratio >= 0.90, agent_reference_match_ratio = 1.0,
int8_size_ratio_median <= 0.30.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.interleave import interleaved_ratio
from converter.budgets import Candidate, budget_violations
from converter.data import load_dataset, run_all
from converter.errors import ConverterError
from converter.pipeline import _for_profile
from converter.sources import load_source
from converter.workbench import Workbench, can_make
from firmware_profiles import get_profile
from protocol.manifest import ModelFormat
from tests.corpus.catalog import CORPUS, CorpusModel, Reference, model_path, within

PROFILES = ["raspberry_pi_4", "x86_gateway"]
SAMPLES = 24
LATENCY_ROUNDS = 50


def agent_matches(model: CorpusModel, folder: Path) -> dict[str, Any]:
    from agent.model import LoadedModel

    path = model_path(model, folder)
    if model.fmt == "torch":
        exported = folder / f"{model.key}.onnx"
        exported.write_bytes(load_source(path).onnx_bytes())
        path = exported
    agent = LoadedModel.from_file(path)
    steps = {b.name: b.scale for b in agent.outputs}
    worst, ok = 0.0, True
    for feed, want in Reference(model).calls(model.calls(np.random.default_rng(0))):
        given = dict(zip([b.name for b in agent.inputs], feed.values(), strict=True)) if model.fmt == "torch" else feed
        got = agent.predict(given)
        for name, value in want.items():
            good, err = within(got[name], value, steps[name])
            ok, worst = ok and good and got[name].shape == value.shape, max(worst, err)
    return {"match": ok, "max_abs_error": worst}


def convert_pairs(model: CorpusModel, folder: Path) -> dict[str, Any]:
    assert model.dataset is not None
    rng = np.random.default_rng(1)
    calib_path, val_path = folder / f"{model.key}-cal.npz", folder / f"{model.key}-val.npz"
    np.savez(calib_path, **model.dataset(rng, SAMPLES))
    np.savez(val_path, **model.dataset(rng, SAMPLES))
    source = load_source(model_path(model, folder))
    calib = load_dataset(calib_path, source.inputs, where="calibration", labels_allowed=False)
    val = load_dataset(val_path, source.inputs, where="validation", labels_allowed=False)
    reference = run_all(source.predict, val, 64, max_batch=source.max_batch)
    classifier = model.task == "classification"
    bench = Workbench(source, calib, val, reference, classifier, runs=20, requantize=True)
    pairs: dict[str, Any] = {}
    for name in PROFILES:
        profile = get_profile(name)
        kinds: dict[str, Any] = {}
        refused: dict[str, str] = {}
        fits = []
        measured = {}
        for kind in profile.kinds:
            fmt = ModelFormat(kind.split("_", 1)[0])
            impossible = can_make(source, fmt)
            if impossible:
                refused[kind] = impossible
                continue
            try:
                measured[kind] = bench.measure(kind, "float32", profile.threads)
            except ConverterError as e:
                refused[kind] = str(e)
        latencies = bench.latencies({kind: "float32" for kind in measured}, profile.threads)
        for kind, one_kind in measured.items():
            m = one_kind.with_latency(latencies[kind])
            kinds[kind] = {"size_bytes": m.size_bytes, "top1_agreement": m.top1_agreement,
                           "max_abs_error": m.max_abs_error, "relative_error": m.relative_error}
            cand = Candidate(kind, bench.build(kind, "float32").model, _for_profile(m, profile),
                             one_kind.ram_estimate_bytes, one_kind.activation_bytes)
            if not budget_violations(cand, profile):
                fits.append(kind)
        fp32 = f"{profile.formats[0].value}_fp32"
        if fp32 in kinds:
            base = bench.runner(fp32, "float32", 1)
            one = val.take(0, 1)
            for kind, row in kinds.items():
                row["size_ratio"] = round(row["size_bytes"] / kinds[fp32]["size_bytes"], 4)
                runner = bench.runner(kind, "float32", 1)
                row["latency_ratio"] = round(interleaved_ratio(runner, base, one, LATENCY_ROUNDS), 4)
        pairs[name] = {"converted": bool(kinds), "fits_budgets": bool(fits), "kinds": kinds, "refused": refused}
        if not kinds:
            pairs[name]["reason"] = next(iter(refused.values()), "no kind built")
    return pairs


def main() -> None:
    started = time.perf_counter()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-corpus-") as tmp:
        folder = Path(tmp)
        for model in CORPUS:
            entry: dict[str, Any] = {"domain": model.domain, "format": model.fmt,
                                     "agent": agent_matches(model, folder)}
            if model.converts:
                entry["profiles"] = convert_pairs(model, folder)
            report[model.key] = entry
    pairs = [p for e in report.values() for p in e.get("profiles", {}).values()]
    int8 = [row["size_ratio"] for p in pairs for k, row in p["kinds"].items()
            if k.endswith("_int8") and not k.endswith("dynamic_int8") and "size_ratio" in row]
    out = {
        "benchmark": "convert_corpus",
        "models": report,
        "pairs": len(pairs),
        "pairs_converted_ratio": round(sum(p["converted"] for p in pairs) / len(pairs), 4),
        "pairs_fitting_ratio": round(sum(p["fits_budgets"] for p in pairs) / len(pairs), 4),
        "agent_reference_match_ratio": round(sum(e["agent"]["match"] for e in report.values()) / len(report), 4),
        "int8_size_ratio_median": round(statistics.median(int8), 4) if int8 else None,
        "targets": {"pairs_converted_ratio": 0.90, "agent_reference_match_ratio": 1.0, "int8_size_ratio_median": 0.30},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    t = out["targets"]
    out["meets_targets"] = {
        "pairs_converted_ratio": out["pairs_converted_ratio"] >= t["pairs_converted_ratio"],
        "agent_reference_match_ratio": out["agent_reference_match_ratio"] >= t["agent_reference_match_ratio"],
        "int8_size_ratio_median": out["int8_size_ratio_median"] is not None
        and out["int8_size_ratio_median"] <= t["int8_size_ratio_median"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
