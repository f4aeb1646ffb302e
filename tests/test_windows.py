"""The Numba window kernels against their NumPy references, and the stream layout."""
from __future__ import annotations

import string

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.data import windows
from rnnlab.data.windows import (
    batchify, gather, gather_reference, stream_chunk, stream_chunk_reference, window_starts,
    window_starts_reference, windows_into, windows_into_reference,
)


@st.composite
def panels(draw):
    """Ragged parts: (begins, ends) of up to 6 consecutive parts of random lengths (some empty)."""
    lengths = draw(st.lists(st.integers(0, 120), min_size=1, max_size=6))
    ends = np.cumsum(lengths).astype(np.int64) + draw(st.integers(0, 20))
    return ends - np.array(lengths, dtype=np.int64), ends


@settings(max_examples=150, deadline=None)
@given(parts=panels(), lookback=st.integers(1, 30), horizon=st.integers(1, 10), stride=st.integers(1, 7))
def test_window_starts_equal_reference_and_never_cross_a_part(parts, lookback, horizon, stride):
    begins, ends = parts
    starts = window_starts(begins, ends, lookback, horizon, stride)
    np.testing.assert_array_equal(starts, window_starts_reference(begins, ends, lookback, horizon, stride))
    brute = [s for b, e in zip(begins, ends) for s in range(b, e, stride) if s + lookback - 1 + horizon < e]
    assert starts.tolist() == brute  # every window, inputs and target, inside one part
    assert starts.dtype == np.int64


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 300), features=st.integers(1, 5), lookback=st.integers(1, 40),
    horizon=st.integers(1, 10), batch=st.integers(1, 33), seed=st.integers(0, 2**31),
)
def test_gather_and_materialise_equal_numpy_reference(n, features, lookback, horizon, batch, seed):
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
    every = np.full((batch, lookback, features), np.nan, np.float32)
    windows_into(values, starts, lookback, every)
    np.testing.assert_array_equal(every, windows_into_reference(values, starts, lookback))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 400), streams=st.integers(1, 9), vocab=st.integers(1, 12), data=st.data())
def test_stream_chunk_equals_batchify_and_get_batch(n, streams, vocab, data):
    per_stream = n // streams
    if per_stream < 2:
        return
    steps = data.draw(st.integers(1, per_stream - 1))
    offset = data.draw(st.integers(0, per_stream - 1 - steps))
    tokens = np.random.default_rng(n).integers(0, vocab, n).astype(np.int64)
    x = np.full((streams, steps, vocab), np.nan, np.float32)
    y = np.full((streams, steps), -1, np.int64)
    stream_chunk(tokens, batchify(n, streams), offset, x, y)
    ref_x, ref_y = stream_chunk_reference(tokens, streams, offset, steps, vocab)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


def test_stream_layout_reproduces_word_language_models_diagram():
    # word_language_model: the alphabet in 4 streams of 6 letters (y, z dropped), bptt chunks.
    alphabet = np.arange(26, dtype=np.int64)
    begins = batchify(26, 4)
    x = np.empty((4, 2, 26), np.float32)
    y = np.empty((4, 2), np.int64)
    letters = np.array(list(string.ascii_lowercase))
    stream_chunk(alphabet, begins, 0, x, y)
    assert ["".join(row) for row in letters[x.argmax(-1)]] == ["ab", "gh", "mn", "st"]
    assert ["".join(row) for row in letters[y]] == ["bc", "hi", "no", "tu"]
    stream_chunk(alphabet, begins, 4, x[:, :1], y[:, :1])  # the last step of each stream
    assert ["".join(row) for row in letters[y[:, :1]]] == ["f", "l", "r", "x"]


# ------------------------------------------- Numba's internals behind one door: pinned, with a fallback


def _fresh(kernel, **options):
    """The kernel compiled afresh from its Python source: today's module globals, no disk cache."""
    return numba.njit(nogil=True, **options)(kernel.py_func)


def _batch(seed=0, n=5000, features=3, lookback=40, batch=64):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, features)).astype(np.float32)
    target = rng.standard_normal(n).astype(np.float32)
    starts = rng.integers(0, n - lookback - 2, batch).astype(np.int64)
    return values, target, starts, lookback


def _gathered(gather, windows_into, values, target, starts, lookback):
    out_x = np.full((len(starts), lookback, values.shape[1]), np.nan, np.float32)
    out_y = np.full(len(starts), np.nan, np.float32)
    gather(values, target, starts, lookback, 2, out_x, out_y)
    every = np.full_like(out_x, np.nan)
    windows_into(values, starts, lookback, every)
    return out_x, out_y, every


def test_this_numba_takes_the_fast_pair_and_it_compiles_to_one_memcpy_and_prefetches():
    # An upgrade that removes or changes an internal the fast pair needs fails here, loudly,
    # instead of only gathering ~3x slower.
    assert windows._internals_changed() == []
    assert windows._copy_run is not windows._copy_run_plain and windows._prefetch is not windows._prefetch_none
    gather = _fresh(windows.gather)
    _gathered(gather, windows.windows_into, *_batch())
    llvm = "".join(gather.inspect_llvm().values())
    assert "@llvm.memcpy" in llvm and "@llvm.prefetch" in llvm


def test_an_internal_that_is_gone_or_has_other_parameters_sends_the_kernels_to_the_plain_pair(monkeypatch):
    from numba.core import cgutils
    from numba.core.base import BaseContext

    monkeypatch.setattr(cgutils, "raw_memcpy", lambda builder, dst, src, nbytes: None)
    monkeypatch.delattr(BaseContext, "get_dummy_value")
    with pytest.warns(RuntimeWarning, match=r"numba.core.cgutils.raw_memcpy, numba.core.base.BaseContext.get_dummy_value: "
                                            r"window gathers take a plain copy"):
        assert windows._fast_primitives() is None


def test_the_plain_pair_gives_the_fast_pairs_windows_exactly(monkeypatch):
    args = _batch(seed=3, lookback=57)
    fast = _gathered(windows.gather, windows.windows_into, *args)
    monkeypatch.setattr(windows, "_copy_run", windows._copy_run_plain)
    monkeypatch.setattr(windows, "_prefetch", windows._prefetch_none)
    monkeypatch.setattr(windows, "_prefetch_window", numba.njit(inline="always", nogil=True)(windows._prefetch_window.py_func))
    gather = _fresh(windows.gather)
    plain = _gathered(gather, _fresh(windows.windows_into, parallel=True), *args)
    for a, b in zip(fast, plain):
        np.testing.assert_array_equal(a, b)
    assert "@llvm.prefetch" not in "".join(gather.inspect_llvm().values())  # the plain pair was what ran
    ref_x, ref_y = gather_reference(*args[:3], args[3], 2)
    np.testing.assert_array_equal(plain[0], ref_x)
    np.testing.assert_array_equal(plain[1], ref_y)
