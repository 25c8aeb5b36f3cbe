"""Converter: one trained model in, verified per-device artifacts + manifests + reports out.

TensorFlow, tf2onnx, onnx and torch are imported lazily inside the functions that need them.
"""

CONVERTER_VERSION = "0.1.0"
