"""Wire formats of the three serving protocols: TF Serving REST, TorchServe, KServe v2 (Open Inference).

Each is a small plugin: a request path, a JSON body from named float arrays, and outputs by name
from the JSON answer. An explicit registry maps the endpoint `type` to its plugin.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np

from agent.fallback.config import EndpointConfig, ProtocolName
from agent.fallback.errors import FallbackBadResponse

Arrays = dict[str, np.ndarray]


class ServingProtocol(Protocol):
    key: ClassVar[ProtocolName]

    def path(self, cfg: EndpointConfig) -> str: ...

    def encode(self, inputs: Arrays) -> dict[str, Any]: ...

    def decode(self, payload: Any, output_names: list[str]) -> Arrays: ...


def _array(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise FallbackBadResponse(f"{what} is not a numeric array: {e}") from e
    if arr.dtype == object or arr.ndim == 0:
        raise FallbackBadResponse(f"{what} is not a numeric array")
    return arr


class TFServingREST:
    """`POST /v1/models/{name}[/versions/{v}]:predict`: row format for one input, columnar for several."""

    key: ClassVar[ProtocolName] = "tfserving"

    def path(self, cfg: EndpointConfig) -> str:
        version = f"/versions/{cfg.version}" if cfg.version else ""
        return f"/v1/models/{cfg.model}{version}:predict"

    def encode(self, inputs: Arrays) -> dict[str, Any]:
        if len(inputs) == 1:
            return {"instances": next(iter(inputs.values())).tolist()}
        return {"inputs": {k: v.tolist() for k, v in inputs.items()}}

    def decode(self, payload: Any, output_names: list[str]) -> Arrays:
        if not isinstance(payload, dict):
            raise FallbackBadResponse("TF Serving answer is not a JSON object")
        body = payload.get("predictions", payload.get("outputs"))
        if body is None:
            raise FallbackBadResponse(f"TF Serving answer has no predictions: {str(payload)[:200]}")
        if isinstance(body, dict):  # several named outputs
            missing = [n for n in output_names if n not in body]
            if len(body) == len(output_names) and missing:
                body = dict(zip(output_names, body.values(), strict=True))  # names differ in the cloud export
            elif missing:
                raise FallbackBadResponse(f"TF Serving answer lacks outputs {missing}")
            return {n: _array(body[n], f"output {n!r}") for n in output_names}
        if len(output_names) != 1:
            raise FallbackBadResponse(f"expected {len(output_names)} outputs, TF Serving returned one")
        return {output_names[0]: _array(body, "predictions")}


class TorchServe:
    """`POST /predictions/{name}[/{version}]` with `{"instances": [...]}` (the converter's .mar handler)."""

    key: ClassVar[ProtocolName] = "torchserve"

    def path(self, cfg: EndpointConfig) -> str:
        version = f"/{cfg.version}" if cfg.version else ""
        return f"/predictions/{cfg.model}{version}"

    def encode(self, inputs: Arrays) -> dict[str, Any]:
        if len(inputs) != 1:
            raise FallbackBadResponse("the TorchServe handler takes a single input tensor")
        return {"instances": next(iter(inputs.values())).tolist()}

    def decode(self, payload: Any, output_names: list[str]) -> Arrays:
        if isinstance(payload, dict) and "predictions" in payload:
            payload = payload["predictions"]
        if len(output_names) != 1:
            raise FallbackBadResponse("the TorchServe handler returns a single output tensor")
        return {output_names[0]: _array(payload, "predictions")}


_V2_TYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


class KServeV2:
    """Open Inference Protocol: `POST /v2/models/{name}[/versions/{v}]/infer` (Triton, MLServer, KServe)."""

    key: ClassVar[ProtocolName] = "kserve"

    def path(self, cfg: EndpointConfig) -> str:
        version = f"/versions/{cfg.version}" if cfg.version else ""
        return f"/v2/models/{cfg.model}{version}/infer"

    def encode(self, inputs: Arrays) -> dict[str, Any]:
        return {
            "inputs": [
                {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.astype(np.float32).ravel().tolist()}
                for k, v in inputs.items()
            ]
        }

    def decode(self, payload: Any, output_names: list[str]) -> Arrays:
        if not isinstance(payload, dict) or not isinstance(payload.get("outputs"), list):
            raise FallbackBadResponse(f"KServe v2 answer has no outputs list: {str(payload)[:200]}")
        found: Arrays = {}
        for out in payload["outputs"]:
            if not isinstance(out, dict) or not {"name", "shape", "data"} <= set(out):
                raise FallbackBadResponse("KServe v2 output lacks name, shape or data")
            arr = _array(out["data"], f"output {out['name']!r}")
            try:
                found[str(out["name"])] = arr.reshape([int(d) for d in out["shape"]])
            except (ValueError, TypeError) as e:
                raise FallbackBadResponse(f"KServe v2 output {out['name']!r}: data does not fit its shape") from e
        if all(n in found for n in output_names):
            return {n: found[n] for n in output_names}
        if len(found) == len(output_names):  # a cloud runtime that names outputs its own way
            return dict(zip(output_names, found.values(), strict=True))
        raise FallbackBadResponse(f"KServe v2 answer has outputs {sorted(found)}, expected {output_names}")


PROTOCOLS: dict[ProtocolName, ServingProtocol] = {p.key: p for p in (TFServingREST(), TorchServe(), KServeV2())}
