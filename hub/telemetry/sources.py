"""Who answered a cohort's requests (the device, the cloud fallback, nobody), and merging windows with and without bins.

An agent uploads two kinds of windows for a model version (agent/telemetry/recorders.py):

- windows of the version serving on the device: every request (answered there, by the cloud after a
  low-confidence or failed local answer, or not at all) with input histograms, latency and labels;
- "no model" windows, while no version serves on the device: only the cloud's answers and failed cloud
  calls by reason, with their round trip; nothing ran on the device, so no inputs, latency or labels.

`Accumulator` merges summaries of the first row's shape and skips the others, so a cohort mixing both kinds
showed whichever kind came first (issue 22: the v1 page showed 336 cloud answers, "238 with other bins left
out", and no drift). `SourceMerge` adds the windows without bins to the counts of the windows with bins.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hub.telemetry.accumulate import Accumulator
from hub.telemetry.schemas import TelemetryStats
from protocol.telemetry import TelemetrySummary


def has_bins(s: dict[str, Any]) -> bool:
    """Whether a stored summary (JSON) carries histograms or labels that fix its shape."""
    return (
        bool(s.get("inputs") or s.get("outputs"))
        or s.get("class_counts") is not None
        or (s.get("confusion") is not None)
    )


def no_model(s: dict[str, Any]) -> bool:
    """A window recorded while no version served on the device: cloud calls only, nothing ran there."""
    return (
        not has_bins(s)
        and not any(s.get("latency_buckets") or [])
        and s["n"] == sum((s.get("fallback") or {}).values())
    )


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted({*a, *b})}


def _pairwise(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


class SourceMerge:
    """Add up summaries of one version: those with bins as `Accumulator` does, those without into the counts.

    With `every_source` off, every summary goes to one `Accumulator` as before (the rollout gates and the
    monitor still merge that way: a cloud answer given before a version was installed is not the version's).
    """

    def __init__(self, every_source: bool = True) -> None:
        self.every_source = every_source
        self.binned = Accumulator()
        self.bare = Accumulator()
        self.no_model_n = 0  # requests in windows recorded while no version served on the device
        self.no_model_rows = 0

    @property
    def rows(self) -> int:
        return self.binned.rows + self.bare.rows

    @property
    def skipped(self) -> int:
        return self.binned.skipped + self.bare.skipped

    def add(self, s: dict[str, Any], windows: int = 1) -> bool:
        """Add one summary (a raw window, or a rollup of `windows`); False if its bins differ from the first's."""
        if not self.every_source or has_bins(s):
            return self.binned.add(s)
        if not self.bare.add(s):
            return False
        if no_model(s):
            self.no_model_n += s["n"]
            self.no_model_rows += windows
        return True

    def device_ids(self) -> set[str]:
        return (self.binned.device_ids | self.bare.device_ids) - {"*"}

    def result(self) -> TelemetrySummary | None:
        """The merged summary: bins, latency and labels of the binned windows, counts of every window."""
        binned, bare = self.binned.result(), self.bare.result()
        if binned is None or bare is None:
            return binned or bare
        ids = self.device_ids()
        return binned.model_copy(update={
            "device_id": binned.device_id if binned.device_id == bare.device_id else "*",
            "profile": binned.profile if binned.profile == bare.profile else "*",
            "window_start": min(binned.window_start, bare.window_start),
            "window_end": max(binned.window_end, bare.window_end),
            "n": binned.n + bare.n, "errors": binned.errors + bare.errors,
            "fallback": _sum(binned.fallback, bare.fallback),
            "fallback_errors": _sum(binned.fallback_errors, bare.fallback_errors),
            "fallback_latency_buckets": _pairwise(binned.fallback_latency_buckets, bare.fallback_latency_buckets),
            "latency_buckets": _pairwise(binned.latency_buckets, bare.latency_buckets),
            "devices": len(ids) if ids else max(binned.devices, bare.devices),
        })  # fmt: skip


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
