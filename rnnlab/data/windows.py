"""Window kernels: the only module that imports Numba.

A window starting at s reads inputs values[s : s + lookback] and the target
target[s + lookback - 1 + horizon]:

    values  ... | s | s+1 | ... | s+L-1 | ... | s+L-1+h | ...
                |<---- lookback L ---->|        ^ target (h steps after the last input)

A panel is many series stored one after another; a part is one split of one series, [begin,
end). Windows are listed per part, so none crosses a series or a split boundary:

    values  | series a: train | val | test | series b: train   | val | test | ...
    starts    ^ ^ ^ ^           ^     ^      ^ ^ ^ ^ ^ ^          ^     ^

Kernels fill caller-owned, preallocated buffers, so a batch costs O(batch x lookback) memory
and nothing is allocated per step; all windows are never materialised unless asked for
(``windows_into``). Each kernel has a NumPy reference (``*_reference``) it is tested against.

``cache=True``: the compiled kernels are kept on disk, so a second process skips the ~4 s
compile. Numba writes the cache beside this file, and where that directory is read-only (a
system site-packages) falls back to a per-user cache directory by itself; ``NUMBA_CACHE_DIR``
overrides both.
"""
from __future__ import annotations

import warnings
from typing import Any

import numba
import numpy as np
from numba import types
from numpy.lib.stride_tricks import sliding_window_view

# ---------------------------------------------------------- Numba's internals, behind one door
#
# Two primitives reach below Numba's public API: a window copied as one LLVM memcpy (through
# numba.core.cgutils and the target context's array model) and a software prefetch (LLVM's raw
# llvm.prefetch intrinsic). They are built here and nowhere else. Where this Numba lacks the
# internals they call, or their signatures have changed, the kernels below take the plain pair
# instead: Numba's own slice copy (3.4x slower) and no prefetch, with a warning. The check reads
# signatures only: compiling anything at import would cost the ~1 s of Numba's start-up that
# the first kernel call pays anyway. tests/test_windows.py compiles the kernels and pins that
# this Numba takes the fast pair, that it is a memcpy and a prefetch, and that the plain pair
# gives the same windows.
_INTERNALS = {  # what the fast pair calls, with the parameters it passes
    ("numba.core.cgutils", "raw_memcpy"): ["builder", "dst", "src", "count", "itemsize", "align"],
    ("llvmlite.ir", "Module.declare_intrinsic"): ["self", "intrinsic", "tys", "fnty"],
    ("numba.core.base", "BaseContext.make_array"): ["self", "typ"],
    ("numba.core.base", "BaseContext.get_abi_sizeof"): ["self", "ty"],
    ("numba.core.base", "BaseContext.get_data_type"): ["self", "ty"],
    ("numba.core.base", "BaseContext.get_constant"): ["self", "ty", "val"],
    ("numba.core.base", "BaseContext.get_dummy_value"): ["self"],
}


def _internals_changed() -> list[str]:
    """The internals in _INTERNALS that this Numba lacks or has with other parameters."""
    import importlib
    import inspect

    changed = []
    for (module, name), params in _INTERNALS.items():
        try:
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            same = list(inspect.signature(obj).parameters) == params
        except (ImportError, AttributeError, TypeError, ValueError):
            same = False
        if not same:
            changed.append(f"{module}.{name}")
    return changed


def _fast_primitives() -> tuple[Any, Any] | None:
    """(copy_run, prefetch) built on Numba's internals, or None (with a warning) where this
    Numba lacks them or has changed them."""
    changed = _internals_changed()
    if changed:
        warnings.warn(f"rnnlab: Numba {numba.__version__} lacks or has changed {', '.join(changed)}: "
                      "window gathers take a plain copy (~3x slower)", RuntimeWarning, stacklevel=2)
        return None
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def copy_run(typingctx, dst, dst_start, src, src_start, count):  # noqa: ARG001 (Numba's signature)
        """dst.flat[dst_start : dst_start + count] = src.flat[src_start : src_start + count], as
        one LLVM memcpy. Numba's own slice assignment compiles to an element loop that ran 3.4x
        slower here (3.3 vs 11.3 GB/s on random windows); a window is one contiguous run, so
        this is exact. Both arrays must be C-contiguous and the ranges in bounds (the callers
        guarantee it)."""
        sig = types.void(dst, types.intp, src, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            out = context.make_array(signature.args[0])(context, builder, args[0])
            inp = context.make_array(signature.args[2])(context, builder, args[2])
            itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            cgutils.raw_memcpy(builder, builder.gep(out.data, [args[1]]), builder.gep(inp.data, [args[3]]),
                               args[4], context.get_constant(types.intp, itemsize))
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def prefetch(typingctx, src, index):  # noqa: ARG001 (Numba's signature)
        """Start loading the cache line that holds src.flat[index] into L2: LLVM's prefetch
        (read, locality 2: x86 prefetcht1). A hint: nothing waits for it and no address faults.
        Into L2 rather than L1, whose few miss buffers the copy itself needs: prefetching into
        L1 ran at 36 us per batch, into L2 at 22 us (experiments/benchmarks/README.md)."""
        sig = types.void(src, types.intp)

        def codegen(context, builder, signature, args):
            inp = context.make_array(signature.args[0])(context, builder, args[0])
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            # Declared with its pointer type, so the name is mangled for typed (LLVM 14) and
            # opaque (LLVM 15+) pointers alike.
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            builder.call(fn, [builder.bitcast(builder.gep(inp.data, [args[1]]), i8p), i32(0), i32(2), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    return copy_run, prefetch


@numba.njit(inline="always", nogil=True)
def _copy_run_plain(dst: np.ndarray, dst_start: int, src: np.ndarray, src_start: int, count: int) -> None:
    """The fallback copy: Numba's own slice assignment."""
    dst[dst_start : dst_start + count] = src[src_start : src_start + count]


@numba.njit(inline="always", nogil=True)
def _prefetch_none(src: np.ndarray, index: int) -> None:
    """The fallback prefetch: none (a hint only: the windows are the same without it)."""


_copy_run, _prefetch = _fast_primitives() or (_copy_run_plain, _prefetch_none)


# ------------------------------------------------------------------------- window starts


@numba.njit(cache=True, nogil=True)
def window_starts(begins: np.ndarray, ends: np.ndarray, lookback: int, horizon: int, stride: int) -> np.ndarray:
    """Starts of every window whose inputs and target lie inside one part [begins[i], ends[i]).

    (P,) int64 part bounds -> (n_windows,) int64 starts, part after part."""
    span = lookback + horizon  # a window touches [s, s + span)
    count = 0
    for p in range(begins.shape[0]):
        if ends[p] - begins[p] >= span:
            count += (ends[p] - begins[p] - span) // stride + 1
    out = np.empty(count, dtype=np.int64)
    i = 0
    for p in range(begins.shape[0]):
        for s in range(begins[p], ends[p] - span + 1, stride):
            out[i] = s
            i += 1
    return out


def window_starts_reference(begins: np.ndarray, ends: np.ndarray, lookback: int, horizon: int, stride: int) -> np.ndarray:
    parts = [np.arange(b, e - lookback - horizon + 1, stride, dtype=np.int64) for b, e in zip(begins, ends)]
    return np.concatenate([np.zeros(0, np.int64), *parts])


# ------------------------------------------------------------------------------- gather


PREFETCH_WINDOWS = 8  # windows whose lines are on their way while one is copied (4-12 ran alike)
PREFETCH_BYTES = 65536  # but at most this much in flight, so that wide windows still fit L2


@numba.njit(inline="always", nogil=True)
def _prefetch_window(src: np.ndarray, target: np.ndarray, first: int, width: int, target_at: int) -> None:
    for i in range(first, first + width, 16):  # every 64-byte line: 16 float32
        _prefetch(src, i)
    _prefetch(src, first + width - 1)  # an unaligned window reaches into one line more
    _prefetch(target, target_at)


@numba.njit(cache=True, nogil=True)
def gather(
    values: np.ndarray,  # (N, F) float32, C-contiguous
    target: np.ndarray,  # (N,) float32
    starts: np.ndarray,  # (B,) int64 window starts
    lookback: int,
    horizon: int,
    out_x: np.ndarray,  # (B, lookback, F) float32, C-contiguous, filled in place
    out_y: np.ndarray,  # (B,) float32, filled in place
) -> None:
    # A window is lookback x F consecutive floats of the row-major series: one memcpy each.
    # One thread on purpose: a batch is ~0.1-0.4 MB, and waking a second thread costs more than
    # it saves, or a whole scheduler time slice (16 ms measured) when the CPUs are busy, as
    # they are while torch trains.
    #
    # The starts are random and a large series is not in cache, so each window begins with a
    # miss, and the hardware prefetcher only catches on a few lines into it. Software prefetch
    # keeps the next ``ahead`` windows' lines (and targets) on their way while one is copied:
    #
    #     first:    prefetch w0 .. w7
    #     step b:   prefetch w(b+8), copy wb       (8 windows' lines in flight at once)
    row = values.shape[1]
    width = lookback * row
    src = values.reshape(-1)
    dst = out_x.reshape(-1)
    n = starts.shape[0]
    to_target = lookback - 1 + horizon
    ahead = max(1, min(PREFETCH_WINDOWS, PREFETCH_BYTES // (4 * width)))
    for b in range(min(ahead, n)):
        _prefetch_window(src, target, starts[b] * row, width, starts[b] + to_target)
    for b in range(n):
        if b + ahead < n:
            _prefetch_window(src, target, starts[b + ahead] * row, width, starts[b + ahead] + to_target)
        s = starts[b]
        _copy_run(dst, b * width, src, s * row, width)
        out_y[b] = target[s + to_target]


def gather_reference(
    values: np.ndarray, target: np.ndarray, starts: np.ndarray, lookback: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy fancy indexing: the obvious, allocating version of ``gather``."""
    rows = starts[:, None] + np.arange(lookback)[None, :]  # (B, L)
    return values[rows], target[starts + lookback - 1 + horizon]


@numba.njit(cache=True, nogil=True, parallel=True)
def windows_into(values: np.ndarray, starts: np.ndarray, lookback: int, out: np.ndarray) -> None:
    """Materialise every listed window at once: out[i] = values[starts[i] : starts[i] + lookback].

    For analyses that want a whole split in memory (O(N x lookback)); training never does."""
    row = values.shape[1]
    width = lookback * row
    src = values.reshape(-1)
    dst = out.reshape(-1)
    for i in numba.prange(starts.shape[0]):  # O(N x lookback) work: worth the threads
        _copy_run(dst, i * width, src, starts[i] * row, width)


def windows_into_reference(values: np.ndarray, starts: np.ndarray, lookback: int) -> np.ndarray:
    return sliding_window_view(values, lookback, axis=0)[starts].transpose(0, 2, 1)  # (n, L, F)


# ------------------------------------------------------------------------------- streams
#
# Truncated BPTT over a long sequence, as in PyTorch's word_language_model, batch first.
# ``batchify`` cuts the token sequence into B streams of n tokens (the tail that does not fill
# a stream is dropped). With the alphabet and B = 4:
#
#     ┌ a b c d e f ┐  stream 0
#     │ g h i j k l │  stream 1
#     │ m n o p q r │  stream 2
#     └ s t u v w x ┘  stream 3      (y, z dropped)
#
# ``stream_chunk`` then reads chunk i of k steps from every stream: inputs columns
# [i*k, i*k + k) and targets one step later. With k = 2, chunk 0 is x = [[a b] [g h] [m n]
# [s t]], y = [[b c] [h i] [n o] [t u]]. The state the model ends a chunk with is where the
# next chunk starts (carried, detached from the graph); at the end of the streams it is reset.


def batchify(n_tokens: int, n_streams: int) -> np.ndarray:
    """Where each of the B streams begins in the token sequence: (B,) int64."""
    return np.arange(n_streams, dtype=np.int64) * (n_tokens // n_streams)


@numba.njit(cache=True, nogil=True)
def stream_chunk(
    tokens: np.ndarray,  # (N,) int64 token ids
    begins: np.ndarray,  # (B,) int64, from batchify
    offset: int,  # the chunk's first step within each stream
    out_x: np.ndarray,  # (B, k, V) float32: one-hot inputs, filled in place
    out_y: np.ndarray,  # (B, k) int64: the next token at each step, filled in place
) -> None:
    out_x[:] = 0.0
    for b in range(begins.shape[0]):
        for t in range(out_x.shape[1]):
            i = begins[b] + offset + t
            out_x[b, t, tokens[i]] = 1.0
            out_y[b, t] = tokens[i + 1]


def stream_chunk_reference(
    tokens: np.ndarray, n_streams: int, offset: int, steps: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """word_language_model's batchify + get_batch with a one-hot encoding, batch first."""
    n = len(tokens) // n_streams
    streams = tokens[: n * n_streams].reshape(n_streams, n)
    x = streams[:, offset : offset + steps]
    y = streams[:, offset + 1 : offset + 1 + steps]
    return np.eye(vocab, dtype=np.float32)[x], y
