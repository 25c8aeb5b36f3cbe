"""TorchServe handler packed into every `.mar` the converter writes (runs inside TorchServe, torch only).

Request body (JSON): `{"instances": [[...], ...]}` (a batch, each instance one sample in the model's
per-sample shape) or one bare instance `[...]`. Response: `{"predictions": [[...], ...]}`, one output
row per instance. This file must not import anything from EdgeFleet: TorchServe loads it alone.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch


class EdgeFleetHandler:
    """Minimal TorchServe handler: TorchScript model, JSON in, JSON out."""

    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
        self.model.eval()
        torch.set_num_threads(1)
        self.initialized = True

    def _instances(self, row: dict[str, Any]) -> list[Any]:
        body = row.get("body") if isinstance(row, dict) else row
        if body is None and isinstance(row, dict):
            body = row.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body.decode("utf-8"))
        if isinstance(body, dict):
            if "instances" in body:
                return list(body["instances"])
            if "inputs" in body:
                return list(body["inputs"])
            raise ValueError("expected a JSON object with 'instances' (or 'inputs')")
        return [body]

    def handle(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        responses = []
        for row in data:
            instances = self._instances(row)
            x = torch.tensor(instances, dtype=torch.float32)
            with torch.no_grad():
                y = self.model(x)
            responses.append({"predictions": y.tolist()})
        return responses


_service = EdgeFleetHandler()


def handle(data: Any, context: Any) -> Any:
    """TorchServe entry point (module-level function handler)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data)
