"""Application traffic against every agent's local API, with delayed labels, counted by answer source."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np

from edgefleet.demo.fleet import AgentProcess
from edgefleet.samples import Digits


class Traffic(threading.Thread):
    """Round-robin predictions (batches of 4 validation images) and their true labels as feedback."""

    def __init__(self, agents: list[AgentProcess], data: Digits, model: str, rate_hz: float = 4.0) -> None:
        super().__init__(daemon=True)
        self.agents, self.data, self.model, self.rate_hz = agents, data, model, rate_hz
        self.answers: Counter[tuple[str, str]] = Counter()  # (source, version) -> calls
        self.per_device: dict[str, Counter[str]] = {a.device_id: Counter() for a in agents}
        self.errors: Counter[str] = Counter()
        self.input_name = "pixels"
        self._halt = threading.Event()
        self._rng = np.random.default_rng(0)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        with httpx.Client() as client:
            while not self._halt.is_set():
                started = time.monotonic()
                for agent in self.agents:
                    self._one(agent, client)
                self._halt.wait(max(0.0, 1.0 / self.rate_hz - (time.monotonic() - started)))

    def _one(self, agent: AgentProcess, client: httpx.Client) -> None:
        idx = self._rng.integers(0, len(self.data.x_val), 4)
        answer = agent.predict(self.model, self.input_name, self.data.x_val[idx], client)
        if answer is None:
            self.errors["device down"] += 1
            return
        if answer["status_code"] != 200:
            self.errors[str(answer.get("error", answer["status_code"]))[:60]] += 1
            return
        source = str(answer.get("source", "device"))
        self.answers[(source, str(answer.get("version")))] += 1
        self.per_device[agent.device_id][source] += 1
        for pid, label in zip(answer.get("prediction_ids") or [], self.data.y_val[idx], strict=False):
            try:
                client.post(
                    f"{agent.api}/v1/models/{self.model}/feedback",
                    json={"prediction_id": pid, "label": int(label)},
                    timeout=2,
                )
            except httpx.HTTPError:
                self.errors["feedback"] += 1
