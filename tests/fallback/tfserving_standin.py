"""A STAND-IN for TensorFlow Serving (its server binary cannot be installed on this machine).

It implements exactly the documented REST predict API over the converter's SavedModel export:
`POST /v1/models/{name}[/versions/{v}]:predict` with `{"instances": [...]}` (row format) ->
`{"predictions": [...]}`, or `{"inputs": ...}` (columnar) -> `{"outputs": ...}`; errors as
`{"error": "..."}`; status at `GET /v1/models/{name}`. Tests that use it say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build_standin(model_base: Path, name: str) -> Starlette:
    """Serve every version directory under `model_base` (TF Serving's NAME/VERSION layout)."""
    from converter.sources import quiet_tensorflow

    tf = quiet_tensorflow()
    versions = {int(p.name): tf.saved_model.load(str(p)).signatures["serving_default"]
                for p in model_base.iterdir() if p.name.isdigit()}

    def _run(version: int | None, payload: Any) -> JSONResponse:
        fn = versions.get(version if version is not None else max(versions))
        if fn is None:
            return JSONResponse({"error": f"Servable not found for request: Specific({name}, {version})"}, 404)
        arg_names = sorted(fn.structured_input_signature[1])
        if "instances" in payload:
            feed = {arg_names[0]: np.asarray(payload["instances"], dtype=np.float32)}
            row = True
        elif "inputs" in payload:
            inputs = payload["inputs"]
            feed = ({k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()} if isinstance(inputs, dict)
                    else {arg_names[0]: np.asarray(inputs, dtype=np.float32)})
            row = False
        else:
            return JSONResponse({"error": "JSON Value: missing 'instances' or 'inputs'"}, 400)
        try:
            out = fn(**{k: tf.constant(v) for k, v in feed.items()})
        except Exception as e:  # TF raises InvalidArgumentError and friends for bad shapes
            return JSONResponse({"error": str(e).splitlines()[0]}, 400)
        values = {k: v.numpy().tolist() for k, v in out.items()}
        body = next(iter(values.values())) if len(values) == 1 else values
        return JSONResponse({"predictions": body} if row else {"outputs": body})

    async def predict(request: Request) -> JSONResponse:
        model, _, verb = request.path_params["rest"].partition(":")
        parts = model.split("/")
        if verb != "predict" or parts[0] != name or len(parts) not in (1, 3):
            return JSONResponse({"error": f"Malformed request: POST /v1/models/{request.path_params['rest']}"}, 404)
        version = int(parts[2]) if len(parts) == 3 and parts[1] == "versions" and parts[2].isdigit() else None
        if len(parts) == 3 and version is None:
            return JSONResponse({"error": "Malformed request: bad version"}, 404)
        try:
            payload = json.loads(await request.body())
        except json.JSONDecodeError as e:
            return JSONResponse({"error": f"JSON Parse error: {e}"}, 400)
        return _run(version, payload)

    async def status(request: Request) -> JSONResponse:
        if request.path_params["rest"] != name:
            return JSONResponse({"error": f"Could not find any versions of model {request.path_params['rest']}"}, 404)
        return JSONResponse({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(versions)
        ]})

    return Starlette(routes=[
        Route("/v1/models/{rest:path}", predict, methods=["POST"]),
        Route("/v1/models/{rest:path}", status, methods=["GET"]),
    ])
