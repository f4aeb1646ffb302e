"""Process set-up for a run: the allocator, the device, the seeds."""
from __future__ import annotations

import ctypes
import ctypes.util
import random

import numpy as np
import torch

from rnnlab.config import ConfigError

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


def tune_allocator() -> bool:
    """Keep freed memory in the heap instead of returning it to the kernel every step.

    With glibc's defaults PyTorch's large per-step buffers are mmap'ed and munmap'ed each step,
    so the kernel zeroes ~10,000 fresh pages per step of the default model and a CPU step takes
    about twice as long. This is what GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:
    glibc.malloc.trim_threshold=... does, applied from inside the process (no re-exec).
    Returns False where it does not apply (not glibc). Opt out with ``allocator=system``.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(ok)


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present, else CPU. cuda without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available (allowed here: auto, cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a CPU run is repeatable bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
