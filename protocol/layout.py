"""The converter's output folder: what `edgefleet convert --out DIR` writes and `models push DIR` reads.

    DIR/report.json                      machine-readable conversion report (all profiles)
    DIR/report.md, DIR/report.png        human report and chart
    DIR/<profile>/manifest.json          one manifest per profile (protocol.manifest.Manifest)
    DIR/<profile>/<artifact file>        the artifact the manifest names (sha256 + size inside)
    DIR/cloud/tfserving/<name>/<version>/saved_model.pb   TF Serving export (TF models)
    DIR/cloud/torchserve/<name>.mar      TorchServe archive (PyTorch models)
    DIR/cloud/triton/<name>/<version>/model.onnx  Triton / KServe v2 repository (float ONNX)
"""

from __future__ import annotations

MANIFEST_FILE = "manifest.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
CLOUD_DIR = "cloud"
TFSERVING_DIR = "cloud/tfserving"
TORCHSERVE_DIR = "cloud/torchserve"
TRITON_DIR = "cloud/triton"  # Triton / KServe v2 model repository with the float ONNX model
