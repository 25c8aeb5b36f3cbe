"""Self-test before serving: load, golden cases within tolerance, no NaN/inf, latency within budget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AgentError, SelfTestFailed
from agent.model import LoadedModel
from firmware_profiles import FirmwareProfile
from protocol.manifest import GoldenCase, Manifest

LATENCY_RUNS = 10


@dataclass(frozen=True)
class SelfTestResult:
    """What the self-test measured (reported in the event details)."""

    cases: int
    max_abs_error: float
    latency_ms_p50: float
    device_latency_ms_p50: float
    budget_ms: float


def latency_factor(profile: FirmwareProfile, basis: str) -> float:
    """Host-measured latency x the profile's speed factor, as the converter does; 1.0 on the device itself."""
    if basis == "device" or profile.speed is None:
        return 1.0
    return profile.speed.host_factor


def run_self_test(
    manifest: Manifest, artifact: Path, profile: FirmwareProfile, latency_basis: str = "host"
) -> tuple[LoadedModel, SelfTestResult]:
    """Load and check a model; returns it ready to serve, or raises SelfTestFailed with the reason."""
    try:
        model = LoadedModel.from_file(artifact, threads=profile.threads, manifest=manifest)
    except AgentError as e:
        raise SelfTestFailed(f"will not load: {e}") from e
    golden = manifest.golden
    worst = 0.0
    top1_hits = top1_cases = 0
    for i, case in enumerate(golden.cases):
        try:
            outputs = model.predict(case_inputs(case))
        except AgentError as e:
            raise SelfTestFailed(f"golden case {i}: inference failed: {e}") from e
        for name, got in outputs.items():
            if not np.isfinite(got).all():
                raise SelfTestFailed(f"golden case {i}: output {name!r} has NaN or inf")
            if name not in case.expected:
                continue
            want = np.asarray(case.expected[name], dtype=np.float64)
            flat = got.astype(np.float64).ravel()
            if flat.shape != want.shape:
                raise SelfTestFailed(f"golden case {i}: output {name!r} has {flat.size} values, expected {want.size}")
            err = float(np.max(np.abs(flat - want))) if want.size else 0.0
            worst = max(worst, err)
            if not np.allclose(flat, want, atol=golden.atol, rtol=golden.rtol):
                raise SelfTestFailed(
                    f"golden case {i}: output {name!r} differs by {err:.4g} (atol {golden.atol}, rtol {golden.rtol})"
                )
        if case.expected_top1 is not None:
            top1_cases += 1
            first = next(iter(outputs.values()))
            top1_hits += int(int(np.argmax(first.ravel())) == case.expected_top1)
    if top1_cases and top1_hits / top1_cases < golden.min_top1_agreement:
        raise SelfTestFailed(f"top-1 agreement {top1_hits}/{top1_cases} below {golden.min_top1_agreement}")
    p50 = _latency_p50(model, case_inputs(golden.cases[0]))
    factor = latency_factor(profile, latency_basis)
    budget = profile.budgets.latency_ms
    if p50 * factor > budget:
        raise SelfTestFailed(
            f"too slow: p50 {p50:.3f} ms x speed factor {factor:g} = {p50 * factor:.3f} ms > budget {budget:g} ms"
        )
    return model, SelfTestResult(len(golden.cases), worst, p50, p50 * factor, budget)


def case_inputs(case: GoldenCase) -> dict[str, Any]:
    """A golden case's inputs, in the shapes it was computed with when it records them."""
    if case.shapes is None:
        return dict(case.inputs)
    return {k: np.asarray(v).reshape(case.shapes[k]) if k in case.shapes else v for k, v in case.inputs.items()}


def _latency_p50(model: LoadedModel, inputs: dict[str, Any]) -> float:
    feeds = {name: model.coerce(name, values) for name, values in inputs.items()}
    model.predict(feeds)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        model.predict(feeds)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))
