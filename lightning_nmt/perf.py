"""Process-wide performance settings applied by the entry points and the benchmark."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator() -> bool:
    """Let glibc keep freed large blocks in the heap for reuse.

    A training step allocates the same large activations (logits, the concat attention's (B, T, S, H)
    tensor) every step; by default glibc hands blocks over 32 MB back to the OS and page-faults them in
    again, which cost 25-35% of a CPU training step here (benchmarks/README.md). Returns whether it applied
    (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False
