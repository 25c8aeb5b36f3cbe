"""What `pip install edgefleet[agent]` puts on a device, in MB, against the floor of numpy + the runtime alone.

Builds the project's wheel, then installs it for real into fresh venvs on this machine (x86_64) and, with
pip's `--platform` / `--target`, the wheels a 64-bit Raspberry Pi / Jetson / i.MX would get (aarch64,
CPython 3.11). Sizes are the bytes added to site-packages (pip and setuptools of the fresh venv excluded).
The device classes with little storage are aarch64 (Pi 4/5, Coral, i.MX 8M Plus): `install_mb_aarch64` is
what they pay; an x86_64 gateway runs ONNX models and installs `[agent-onnx]` anyway.

Prints one JSON object: `install_mb` (`[agent]`, x86_64; target <= 150), `install_mb_aarch64`,
`install_mb_onnx` / `install_mb_onnx_aarch64` (`[agent-onnx]`, which adds onnxruntime), and the floor
measured in the same run: `floor_mb` (numpy + ai-edge-litert only, x86_64) and `own_mb` = install - floor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AARCH64 = ["--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
           "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux2014_aarch64",
           "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:"]  # fmt: skip


def size_mb(folder: Path, skip: tuple[str, ...] = ()) -> float:
    """Bytes of the files under `folder`, leaving out top-level entries whose name starts with one of `skip`."""
    files = (f for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return sum(f.stat().st_size for f in files if not f.relative_to(folder).parts[0].startswith(skip)) / 2**20


def pip(python: Path | str, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                   check=True, stderr=subprocess.DEVNULL)  # fmt: skip


def venv_install(work: Path, name: str, *requirements: str) -> float:
    """MB a fresh x86_64 venv's site-packages grows by when `requirements` are installed."""
    venv = work / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    before = size_mb(site)
    pip(venv / "bin" / "python", *requirements)
    return size_mb(site) - before


def target_install(work: Path, name: str, *requirements: str) -> float:
    """MB of the aarch64 wheels pip picks for `requirements`, unpacked into a --target folder.

    pip, which every venv already has, is not counted should a dependency pull it in (as in `venv_install`).
    """
    target = work / name
    pip(sys.executable, "--target", str(target), *AARCH64, *requirements)
    return size_mb(target, skip=("pip", "bin"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="install-size-"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(ROOT)],
                   check=True, stderr=subprocess.DEVNULL)  # fmt: skip
    wheel = next((work / "dist").glob("edgefleet-*.whl"))
    agent, onnx = f"edgefleet[agent] @ {wheel.as_uri()}", f"edgefleet[agent-onnx] @ {wheel.as_uri()}"
    floor = venv_install(work, "floor", "numpy>=1.26", "ai-edge-litert>=2.0")
    result = {
        "install_mb": round(venv_install(work, "agent", agent), 1),
        "install_mb_aarch64": round(target_install(work, "agent-aarch64", agent), 1),
        "install_mb_onnx": round(venv_install(work, "agent-onnx", onnx), 1),
        "install_mb_onnx_aarch64": round(target_install(work, "agent-onnx-aarch64", onnx), 1),
        "floor_mb": round(floor, 1),
        "floor_mb_aarch64": round(target_install(work, "floor-aarch64", "numpy>=1.26", "ai-edge-litert>=2.0"), 1),
    }
    result["own_mb"] = round(result["install_mb"] - result["floor_mb"], 1)
    result["target_mb"] = 150
    print(json.dumps(result))


if __name__ == "__main__":
    main()
