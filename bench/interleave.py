"""Latency of one artifact against another, measured afresh and interleaved in the same run.

Each round runs A then B (then B then A on the next round), so a slow or fast stretch of the host affects
both alike; the ratio is the median of A's times over the median of B's. Not the converter's own figures:
those chose the artifact, so reusing them would favour it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def interleaved_ratio(a: Any, b: Any, feed: Mapping[str, np.ndarray], rounds: int = 200, warmup: int = 20) -> float:
    """median(time of a.run(feed)) / median(time of b.run(feed)), rounds alternating which goes first."""
    for _ in range(warmup):
        a.run(feed)
        b.run(feed)
    ta, tb = np.empty(rounds), np.empty(rounds)
    for i in range(rounds):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t0 = time.perf_counter_ns()
        first.run(feed)
        t1 = time.perf_counter_ns()
        second.run(feed)
        t2 = time.perf_counter_ns()
        (ta, tb)[i % 2][i] = t1 - t0
        (tb, ta)[i % 2][i] = t2 - t1
    return float(np.median(ta) / np.median(tb))
