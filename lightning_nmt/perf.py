"""Process-wide performance settings applied by the entry points and the benchmark."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_memory() -> bool:
    """Let glibc keep freed large blocks in the heap for reuse, and keep oneDNN's primitive cache small.

    A training step allocates the same large activations (logits, the concat attention's (B, T, S, H)
    tensor) every step; by default glibc hands blocks over 32 MB back to the OS and page-faults them in
    again, which cost 25-35% of a CPU training step here (benchmarks/README.md). Returns whether it applied
    (glibc on Linux only).

    bf16 matmuls on the CPU run through oneDNN, whose primitive cache and PyTorch's ideep cache above it each
    keep up to 1,024 entries, one per matmul shape, with their buffers; token batches have ever new shapes,
    so under bf16-mixed peak memory kept growing, by 0.5-1.7 GB. Caches of 8 (oneDNN) and 32 (ideep,
    LRU_CACHE_CAPACITY) cost no speed; 8 for ideep made bf16 decoding ~10% slower (benchmarks/README.md).
    Must run before the first bf16 matmul; values the user set win.
    """
    for name, capacity in (("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8"), ("LRU_CACHE_CAPACITY", "32")):
        os.environ.setdefault(name, capacity)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False
