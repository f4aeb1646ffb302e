"""Process set-up for a run: the allocator, the device, the seeds."""
from __future__ import annotations

import ctypes
import ctypes.util
import random

import numpy as np
import torch

from rnnlab.config import ConfigError
from rnnlab.console import size_text

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


def tune_allocator() -> bool:
    """Keep freed memory in the heap instead of returning it to the kernel every step.

    With glibc's defaults PyTorch's large per-step buffers are mmap'ed and munmap'ed each step,
    so the kernel zeroes ~10,000 fresh pages per step of the default model and a CPU step takes
    about twice as long. This is what GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:
    glibc.malloc.trim_threshold=... does, applied from inside the process (no re-exec).
    The threshold cannot exceed 32 MB, and torch.nn.LSTM's workspace at T=200, 4 x 64, batch 64
    is larger: so mmap is switched off altogether (M_MMAP_MAX = 0; glibc still falls back to
    mmap if the heap cannot grow), which took that model's CPU step from ~205 to ~135 ms.
    Returns False where it does not apply (not glibc). Opt out with ``allocator=system``.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ok &= mallopt(_M_MMAP_MAX, 0)
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


class StopOnSignal:
    """Turns SIGTERM and SIGUSR1 (what Slurm sends before it kills a job) and a first Ctrl-C
    into a polite request: the training loop polls ``requested`` after each step, saves a
    checkpoint and stops. A second Ctrl-C interrupts at once."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        import signal

        self.signal: int | None = None
        self._previous = {}
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame: object) -> None:
        import signal

        if self.signal == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = number

    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports it: 143 for SIGTERM and (by Slurm convention for
        a preempted job) SIGUSR1, 130 for Ctrl-C."""
        import signal

        return 130 if self.signal == signal.SIGINT else 143

    def restore(self) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def pass_on(self) -> None:
        """A request that came after the run's last step (while it tested and saved) stopped
        nothing: hand it to whoever had the signal before, so a sweeper running this trial in
        its own process stops after it instead of losing the user's Ctrl-C. Python's default
        handlers (KeyboardInterrupt, exit) are not called: the run is done, nothing to stop."""
        import signal

        handler = self._previous.get(self.signal) if self.signal is not None else None
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signal, None)


def available_memory(device: torch.device) -> int | None:
    """Bytes a run could still allocate on ``device``: CUDA's free memory, or the kernel's
    MemAvailable; None where it cannot be known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(
    n_params: int, hidden_size: int, depth: int, directions: int, batch: int, steps: int | None, device: torch.device,
) -> None:
    """Refuse a model whose training step cannot fit, before anything is allocated (a hidden
    size of 10^6 asked torch for 16 TB and died with a traceback). The bound is a floor, so it
    never refuses what fits: float32 weights and their gradients (8 bytes a parameter; Adam
    adds 8 more) and one float per unit, layer and time step of the batch for backward (the
    cells keep several). ``steps``: the time steps a batch spans (None: not counted)."""
    need = 8 * n_params + 4 * batch * (steps or 0) * hidden_size * depth * directions
    available = available_memory(device)
    if available is not None and need > available:
        window = f" x {steps} steps" if steps else ""
        raise ConfigError(
            f"hidden_size={hidden_size}, depth={depth}, train.batch_size={batch}: a training step needs at least "
            f"{size_text(need)} ({n_params:,} parameters with their gradients, the hidden states of {batch}{window}) "
            f"but {size_text(available)} is available on {device} (allowed: a model and batch that fit)"
        )

