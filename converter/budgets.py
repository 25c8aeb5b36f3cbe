"""Check a measured candidate against a profile's budgets and choose the best one from measurements."""

from __future__ import annotations

from dataclasses import dataclass

from firmware_profiles import FirmwareProfile
from protocol.manifest import ArtifactMetrics

# Candidates within this share of the fastest count as equally fast; the smaller one wins then.
LATENCY_TIE = 0.05


@dataclass(frozen=True)
class Candidate:
    """One built and measured artifact for one profile."""

    kind: str
    model: bytes
    metrics: ArtifactMetrics
    ram_estimate_bytes: int
    activation_bytes: int


def _size(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _over(what: str, got: float, limit: float, fmt: str) -> str:
    pct = (got / limit - 1.0) * 100 if limit else float("inf")
    if fmt == "size":
        return f"{what} {_size(got)} > budget {_size(limit)} (over by {_size(got - limit)}, +{pct:.0f}%)"
    if fmt == "ms":
        return f"{what} {got:.3f} ms > budget {limit:g} ms (over by {got - limit:.3f} ms, +{pct:.0f}%)"
    if fmt == "pt":
        return f"{what} {got:.2f} pt > budget {limit:g} pt (over by {got - limit:.2f} pt)"
    return f"{what} {got:.4g} > budget {limit:.4g} (over by {got - limit:.4g})"


def budget_violations(c: Candidate, profile: FirmwareProfile) -> list[str]:
    """Every budget the candidate breaks, each with by how much; empty when it fits."""
    b, m = profile.budgets, c.metrics
    out = []
    if m.size_bytes > b.max_artifact_bytes:
        out.append(_over("artifact size", m.size_bytes, b.max_artifact_bytes, "size"))
    if c.ram_estimate_bytes > b.max_ram_bytes:
        out.append(_over("estimated RAM", c.ram_estimate_bytes, b.max_ram_bytes, "size"))
    if b.arena_bytes is not None and c.activation_bytes > b.arena_bytes:
        out.append(_over("tensor arena (upper bound)", c.activation_bytes, b.arena_bytes, "size"))
    p95 = m.device_latency_ms_p95 if m.device_latency_ms_p95 is not None else m.latency_ms_p95
    basis = "device" if m.latency_basis == "device" else "host"
    if p95 > b.latency_ms:
        out.append(_over(f"p95 latency ({basis})", p95, b.latency_ms, "ms"))
    if m.accuracy_loss_pt is not None and m.accuracy_loss_pt > b.max_accuracy_loss_pt:
        out.append(_over("accuracy loss", m.accuracy_loss_pt, b.max_accuracy_loss_pt, "pt"))
    if b.max_abs_error is not None and m.max_abs_error is not None and m.max_abs_error > b.max_abs_error:
        out.append(_over("max abs error", m.max_abs_error, b.max_abs_error, "err"))
    regressor = m.accuracy_loss_pt is None
    if regressor and b.max_relative_error is not None and m.relative_error is not None \
            and m.relative_error > b.max_relative_error:
        out.append(f"error {m.relative_error:.1%} of the output range > budget {b.max_relative_error:.1%}")
    return out


def choose(accepted: list[Candidate], profile: FirmwareProfile) -> Candidate:
    """Fastest (p50) wins; within LATENCY_TIE of it the smallest; then the profile's preference order."""
    fastest = min(c.metrics.latency_ms_p50 for c in accepted)
    near = [c for c in accepted if c.metrics.latency_ms_p50 <= fastest * (1 + LATENCY_TIE)]
    order = {k: i for i, k in enumerate(profile.kinds)}
    return min(near, key=lambda c: (c.metrics.size_bytes, order.get(c.kind, len(order))))
