"""The Numba window kernel against its NumPy reference."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.data.windows import gather, gather_reference, window_starts


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 300), features=st.integers(1, 5), lookback=st.integers(1, 40),
    horizon=st.integers(1, 10), batch=st.integers(1, 33), seed=st.integers(0, 2**31),
)
def test_gather_equals_numpy_reference(n, features, lookback, horizon, batch, seed):
    if lookback + horizon > n:
        return
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, features)).astype(np.float32)
    target = rng.standard_normal(n).astype(np.float32)
    starts = rng.integers(0, n - lookback - horizon + 1, batch).astype(np.int64)
    out_x = np.full((batch, lookback, features), np.nan, np.float32)
    out_y = np.full(batch, np.nan, np.float32)
    gather(values, target, starts, lookback, horizon, out_x, out_y)
    ref_x, ref_y = gather_reference(values, target, starts, lookback, horizon)
    np.testing.assert_array_equal(out_x, ref_x)
    np.testing.assert_array_equal(out_y, ref_y)


@settings(max_examples=100, deadline=None)
@given(begin=st.integers(0, 50), length=st.integers(0, 200), lookback=st.integers(1, 30),
       horizon=st.integers(1, 10), stride=st.integers(1, 7))
def test_window_starts_keep_every_window_inside_its_part(begin, length, lookback, horizon, stride):
    end = begin + length
    starts = window_starts(begin, end, lookback, horizon, stride)
    brute = [s for s in range(begin, end, stride) if s + lookback - 1 + horizon < end]
    assert starts.tolist() == brute
