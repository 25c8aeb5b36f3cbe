"""Hand memory the daemon no longer uses back to the OS (glibc only; a no-op elsewhere).

Loading a model frees a lot at once: onnxruntime drops the parsed protobuf (about the model's size)
once the session holds its initializers, a self-test frees a second copy of the model, and an update
frees its downloaded bytes. glibc keeps such freed blocks in its arenas, so the daemon's RSS would stay
at the peak of its last update. `malloc_trim(0)` returns every whole free page of every arena
(about 4-5 MB on the benchmark's 5 MB ONNX model: bench/agent_overhead.py).

`malloc_trim` does not reach the free memory at the top of a thread's heap, though (glibc trims the top of
the main heap only), and glibc lets that grow: each time a large mapped block is freed (a model load, an
update), it raises its mmap threshold to that block's size (up to 32 MiB) and its trim threshold to twice
that, so later temporaries up to that size come from the heaps and what a thread frees stays resident
(8 MB of a serving thread's freed temporaries, kept for the process's life: tests/agent/test_memory.py).
The daemon fixes both thresholds at glibc's starting 128 KiB (`fix_malloc_thresholds`): blocks that large
are mapped and unmapped on their own, a heap's free top past 128 KiB goes back at once. In
bench/agent_overhead.py the daemon holds 0.9 MB less after its HTTP load with either runtime (the telemetry
and HTTP threads' heaps: 2.1 -> 0.75 MB); what it bounds is the daemon after big requests and updates.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018
    except (OSError, AttributeError):  # musl (Alpine) and other C libraries have neither
        return None
    return libc


_LIBC = _glibc()
_TRIM: Callable[[int], int] | None = _LIBC.malloc_trim if _LIBC is not None else None

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
FIXED_THRESHOLD = 128 * 1024  # glibc's starting value of both


def fix_malloc_thresholds() -> bool:
    """Keep glibc's mmap and trim thresholds at 128 KiB for the process's life (the daemon calls it at start;
    the in-process Python API leaves its host application's allocator alone). False where there is no glibc."""
    if _LIBC is None:
        return False
    mallopt: Callable[[int, int], int] = _LIBC.mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, FIXED_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, FIXED_THRESHOLD))


def release_free_memory() -> bool:
    """Collect garbage, then return free heap pages to the OS; False where the C library cannot."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
