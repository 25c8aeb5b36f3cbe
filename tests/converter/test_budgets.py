"""The converter's decision on measured figures the test controls: which budget a candidate breaks (and by how
much), which fitting candidate is chosen. Wall-clock latency never decides a test's outcome here."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from converter.budgets import Candidate, budget_violations, choose
from converter.measure import Latency
from converter.pipeline import _profile_result
from firmware_profiles import get_profile
from protocol.manifest import ArtifactMetrics


def _metrics(kind: str, *, size: int = 1000, p50: float = 1.0, p95: float = 1.2, loss: float | None = 0.0,
             err: float = 0.01, rel: float | None = None) -> ArtifactMetrics:
    return ArtifactMetrics(kind=kind, size_bytes=size, latency_ms_p50=p50, latency_ms_p95=p95, accuracy_loss_pt=loss,
                           max_abs_error=err, relative_error=rel)


def _cand(metrics: ArtifactMetrics, ram: int = 10_000, act: int = 1000) -> Candidate:
    return Candidate(metrics.kind, b"x" * metrics.size_bytes, metrics, ram, act)


def test_each_budget_is_named_with_its_overrun() -> None:
    pi = get_profile("raspberry_pi_4")  # speed factor 8, latency budget 50 ms, loss budget 1 pt
    ok = _cand(_metrics("tflite_int8", p95=6.0))
    assert budget_violations(ok, pi) == []
    # Latency is checked on the device basis the profile gives: 7 ms host x 8 = 56 ms > 50 ms.
    slow = _cand(_metrics("tflite_int8", p95=7.0).model_copy(
        update={"latency_basis": "device", "device_latency_ms_p95": 56.0}))
    assert budget_violations(slow, pi) == ["p95 latency (device) 56.000 ms > budget 50 ms (over by 6.000 ms, +12%)"]
    lossy = _cand(_metrics("tflite_int8", loss=2.5))
    assert budget_violations(lossy, pi) == ["accuracy loss 2.50 pt > budget 1 pt (over by 1.50 pt)"]
    big = _cand(_metrics("tflite_fp32", size=70 * 2**20), ram=600 * 2**20)
    said = budget_violations(big, pi)
    assert said[0].startswith("artifact size 70.00 MiB > budget 64.00 MiB") and said[1].startswith("estimated RAM")


def test_regressors_are_held_to_a_share_of_the_output_range() -> None:
    pi = get_profile("raspberry_pi_4")
    assert pi.budgets.max_relative_error == 0.05
    fine = _cand(_metrics("tflite_int8", loss=None, err=0.02, rel=0.03))
    drifted = _cand(_metrics("tflite_int8", loss=None, err=0.5, rel=0.69))
    assert budget_violations(fine, pi) == []
    assert budget_violations(drifted, pi) == ["error 69.0% of the output range > budget 5.0%"]
    # A classifier is held to its accuracy loss instead, whatever its outputs' error.
    assert budget_violations(_cand(_metrics("tflite_int8", loss=0.0, rel=0.69)), pi) == []


def test_choice_fastest_then_smallest_within_five_percent_then_profile_order() -> None:
    pi = get_profile("raspberry_pi_4")  # preference: int8, dynamic_int8, fp16, fp32
    fp32 = _cand(_metrics("tflite_fp32", size=4000, p50=1.00))
    fp16 = _cand(_metrics("tflite_fp16", size=2000, p50=1.04))
    int8 = _cand(_metrics("tflite_int8", size=1000, p50=1.30))
    assert choose([fp32, fp16, int8], pi).kind == "tflite_fp16"  # within 5% of the fastest, and smaller
    dyn = _cand(_metrics("tflite_dynamic_int8", size=2000, p50=1.02))
    assert choose([fp32, fp16, dyn], pi).kind == "tflite_dynamic_int8"  # same size: the profile's order decides
    assert choose([fp32, int8], pi).kind == "tflite_fp32"  # 30% slower is not a tie


@dataclass
class _Measured:
    metrics: ArtifactMetrics
    ram_estimate_bytes: int = 10_000
    activation_bytes: int = 1000

    def with_latency(self, latency: Latency) -> ArtifactMetrics:
        return self.metrics.model_copy(update={"latency_ms_p50": latency.p50_ms, "latency_ms_p95": latency.p95_ms})


@dataclass
class _Built:
    model: bytes


@dataclass
class _Bench:
    """A workbench whose measurements are given: the pipeline's decision is all that runs."""

    figures: dict[str, ArtifactMetrics]
    source: object = field(default_factory=lambda: _Source())

    def measure(self, kind: str, io: str, threads: int) -> _Measured:
        return _Measured(self.figures[kind])

    def build(self, kind: str, io: str) -> _Built:
        return _Built(b"x" * self.figures[kind].size_bytes)

    def latencies(self, kinds: dict[str, str], threads: int) -> dict[str, Latency]:
        return {k: Latency(self.figures[k].latency_ms_p50, self.figures[k].latency_ms_p95, 10) for k in kinds}


@dataclass
class _Source:
    kind: str = "keras"
    ready_kind: None = None
    tflite_route: str = "tf"
    tflite_refusal: str = ""
    can_tflite: bool = True
    can_onnx: bool = True


@pytest.mark.parametrize(("host_p95", "chosen"), [(5.0, "tflite_fp32"), (7.0, "tflite_int8")])
def test_profile_decision_on_controlled_latencies(host_p95: float, chosen: str) -> None:
    """fp32 is fastest; when its p95 x 8 exceeds the Pi 4's 50 ms it is refused and int8, within budget, wins."""
    pi = get_profile("raspberry_pi_4")
    figures = {
        "tflite_fp32": _metrics("tflite_fp32", size=4000, p50=0.5, p95=host_p95),
        "tflite_int8": _metrics("tflite_int8", size=1000, p50=0.6, p95=6.0),
        "tflite_fp16": _metrics("tflite_fp16", size=2000, p50=0.7, p95=6.0, loss=1.5),
        "tflite_dynamic_int8": _metrics("tflite_dynamic_int8", size=1500, p50=0.9, p95=6.2),
    }
    result, pick = _profile_result(_Bench(figures), pi, lambda _msg: None)  # type: ignore[arg-type]
    assert pick is not None and pick.kind == chosen
    assert result.refused["tflite_fp16"].startswith("accuracy loss 1.50 pt > budget 1 pt")
    if chosen == "tflite_int8":
        assert result.refused["tflite_fp32"] == "p95 latency (device) 56.000 ms > budget 50 ms (over by 6.000 ms, +12%)"
