"""Opt-in kernels over the plain-PyTorch models (`speedups: auto|off`): `lightning_nmt.kernels.cpu`; and what the
CPU offers to parallel work (`available_cores`), imported without torch."""

import os


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
