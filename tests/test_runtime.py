"""rnnlab.runtime: the allocator setting (process-wide, so each case runs in a child) and the stop signals."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Allocate 64 MB and free it, a few times: a cycle's page faults tell whether the freed memory
# stayed in the process (a few) or went back to the kernel (one per 4 KB page). The fewest of
# the cycles counts, as a small allocation in between can land in the freed block once.
_CHILD = """
import json, resource, sys, torch
from rnnlab import runtime
tuned = sys.argv[1] == "tuned" and runtime.tune_allocator()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 * 2**20).fill_(1)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del a
print(json.dumps({"tuned": tuned, "faults": min(faults[1:])}))
"""


def _faults(variant: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, variant], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_tuned_allocator_keeps_a_64_mb_buffer_past_the_mmap_threshold_ceiling() -> None:
    # 64 MB is above the 32 MB ceiling of M_MMAP_THRESHOLD, so only M_MMAP_MAX = 0 keeps it:
    # torch.nn.LSTM's workspace at T=200 is this large (experiments/benchmarks/allocator.py).
    tuned = _faults("tuned")
    if not tuned["tuned"]:
        pytest.skip("not glibc: mallopt is not available here")
    system = _faults("system")
    pages = 64 * 2**20 // 4096
    assert system["faults"] > pages // 2  # the control: glibc's default maps fresh pages
    assert tuned["faults"] < pages // 20


def test_a_stop_asked_for_after_the_last_step_goes_to_the_handler_before_and_never_to_pythons_default():
    import os
    import signal

    from rnnlab import runtime

    seen = []
    before = signal.signal(signal.SIGINT, lambda number, frame: seen.append(number))  # a sweeper's, say
    try:
        stop = runtime.StopOnSignal()
        os.kill(os.getpid(), signal.SIGINT)  # while the run tests and saves: it cannot stop any more
        assert stop.requested() and seen == []
        stop.restore()
        stop.pass_on()
        assert seen == [signal.SIGINT]
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a plain run: nobody to tell, no KeyboardInterrupt
        stop = runtime.StopOnSignal()
        os.kill(os.getpid(), signal.SIGINT)
        stop.restore()
        stop.pass_on()
        quiet = runtime.StopOnSignal()  # no request: nothing is passed on
        quiet.restore()
        quiet.pass_on()
    finally:
        signal.signal(signal.SIGINT, before)
