"""Resumable HTTP download into a `.part` file: Range, bandwidth cap, bounded timeouts, jittered retry."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agent.errors import DigestMismatch, DownloadError, Interrupted, RefusedUpdate

Progress = Callable[[int, int, bool], None]  # (bytes on disk, expected length, resumed)
Retrying = Callable[[int, float, Exception], None]  # (failures in this streak, seconds until the next try, error)


@dataclass
class RetryPolicy:
    """How often and how long to retry: full-jitter exponential backoff between attempts.

    A streak of failures is given up only when it has both `attempts` failures and lasted `window_s`
    seconds: a link that is down for minutes (a cellular dead spot, a hub restart) delays an update
    instead of failing it, which would count against the rollout's error threshold.
    """

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0
    window_s: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures."""
        exponent = min(failures - 1, 62)  # 2 ** 1025 would overflow a float
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2**exponent))

    def exhausted(self, failures: int, streak_s: float) -> bool:
        """True when a streak of `failures` failures spanning `streak_s` seconds should be given up."""
        return failures >= self.attempts and streak_s >= self.window_s


class Downloader:
    """Fetches one URL into a `.part` file, resuming from its size after drops and restarts."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        bandwidth_bps: int | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        stopping: Callable[[], bool] = lambda: False,
        on_retry: Retrying | None = None,
    ) -> None:
        """`stopping`: checked after every chunk; when it says so the download stops (Interrupted) and what
        arrived stays in the `.part` file for the next start. `sleep` may raise Interrupted too."""
        self.client = client
        self.bandwidth_bps = bandwidth_bps
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self.stopping = stopping
        self.on_retry = on_retry

    def fetch(self, url: str, part: Path, length: int, on_progress: Progress | None = None) -> Path:
        """Download until `part` holds exactly `length` bytes; DigestMismatch if the server has another length."""
        part.parent.mkdir(parents=True, exist_ok=True)
        failures, streak_started = 0, self.clock()
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > length:
                part.unlink()
                have = 0
            if have == length:
                return part
            try:
                complete = self._attempt(url, part, have, length, on_progress)
            except (httpx.TransportError, DownloadError) as e:
                grew = (part.stat().st_size if part.exists() else 0) > have
                if grew or failures == 0:  # progress starts a new streak
                    failures, streak_started = 0, self.clock()
                failures += 1
                if self.retry.exhausted(failures, self.clock() - streak_started):
                    raise DownloadError(f"{url}: giving up after {failures} failed attempts: {e}") from e
                delay = self.retry.delay(failures)
                if self.on_retry is not None:
                    self.on_retry(failures, delay, e)
                self.sleep(delay)
                continue
            size = part.stat().st_size
            if complete and size < length:
                raise DigestMismatch(f"server sent {size} bytes, the signed length is {length}")

    def _attempt(self, url: str, part: Path, have: int, length: int, on_progress: Progress | None) -> bool:
        """One request; returns True when the server finished its response normally."""
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)
                raise DownloadError("server refused the resume range; restarting from zero")
            if response.status_code not in (200, 206):
                if response.status_code in (401, 403, 404):
                    raise RefusedUpdate(f"{url}: HTTP {response.status_code} (not served to this device)")
                raise DownloadError(f"{url}: HTTP {response.status_code}")
            mode = "ab" if response.status_code == 206 and have else "wb"
            written = have if mode == "ab" else 0
            if on_progress is not None:
                on_progress(written, length, bool(have and mode == "ab"))
            started, sent = self.clock(), 0
            with part.open(mode) as f:
                for chunk in response.iter_bytes():  # as received: a cut connection keeps what arrived
                    if written + len(chunk) > length:
                        raise DigestMismatch(f"server sent more than the signed length {length}")
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
                    sent += len(chunk)
                    if on_progress is not None:
                        on_progress(written, length, False)
                    if self.stopping():
                        os.fsync(f.fileno())
                        raise Interrupted(f"agent stopping mid-download at byte {written} of {length}")
                    self._throttle(started, sent)
                os.fsync(f.fileno())
        return True

    def _throttle(self, started: float, sent: int) -> None:
        if self.bandwidth_bps:
            ahead = sent / self.bandwidth_bps - (self.clock() - started)
            if ahead > 0:
                self.sleep(ahead)
