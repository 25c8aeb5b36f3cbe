"""One `edgefleet hub serve` replica process as the cluster tests and bench/hub_cluster.py drive it: its port,
its process, /healthz and /metrics."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.brokers import free_port


@dataclass
class Replica:
    """One `edgefleet hub serve` process."""

    name: str
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """/healthz, or None if the replica does not answer."""
        if not self.alive:
            return None
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return None
        health: dict[str, Any] = r.json()
        return health if r.status_code == 200 else None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics: (name, sorted labels) -> value."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
