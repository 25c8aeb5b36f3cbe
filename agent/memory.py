"""Hand memory the daemon no longer uses back to the OS (glibc only; a no-op elsewhere).

Loading a model frees a lot at once: onnxruntime drops the parsed protobuf (about the model's size)
once the session holds its initializers, a self-test frees a second copy of the model, and an update
frees its downloaded bytes. glibc keeps such freed blocks in its arenas, so the daemon's RSS would stay
at the peak of its last update. `malloc_trim(0)` returns every whole free page of every arena
(about 4-5 MB on the benchmark's 5 MB ONNX model: bench/agent_overhead.py).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def _glibc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # musl (Alpine) and other C libraries have no malloc_trim
        return None
    return trim


_TRIM = _glibc_trim()


def release_free_memory() -> bool:
    """Collect garbage, then return free heap pages to the OS; False where the C library cannot."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
