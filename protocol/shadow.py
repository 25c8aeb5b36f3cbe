"""Shadow evaluation: a candidate version runs beside the serving one on sampled live requests, never answering.

The hub asks for it in the desired state (`DesiredState.shadows`); the device runs the candidate on a
fraction of requests after each reply has been sent, compares it with what the serving version answered,
and sends `ShadowSummary` windows as `shadow` events through its outbox. Summaries merge by adding counts,
so the hub judges a wave (or a whole rollout) on the pooled evidence of its devices (hub/rollouts/shadow.py).

Agreement per sample (one row of a batch): a classifier's top-1 class is the same; a regressor's outputs are
within the candidate's golden tolerance (`atol + rtol * |serving|`, its manifest's self-test tolerance).
The latency ratio is the candidate's mean latency over the serving version's on the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from protocol.base import Contract, Identifier, ModelName, Version
from protocol.telemetry import LATENCY_BUCKETS_MS, Count

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
SUM_MAX = 1e300  # sums are capped here (senders and merge_shadow): finite on the wire, where JSON has no inf
NonNeg = Annotated[float, Field(ge=0.0, le=SUM_MAX, allow_inf_nan=False)]
BUCKETS = len(LATENCY_BUCKETS_MS) + 1


class DesiredShadow(Contract):
    """Hub -> device, in the desired state: shadow-test `version` of `name` on `fraction` of its live requests."""

    name: ModelName
    version: Version
    # TUF target path of the candidate's manifest (protocol.http.manifest_target()), verified as for an update.
    manifest_target: Annotated[str, Field(min_length=1, max_length=512)]
    fraction: Fraction
    rollout_id: Identifier | None = None


class ShadowSummary(Contract):
    """One device's shadow window for one candidate: counts that add up across devices and windows."""

    model: ModelName
    version: Version  # the candidate
    serving_version: Version | None = None
    kind: Literal["classifier", "regressor"]
    samples: Count = 0  # rows compared
    agreed: Count = 0
    dropped: Count = 0  # requests sampled while the shadow queue was full (never run, never waited for)
    failed: Count = 0  # rows of requests the candidate could not answer (disagreeing rows, not in `samples`)
    abs_error_sum: NonNeg = 0.0  # over every output element compared
    sq_error_sum: NonNeg = 0.0
    max_abs_error: NonNeg = 0.0
    elements: Count = 0
    serving_ms_sum: NonNeg = 0.0  # per request, over the requests compared
    candidate_ms_sum: NonNeg = 0.0
    serving_latency_buckets: list[Count] = Field(default_factory=lambda: [0] * BUCKETS)
    candidate_latency_buckets: list[Count] = Field(default_factory=lambda: [0] * BUCKETS)

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.agreed > self.samples:
            raise ValueError("agreed exceeds samples")
        for name in ("serving_latency_buckets", "candidate_latency_buckets"):
            if len(getattr(self, name)) != BUCKETS:
                raise ValueError(f"{name} needs {BUCKETS} entries")
        return self

    @property
    def disagreement(self) -> float | None:
        """Share of compared rows (and failed requests) on which the candidate disagreed; None without data."""
        total = self.samples + self.failed
        return (total - self.agreed) / total if total else None

    @property
    def latency_ratio(self) -> float | None:
        """Candidate mean latency over the serving version's, on the same requests; None without data."""
        return self.candidate_ms_sum / self.serving_ms_sum if self.serving_ms_sum > 0 else None

    @property
    def mean_abs_error(self) -> float | None:
        return self.abs_error_sum / self.elements if self.elements else None


def merge_shadow(summaries: Sequence[ShadowSummary]) -> ShadowSummary | None:
    """The pooled summary of one candidate's windows (any devices); None for none. Keys must agree."""
    if not summaries:
        return None
    first = summaries[0]
    if any((s.model, s.version, s.kind) != (first.model, first.version, first.kind) for s in summaries):
        raise ValueError("shadow summaries of different candidates do not merge")
    serving = {s.serving_version for s in summaries}
    return ShadowSummary(
        model=first.model,
        version=first.version,
        serving_version=first.serving_version if len(serving) == 1 else None,
        kind=first.kind,
        samples=sum(s.samples for s in summaries),
        agreed=sum(s.agreed for s in summaries),
        dropped=sum(s.dropped for s in summaries),
        failed=sum(s.failed for s in summaries),
        abs_error_sum=_capped(s.abs_error_sum for s in summaries),
        sq_error_sum=_capped(s.sq_error_sum for s in summaries),
        max_abs_error=max(s.max_abs_error for s in summaries),
        elements=sum(s.elements for s in summaries),
        serving_ms_sum=_capped(s.serving_ms_sum for s in summaries),
        candidate_ms_sum=_capped(s.candidate_ms_sum for s in summaries),
        serving_latency_buckets=[sum(c) for c in zip(*(s.serving_latency_buckets for s in summaries), strict=True)],
        candidate_latency_buckets=[sum(c) for c in zip(*(s.candidate_latency_buckets for s in summaries), strict=True)],
    )


def _capped(values: Iterable[float]) -> float:
    """A sum kept within the fields' bound, so windows from many devices always merge (no overflow to inf)."""
    return min(math.fsum(values), SUM_MAX)
