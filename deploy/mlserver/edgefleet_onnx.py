"""MLServer runtime that serves the converter's float ONNX export over KServe v2 (Open Inference Protocol).

model-settings.json:
    {"name": "digits", "implementation": "edgefleet_onnx.OnnxModel",
     "parameters": {"uri": "./model.onnx", "version": "1"}}
Put this file beside model-settings.json (MLServer adds the model folder to sys.path). Runs inside
MLServer's own environment (mlserver + onnxruntime), not EdgeFleet's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """One ONNX model; inputs matched by name, else by position; float32 in, float32 out."""

    async def load(self) -> bool:
        path = await get_model_uri(self.settings)  # resolves a relative uri against model-settings.json
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != len(self._inputs):
            raise ValueError(f"expected {len(self._inputs)} inputs, got {len(payload.inputs)}")
        by_name = {i.name: i for i in payload.inputs}
        feeds = {}
        for pos, name in enumerate(self._inputs):
            request_input = by_name.get(name, payload.inputs[pos])
            feeds[name] = NumpyCodec.decode_input(request_input).astype(np.float32)
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, np.asarray(r)) for n, r in zip(self._outputs, results, strict=True)],
        )
