"""Independent of converter.measure: load an artifact straight in LiteRT / onnxruntime and run it."""

from __future__ import annotations

import numpy as np

from protocol.manifest import Manifest, ModelFormat


def run_artifact(manifest: Manifest, model: bytes, x: np.ndarray) -> np.ndarray:
    """Run a single-input artifact over `x` (float), one sample at a time; float outputs of output 0."""
    spec_in, spec_out = manifest.inputs[0], manifest.outputs[0]
    if manifest.format is ModelFormat.ONNX:
        import onnxruntime as ort

        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [t.name for t in manifest.inputs]
        assert [o.name for o in sess.get_outputs()] == [t.name for t in manifest.outputs]
        return np.asarray(sess.run([spec_out.name], {spec_in.name: x.astype(np.float32)})[0])
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    assert np.dtype(din["dtype"]).name == spec_in.dtype
    assert np.dtype(dout["dtype"]).name == spec_out.dtype
    outs = []
    for row in x:
        v = row[None].astype(np.float32)
        if spec_in.quantization:
            scale, zp = din["quantization"]
            assert scale == spec_in.quantization.scale and zp == spec_in.quantization.zero_point
            info = np.iinfo(np.dtype(spec_in.dtype))
            v = np.clip(np.round(v / scale) + zp, info.min, info.max).astype(spec_in.dtype)
        it.set_tensor(din["index"], v)
        it.invoke()
        y = it.get_tensor(dout["index"])
        if spec_out.quantization:
            scale, zp = dout["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        outs.append(y.astype(np.float32))
    return np.concatenate(outs)
