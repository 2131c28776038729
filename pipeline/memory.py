"""The C allocator's policy for a preprocessing run: give freed memory back to the system.

CPython hands every block over 512 bytes to the C library's malloc. With its default policy glibc
raises its mmap threshold each time a large buffer is freed (up to 32 MiB), so the runner's large
buffers (a shuffle's encoded groups, tens to hundreds of megabytes) end up on the heap, and memory
freed inside the heap stays with the process. At 1M flights the in-memory runner held 0.7 GiB that
way when the windowing's largest group started, on top of what that group needed.

Fixing the trim threshold (as ``MALLOC_TRIM_THRESHOLD_=65536`` would, the setting Dask recommends
for its workers for the same reason) turns that adjustment off: large buffers stay mapped and go
back when freed, and the heap gives back its free top beyond 64 KiB. Measured at 1M flights: peak
RSS 3.26 -> 2.57 GiB, wall time unchanged. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

TRIM_THRESHOLD = 64 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter number
_ENV = "MALLOC_TRIM_THRESHOLD_"


def tune_malloc(threshold: int = TRIM_THRESHOLD) -> bool:
    """Sets glibc's trim threshold for this process, and (unless the user set it already) for the
    worker processes it starts (DirectRunner's multi-processing mode) through the environment.
    True if this process's allocator took it."""
    os.environ.setdefault(_ENV, str(threshold))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    try:
        value = int(os.environ[_ENV])  # the user's own setting wins
    except ValueError:
        value = threshold
    ok = bool(mallopt(_M_TRIM_THRESHOLD, value))
    if not ok:
        logger.debug("mallopt(M_TRIM_THRESHOLD) refused; the allocator keeps its default policy")
    return ok
