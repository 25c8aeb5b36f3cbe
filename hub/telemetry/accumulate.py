"""Add stored summaries (their JSON, as the database returns it) without building a pydantic object per row.

Same result as `protocol.telemetry.merge` (tests compare the two), about ten times faster on wide
summaries: a cohort of 20,000 windows merges in well under a second, so the rollout engine and the
monitor can afford it. A row whose features or bins differ from the first row's is skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from protocol.telemetry import TelemetrySummary

FEATURE_KEYS = ("missing", "below_min", "above_max")


def _shape(features: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["name"], len(f["counts"])) for f in features]


def _add(into: list[int], other: list[int]) -> None:
    for i, v in enumerate(other):
        into[i] += v


class Accumulator:
    """Running sum of summaries of one model version."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.rows = self.skipped = 0
        self.n = self.errors = 0
        self.fallback: Counter[str] = Counter()
        self.fallback_errors: Counter[str] = Counter()
        self.fallback_latency: list[int] = []
        self.latency: list[int] = []
        self.features: dict[str, list[dict[str, Any]]] = {}
        self.shapes: dict[str, list[tuple[str, int]]] = {}
        self.class_counts: list[int] | None = None
        self.confusion: list[list[int]] | None = None
        self.device_ids: set[str] = set()
        self.profiles: set[str] = set()
        self.start: datetime | None = None
        self.end: datetime | None = None

    def add(self, s: dict[str, Any]) -> bool:
        """Add one summary (JSON form); False (and counted as skipped) if it does not fit the first one."""
        if self.first is None:
            self._start(s)
        elif not self._fits(s):
            self.skipped += 1
            return False
        else:
            self._accumulate(s)
        self.rows += 1
        self.device_ids.add(s["device_id"])
        self.profiles.add(s["profile"])
        start, end = datetime.fromisoformat(s["window_start"]), datetime.fromisoformat(s["window_end"])
        self.start = start if self.start is None else min(self.start, start)
        self.end = end if self.end is None else max(self.end, end)
        return True

    def _start(self, s: dict[str, Any]) -> None:
        self.first = s
        self.n, self.errors = s["n"], s.get("errors", 0)
        self.fallback.update(s.get("fallback") or {})
        self.fallback_errors.update(s.get("fallback_errors") or {})
        self.fallback_latency = list(s.get("fallback_latency_buckets") or [0] * len(s["latency_buckets"]))
        self.latency = list(s["latency_buckets"])
        for key in ("inputs", "outputs"):
            self.features[key] = [{**f, "counts": list(f["counts"])} for f in s.get(key) or []]
            self.shapes[key] = _shape(s.get(key) or [])
        self.class_counts = list(s["class_counts"]) if s.get("class_counts") is not None else None
        self.confusion = [list(r) for r in s["confusion"]] if s.get("confusion") is not None else None

    def _fits(self, s: dict[str, Any]) -> bool:
        if any(_shape(s.get(k) or []) != self.shapes[k] for k in ("inputs", "outputs")):
            return False
        if len(s["latency_buckets"]) != len(self.latency):
            return False
        classes = s.get("class_counts")
        if classes is not None and self.class_counts is not None and len(classes) != len(self.class_counts):
            return False
        conf = s.get("confusion")
        return conf is None or self.confusion is None or len(conf) == len(self.confusion)

    def _accumulate(self, s: dict[str, Any]) -> None:
        self.n += s["n"]
        self.errors += s.get("errors", 0)
        self.fallback.update(s.get("fallback") or {})
        self.fallback_errors.update(s.get("fallback_errors") or {})
        _add(self.fallback_latency, s.get("fallback_latency_buckets") or [])
        _add(self.latency, s["latency_buckets"])
        for key in ("inputs", "outputs"):
            for acc, f in zip(self.features[key], s.get(key) or [], strict=True):
                _add(acc["counts"], f["counts"])
                for k in FEATURE_KEYS:
                    acc[k] = acc.get(k, 0) + f.get(k, 0)
        if s.get("class_counts") is not None:
            if self.class_counts is None:
                self.class_counts = list(s["class_counts"])
            else:
                _add(self.class_counts, s["class_counts"])
        if s.get("confusion") is not None:
            if self.confusion is None:
                self.confusion = [list(r) for r in s["confusion"]]
            else:
                for acc_row, row in zip(self.confusion, s["confusion"], strict=True):
                    _add(acc_row, row)

    def result(self) -> TelemetrySummary | None:
        """The merged summary, validated once; None if nothing was added."""
        if self.first is None:
            return None
        ids, profiles = self.device_ids - {"*"}, self.profiles
        return TelemetrySummary.model_validate({
            **self.first,
            "device_id": next(iter(self.device_ids)) if len(self.device_ids) == 1 else "*",
            "profile": next(iter(profiles)) if len(profiles) == 1 else "*",
            "window_start": self.start, "window_end": self.end, "n": self.n, "errors": self.errors,
            "fallback": dict(self.fallback), "fallback_errors": dict(self.fallback_errors),
            "fallback_latency_buckets": self.fallback_latency, "latency_buckets": self.latency,
            "inputs": self.features["inputs"],
            "outputs": self.features["outputs"], "class_counts": self.class_counts, "confusion": self.confusion,
            "devices": len(ids) if ids else self.first.get("devices", 1),
        })  # fmt: skip
