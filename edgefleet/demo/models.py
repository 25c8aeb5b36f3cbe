"""The demo's model versions: digits CNNs converted for two profiles; v3 deliberately badly quantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.samples import Digits, digits, train_keras_cnn

PROFILES = ("raspberry_pi_4", "x86_gateway")
NAME = "digits"

# v3's conversion is misconfigured on purpose: int8 only, calibrated on near-black images, with the
# accuracy budget switched off — the kind of release a fleet's health gates exist to catch.
BAD_PROFILES = {
    "raspberry_pi_4": (
        'arch = "arm64"\nruntimes = ["litert"]\ndelegate = "xnnpack"\nformats = ["tflite"]\n'
        'quantizations = ["int8"]\nthreads = 4\nspeed = { host_factor = 8.0 }\n'
    ),
    "x86_gateway": (
        'arch = "x86_64"\nruntimes = ["onnxruntime"]\nformats = ["onnx"]\nquantizations = ["int8"]\nthreads = 2\n'
    ),
}


def _bad_profiles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in BAD_PROFILES.items():
        (folder / f"{name}.toml").write_text(
            f'name = "{name}"\ndescription = "demo: accuracy budget off"\n{body}'
            "budgets = { max_artifact_bytes = 67108864, max_ram_bytes = 536870912, latency_ms = 50.0, "
            "max_accuracy_loss_pt = 100.0 }\n"
        )
    return folder


def build_versions(root: Path) -> tuple[Digits, dict[int, Path]]:
    """Train and convert v1, v2 (more training) and v3 (bad calibration); returns the output folders."""
    from converter.pipeline import ConvertRequest, convert

    root.mkdir(parents=True, exist_ok=True)
    data = digits()
    calib, val = data.write(root)
    bad_calib = root / "bad-calib.npy"
    np.save(bad_calib, (data.x_train[:200] * 0.02).astype(np.float32))
    outs: dict[int, Path] = {}
    for version, epochs, calibration, profiles_dir in (
        (1, 6, calib, None),
        (2, 14, calib, None),
        (3, 14, bad_calib, _bad_profiles(root / "bad-profiles")),
    ):
        model = train_keras_cnn(root / f"digits-v{version}.keras", data, epochs=epochs)
        result = convert(
            ConvertRequest(
                model=model,
                profiles=list(PROFILES),
                calibration=calibration,
                validation=val,
                out=root / f"out-v{version}",
                name=NAME,
                version=version,
                latency_runs=50,
                profiles_dir=profiles_dir,
                force=True,
            )
        )
        missing = [r.profile.name for r in result.results if r.manifest is None]
        if missing:
            raise RuntimeError(f"v{version}: no artifact for {missing}")
        outs[version] = result.out
    return data, outs
