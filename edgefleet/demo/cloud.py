"""The demo's cloud: a KServe v2 (Open Inference Protocol) endpoint over the converter's float ONNX export.

A small in-process stand-in so the demo needs no extra server; in production point the agents at
Triton, MLServer or KServe serving the same `cloud/triton/NAME/VERSION/model.onnx` (docs/fallback.md).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgefleet.brokers import free_port, wait_port


def kserve_app(models: dict[tuple[str, int], Path]) -> Starlette:
    """`POST /v2/models/{name}/versions/{v}/infer` for each (name, version) -> model.onnx."""
    import onnxruntime as ort

    cpu = ["CPUExecutionProvider"]
    sessions = {key: ort.InferenceSession(str(path), providers=cpu) for key, path in models.items()}
    calls = {"count": 0}

    async def infer(request: Request) -> JSONResponse:
        name, version = request.path_params["name"], int(request.path_params["version"])
        sess = sessions.get((name, version))
        if sess is None:
            return JSONResponse({"error": f"model {name} version {version} not found"}, 404)
        try:
            body = json.loads(await request.body())
            feeds = {
                i.name: np.asarray(x["data"], np.float32).reshape(x["shape"])
                for i, x in zip(sess.get_inputs(), body["inputs"], strict=True)
            }
            outs = sess.run(None, feeds)
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, 400)
        calls["count"] += 1
        return JSONResponse(
            {
                "model_name": name,
                "model_version": str(version),
                "outputs": [
                    {"name": o.name, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
                    for o, v in zip(sess.get_outputs(), outs, strict=True)
                ],
            }
        )

    app = Starlette(routes=[Route("/v2/models/{name}/versions/{version:int}/infer", infer, methods=["POST"])])
    app.state.calls = calls
    return app


class CloudServer:
    """The KServe v2 stand-in under uvicorn on a free loopback port, in a thread."""

    def __init__(self, models: dict[tuple[str, int], Path]) -> None:
        self.app = kserve_app(models)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        return int(self.app.state.calls["count"])

    def start(self) -> CloudServer:
        self.thread.start()
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
