"""Who answered a cohort's requests: the device, the cloud fallback, nobody.

Windows of devices serving a version and cloud-only windows (recorded while no version served on the device)
are both kept and merged by `Accumulator` (accumulate.py); a merged summary's requests split by who answered
them, and the cloud-only windows are counted on their own (`no_model`), because nothing ran on the device for
them: no inputs, latency or labels.
"""

from __future__ import annotations

from pydantic import BaseModel

from hub.telemetry.schemas import TelemetryStats
from protocol.telemetry import TelemetrySummary


class SourceCounts(BaseModel):
    """A cohort's requests by who answered them: requests = device + cloud + failed."""

    requests: int
    device: int  # answered by the model on the device
    cloud: int  # answered by the cloud fallback (any reason)
    failed: int  # no answer: the device and, where asked, the cloud failed
    no_model: int  # requests while no version served on the device: cloud calls only (no inputs, latency, labels)
    no_model_windows: int


def source_counts(summary: TelemetrySummary | None, *, no_model_n: int = 0, no_model_rows: int = 0) -> SourceCounts:
    """Split a merged summary's requests: cloud answers are the fallback calls that did not fail."""
    if summary is None:
        return SourceCounts(requests=0, device=0, cloud=0, failed=0, no_model=0, no_model_windows=0)
    cloud = sum(summary.fallback.values()) - sum(summary.fallback_errors.values())
    return SourceCounts(requests=summary.n, device=summary.n - summary.errors - cloud, cloud=cloud,
                        failed=summary.errors, no_model=no_model_n, no_model_windows=no_model_rows)  # fmt: skip


class TelemetryStatsBySource(TelemetryStats):
    """`TelemetryStats` of every source that served, with the requests split by who answered them."""

    sources: SourceCounts
    hours_from_windows: int = 0  # hourly rollups that had left windows out, read from their raw windows instead
