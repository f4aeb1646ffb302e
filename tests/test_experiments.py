"""The experiments under experiments/ run, in small versions, and show what they claim."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_vanishing_small_version_shows_the_tanh_rnn_gradient_dying_faster(tmp_path):
    args = ["--length", "30", "--epochs", "1", "--steps", "10", "--probe-every", "5", "--cells", "rnn,lstm,gru,indrnn",
            "--depths", "1", "--lstm-chrono", "30", "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "vanishing" / "run.py"), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    factors = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+)-d1-h64-k0\s+\S+\s+\S+\s+(-?[\d.]+)$",
                                                                    result.stdout, re.M)}
    assert set(factors) == {"rnn", "lstm", "gru", "indrnn", "lstm_chrono30"}, result.stdout
    # log10(||dL/dh_0|| / ||dL/dh_29||) at the probe after 5 updates: the tanh RNN's gradient
    # fades by orders of magnitude more than the LSTM's. A GRU this early (z near 1/2 at init)
    # fades nearly as fast: only the order is asserted for it.
    assert factors["rnn"] < min(factors["lstm"], factors["lstm_chrono30"]) - 1
    assert factors["rnn"] < factors["gru"]
    assert (tmp_path / "decay_l0.png").is_file() and (tmp_path / "compare.html").is_file()
