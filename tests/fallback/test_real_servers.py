"""Fallback answers from real serving stacks match the device's local answers.

TorchServe and MLServer (KServe v2) run for real; TF Serving cannot be installed here, so its test
uses tests/fallback/tfserving_standin.py, a STAND-IN implementing the documented REST predict API.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.fallback import (
    CloudClient,
    EndpointConfig,
    FallbackError,
    FallbackPolicy,
    FallbackReason,
    FallbackRouter,
    OutputShape,
)
from agent.model import LoadedModel
from protocol import layout
from protocol.manifest import Manifest
from tests.fallback.servers import ServerThread, mlserver, torchserve
from tests.fallback.tfserving_standin import build_standin
from tests.support.converted import Converted

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _local(conv: Converted, profile: str) -> tuple[Manifest, LoadedModel]:
    m = Manifest.from_json((conv.out / profile / layout.MANIFEST_FILE).read_text())
    return m, LoadedModel.from_file(conv.out / profile / m.artifact.file, manifest=m)


def _router(cfg: EndpointConfig, m: Manifest) -> FallbackRouter:
    outputs = [OutputShape(o.name, tuple(o.shape[1:])) for o in m.outputs]
    return FallbackRouter(CloudClient(cfg, outputs), FallbackPolicy())


def _agree(cloud: np.ndarray, local: np.ndarray, m: Manifest) -> None:
    assert cloud.shape == local.shape
    # Cloud = float model; device = the chosen artifact: equal within what the converter measured.
    assert float(np.max(np.abs(cloud - local))) <= (m.report.chosen.max_abs_error or 0) + 1e-4
    assert np.mean(cloud.argmax(1) == local.argmax(1)) >= (m.report.chosen.top1_agreement or 1) - 1e-9


def test_torchserve_serves_the_converters_mar(torch_converted: Converted, tmp_path: Path) -> None:
    m, local = _local(torch_converted, "x86_gateway")
    mar = torch_converted.out / layout.TORCHSERVE_DIR / "digits-torch.mar"
    x = torch_converted.data.x_val[:32]
    with torchserve(tmp_path, mar, "digits-torch") as url:
        router = _router(EndpointConfig(type="torchserve", url=url, model="digits-torch", version=1,
                                        timeout_s=10), m)
        answer = router.answer({m.inputs[0].name: x}, None, None)  # no local model yet -> cloud
    assert answer.source == "cloud" and answer.reason is FallbackReason.NO_MODEL and answer.version == 1
    device = local.predict({m.inputs[0].name: x})[m.outputs[0].name]
    _agree(answer.outputs[m.outputs[0].name], device, m)
    assert router.stats.snapshot()["calls"] == {"no_model": 1}


def test_mlserver_kserve_v2_serves_the_converters_onnx(keras_converted: Converted, tmp_path: Path) -> None:
    m, local = _local(keras_converted, "x86_gateway")
    onnx_export = keras_converted.out / layout.TRITON_DIR / "digits" / "1" / "model.onnx"
    x = keras_converted.data.x_val[:16]
    with mlserver(tmp_path, onnx_export, "digits", 1) as url:
        router = _router(EndpointConfig(type="kserve", url=url, model="digits", version=1, timeout_s=10), m)
        answer = router.answer({m.inputs[0].name: x}, None, None, self_test_failed=True)
        # Wrong input shape: MLServer answers 4xx/5xx (FACTS.md); the caller gets a clear error, no hang.
        with pytest.raises(FallbackError):
            router.client.predict({m.inputs[0].name: np.zeros((2, 3), np.float32)})  # type: ignore[union-attr]
    assert answer.source == "cloud" and answer.reason is FallbackReason.SELF_TEST_FAILED
    _agree(answer.outputs[m.outputs[0].name], local.predict({m.inputs[0].name: x})[m.outputs[0].name], m)


def test_tfserving_standin_serves_the_savedmodel_export(keras_converted: Converted) -> None:
    """STAND-IN for TF Serving (see module docstring): same REST API over the converter's SavedModel."""
    m, local = _local(keras_converted, "raspberry_pi_4")
    app = build_standin(keras_converted.out / layout.TFSERVING_DIR / "digits", "digits")
    x = keras_converted.data.x_val[:16]
    with ServerThread(app) as server:
        router = _router(EndpointConfig(type="tfserving", url=server.url, model="digits", version=1), m)
        clean = router.answer({m.inputs[0].name: x}, local, 1)
        assert clean.source == "device" and clean.version == 1
        cloud = router.answer({m.inputs[0].name: x}, None, None)
    assert cloud.source == "cloud" and cloud.version == 1
    _agree(cloud.outputs[m.outputs[0].name], clean.outputs[m.outputs[0].name], m)
