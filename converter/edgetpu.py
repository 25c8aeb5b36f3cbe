"""Edge TPU compilation, honestly: with Google's `edgetpu_compiler` on PATH a Coral's int8 artifact is compiled
by it (ops the TPU cannot run stay on the CPU, as the compiler decides); without it the artifact is the plain
int8 model, which runs on the Coral's CPU, and the report says so."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConversionFailed

COMPILER = "edgetpu_compiler"
NOT_COMPILED = (
    f"not Edge-TPU compiled: {COMPILER} is not installed on this host (Google ships it for x86-64 Debian only), so "
    "the int8 artifact runs on the Coral's CPU, not its TPU"
)


@dataclass(frozen=True)
class EdgeTpu:
    """The compiler found on PATH, if any."""

    compiler: str | None

    @classmethod
    def find(cls) -> EdgeTpu:
        return cls(shutil.which(COMPILER))

    def note(self, compiled: bool) -> str:
        if compiled:
            return f"Edge-TPU compiled by {self.compiler} (ops the TPU cannot run stay on the CPU)"
        return NOT_COMPILED

    def compile(self, model: bytes) -> bytes | None:
        """The compiled model, or None when no compiler is installed; ConversionFailed when it refuses."""
        if self.compiler is None:
            return None
        with tempfile.TemporaryDirectory(prefix="edgefleet-edgetpu-") as tmp:
            src = Path(tmp, "model.tflite")
            src.write_bytes(model)
            done = subprocess.run([self.compiler, "-s", "-o", tmp, str(src)], capture_output=True, text=True,
                                  check=False, timeout=600)
            out = Path(tmp, "model_edgetpu.tflite")
            if done.returncode != 0 or not out.exists():
                said = (done.stderr or done.stdout).strip().splitlines()
                raise ConversionFailed(f"{COMPILER} failed: {said[-1][:300] if said else f'exit {done.returncode}'}")
            return out.read_bytes()
