"""Hand-written backpropagation through time for the loop cells: one autograd function per layer.

Why: an eager step loop records ~15 small ops per step, and autograd's backward replays each
with its own bookkeeping; for B=64, H=64 that overhead, not arithmetic, is the cost. Here the
forward loop runs without autograd and keeps only what the backward needs (the gate
activations, every h_t and c_t) in preallocated (T, B, ·) buffers. The backward loop computes
the pre-activation gradients of each step into one (T, B, G*H) buffer, so the weight gradients
are one matmul each after the loop.

    GatedLSTM (z[t] = [x_t, h_{t-1}], one buffer; W = [W_ih, W_hh]):
    forward:   for t: a = b + z[t] W^T; gates; c; h ──► z[t + 1]'s h part
    backward:  for t = T-1 … 0: dh, dc ──► da[t] (pre-activations) ──► [dx_t, dh_{t-1}] = da[t] W
               dW = Σ_t da[t]^T z[t]  (one matmul),  db = Σ_t da[t]
    The others take xp = x W_ih^T + b, done outside by autograd for all steps at once, and
    their da *is* dxp.

``tap``: a ``Tap`` of buffers, or None, that backward fills for the gradient probe
(rnnlab/probe.py). ``tap.dh`` (T, B, H) gets the total derivative dL/dh_t of every step (the
gradient from above plus the one from step t+1: the ``dh`` the loop already forms).
``tap.w_lag`` (T,), if given, gets where the recurrent weight's gradient comes from in time:

    dW_hh = Σ_t C_t,   C_t = da^rec_t^T h_{t-1}   (step t's term; da^rec: the gradient of the
                                                   pre-activations W_hh multiplies into)
    w_lag[t] = <C_t, dW_hh>_F,   so  Σ_t w_lag[t] = ||dW_hh||_F^2

and s_t = w_lag[t] / Σ w_lag is step t's share of dW_hh (its projection on the total: the
shares sum to 1 exactly, and a step that pushes against the total has a negative one). It is
one (T*B, H) x (H, G*H) product after the loop (``_write_lags``).

Every function here is tested against the cell's step-by-step ``forward`` (outputs and all
gradients, float64) and with torch.autograd.gradcheck (tests/test_cells.py).

Once differentiable: the backward loops write into preallocated buffers (``out=``), which
autograd cannot record, so a graph of the backward (torch.autograd.grad(..., create_graph=True),
as a gradient penalty needs) is refused with a pointer to the step loop
(``StackedRNN.forward(x, step_path=True)``), which autograd differentiates as often as asked.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, NamedTuple

import torch
from torch import Tensor


def _working_onednn_linear(ops: Any = torch.ops.mkldnn) -> Any:
    """oneDNN's matmul, ``torch.ops.mkldnn._linear_pointwise`` (the op torch.compile's CPU
    backend emits for linear layers), if this torch has it and it still means what mm and
    grad_weight assume: (x, W (N, K), b, "none", [], "") -> x W^T + b, and its ``binary``
    form (x, p, W, None, "add") -> x W^T + p. It is a private op: checked once on a tiny
    product here, it is the only door to it, and where it is missing, has another signature
    or computes something else, None: every product takes torch.mm/addmm (MKL), as slower
    but exact. tests/test_bptt.py pins that this torch passes the check."""
    if not torch.backends.mkldnn.is_available():
        return None
    op = getattr(ops, "_linear_pointwise", None)
    if op is None:
        return None
    g = torch.Generator().manual_seed(0)
    x, w, b, p = (torch.randn(*shape, generator=g) for shape in ((3, 4), (5, 4), (5,), (3, 5)))
    try:
        same = torch.allclose(op(x, w, b, "none", [], ""), torch.addmm(b, x, w.t()), atol=1e-5) and torch.allclose(
            op.binary(x, p, w, None, "add"), torch.addmm(p, x, w.t()), atol=1e-5
        )
    except (RuntimeError, TypeError, AttributeError, ValueError):  # gone, renamed, or another schema
        return None
    return op if same else None


_onednn_linear = _working_onednn_linear()
# Below this many multiply-adds oneDNN's ~10 us set-up per call outweighs its faster kernel
# (experiments/benchmarks/products.py, 1 thread).
_ONEDNN_MIN_MACS = 1 << 20


# oneDNN is taken only where it beats MKL by this factor on one step's product: a host where
# the two are close keeps MKL, so that a noisy moment cannot flip the choice between runs.
_ONEDNN_MARGIN = 1.15
PRODUCTS_ENV = "RNNLAB_CPU_PRODUCTS"
_PRODUCTS = ("mkl", "onednn")
_products: str | None = None  # "onednn" or "mkl" once decided (cpu_products)


def cpu_products() -> str:
    """What a float32 product on the CPU on one thread takes: "onednn" or "mkl". Decided once
    per process, on first use: pinned by the environment variable RNNLAB_CPU_PRODUCTS (mkl,
    onednn, or auto), else (auto) by racing the two on one LSTM step's product.

    Why a race: which is faster depends on the host, and by a lot. oneDNN ran (64, 128) x
    (128, 256) in 31 us against MKL's 43 on a Zen 5 EPYC, but in 55 against MKL's 45 on a Zen 4
    one, where the peephole LSTM's training step took 63 ms with oneDNN's products and 50 with
    MKL's (experiments/benchmarks/products.py). The two round differently in the last bit, so a
    run that must repeat bit for bit on other hosts pins one."""
    global _products
    if _products is None:
        pinned = os.environ.get(PRODUCTS_ENV, "auto")
        if pinned not in ("auto", *_PRODUCTS):
            raise ValueError(f"{PRODUCTS_ENV}={pinned!r} is not allowed (allowed: auto, mkl, onednn)")
        if pinned == "onednn" and _onednn_linear is None:
            raise ValueError(f"{PRODUCTS_ENV}=onednn, but this torch build has no working oneDNN linear (allowed: auto, mkl)")
        if pinned == "auto":
            pinned = "onednn" if _onednn_linear is not None and _onednn_wins() else "mkl"
        _products = pinned
    return _products


def continue_products(saved: str) -> str | None:
    """Take ``saved`` ("mkl" or "onednn", what a checkpoint was trained with) for the rest of
    this process, so that a resumed run repeats the bits of one that never stopped, whatever
    this process's race would choose. Returns why not, in one line, where it cannot: the
    environment pins another, or this torch has no oneDNN; None when taken."""
    global _products
    if saved not in _PRODUCTS:
        return f"the checkpoint's products {saved!r} are unknown here (allowed: mkl, onednn)"
    pinned = os.environ.get(PRODUCTS_ENV, "auto")
    if pinned != "auto" and pinned != saved:
        return f"{PRODUCTS_ENV}={pinned} here, {saved} in the checkpoint"
    if saved == "onednn" and _onednn_linear is None:
        return "the checkpoint's products were oneDNN's, which this torch build lacks"
    _products = saved
    return None


def products_in_use() -> str:
    """What float32 CPU products take now: "onednn" where cpu_products chose it and torch runs
    one thread, else "mkl"."""
    return "onednn" if torch.get_num_threads() == 1 and cpu_products() == "onednn" else "mkl"


def _onednn_wins(rounds: int = 15, calls: int = 5) -> bool:
    """Whether oneDNN's product beats MKL's by _ONEDNN_MARGIN on one step of the default LSTM,
    (64, 128) x (128, 256) plus a bias into a buffer as ``mm`` does it: medians over rounds,
    the two interleaved (~10 ms in all)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 128, generator=g), torch.randn(256, 128, generator=g), torch.randn(256, generator=g)
    out = x.new_empty(64, 256)
    candidates = {
        "mkl": lambda: torch.addmm(b, x, w.t(), out=out),
        "onednn": lambda: out.copy_(_onednn_linear(x, w, b, "none", [], "")),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the products it decides for: more threads keep MKL (_onednn)
    try:
        with torch.no_grad():
            for run in candidates.values():  # warm up: oneDNN builds its kernel on the first call
                run()
            for _ in range(rounds):
                for name, run in candidates.items():
                    started = time.perf_counter()
                    for _ in range(calls):
                        run()
                    times[name].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times["mkl"]) > _ONEDNN_MARGIN * statistics.median(times["onednn"])


def _onednn(x: Tensor) -> bool:
    """oneDNN for float32 on the CPU on one thread, where it wins on this host (cpu_products).
    On 2 threads MKL splits the products well and the loops ran as fast or faster without
    oneDNN (11-18% faster for peephole and FGR, T=200, where oneDNN took the per-step
    products), though one product alone timed faster."""
    return (
        _onednn_linear is not None and x.dtype == torch.float32 and x.device.type == "cpu"
        and products_in_use() == "onednn"
    )


def mm(x: Tensor, w_t: Tensor, plus: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """x w_t (+ plus: a bias (N,) or a (B, N) term), into ``out`` if given: every per-step
    product below. w_t is a weight (N, K) transposed, as a view; for a product with a weight
    as it is (the backward's da W) pass ``_untransposed(W)``.

    Why not torch.addmm alone: on the CPU torch's float32 products call MKL, which on a Zen 5
    EPYC runs one step's (64, 128) x (128, 256) at ~49 GMAC/s on one thread, where oneDNN
    (what torch.nn.LSTM runs on) reaches ~68: 31 us against 43. On a Zen 4 EPYC it is the
    other way round, so a host takes oneDNN only where it won the race (cpu_products).
    Smaller products go to MKL (see _ONEDNN_MIN_MACS), and so does every product on more than
    one thread (see _onednn). oneDNN has no float64 product, so float64 (what the tests check
    against the step path) takes MKL too. A weight that is not a contiguous matrix sends
    oneDNN to a kernel ~1000x slower; bptt passes none, and one would take MKL.
    """
    w = w_t.t()  # the (N, K) weight, as oneDNN's linear takes it
    if x.numel() * w.size(0) >= _ONEDNN_MIN_MACS and _onednn(x) and w.is_contiguous():
        if plus is None or plus.dim() == 1:
            y = _onednn_linear(x, w, plus, "none", [], "")
        else:
            y = _onednn_linear.binary(x, plus, w, None, "add")
        return y if out is None else out.copy_(y)  # oneDNN's op has no out= form
    if plus is None:
        return torch.mm(x, w_t, out=out)
    return torch.addmm(plus, x, w_t, out=out)


def _untransposed(w: Tensor) -> Tensor:
    """W as mm's w_t, for x W: the transpose of a contiguous copy of W^T (what oneDNN needs)."""
    return w.t().contiguous().t()


def grad_weight(d: Tensor, x: Tensor) -> Tensor:
    """d^T x for d (R, N), x (R, K): a weight's gradient, summed over R = T * B rows at once.

    oneDNN takes the rows as its inner dimension only after copying its first operand
    transposed, and copying the narrower one is cheaper: at R = 12800, (256 x 128) 6.4 ms this
    way round against 7.2 the other and 9.2 for MKL; (256 x 72) 3.1 against 5.6 and 6.1. Its
    second operand must be a contiguous matrix (a column slice of one took 2.3 s, not 2 ms).
    """
    fast = _onednn(d)
    if fast and d.is_contiguous() and x.size(1) < d.size(1):
        return _onednn_linear(x.t(), d.t(), None, "none", [], "").t()
    if fast and x.is_contiguous():
        return _onednn_linear(d.t(), x.t(), None, "none", [], "")
    return d.t() @ x


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.size(-1))  # (T, B, K) -> (T*B, K)


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _once_differentiable(function: str) -> None:
    """Refuse to build a graph of a backward (autograd runs a backward with grad mode on only
    when asked to, by create_graph=True): one line saying what to use instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"rnnlab.bptt.{function}'s hand-written backward cannot be differentiated again (create_graph=True); "
            "use the step loop, which can: StackedRNN.forward(x, step_path=True) or rnnlab.cells.step_scan"
        )


class Tap(NamedTuple):
    """The buffers a tapped backward fills (the module docstring): dh (T, B, H), the total
    dL/dh_t of every step; w_lag (T,) float64 or None, <C_t, dL/dW_hh>_F of every step."""

    dh: Tensor
    w_lag: Tensor | None = None


def _write_lags(tap: Tap | None, terms: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    """Into tap.w_lag[t]: <C_t, dW>_F = Σ_b,i da[t,b,i] (h_{t-1} dW^T)[t,b,i], summed over the
    row blocks ``terms`` = [(da (T, B, N), what it multiplied (T, B, K), dW's rows (N, K))]:
    one product per block for all steps, instead of T outer products C_t.

    The sum over units stays in the working precision (one sample's term, 1e-7 relative in
    float32) and the sum over the batch is float64: a float64 sum of the whole (T, B, N) array
    casts it first, 5x slower than this (0.8 ms against 0.15 at 48 x 64 x 256)."""
    if tap is None or tap.w_lag is None:
        return
    total = 0
    for da, h, d_w in terms:
        T, B, N = da.shape
        m = mm(_flat(h), d_w.contiguous().t()).view(T, B, N)  # h_{t-1} dW^T; mm's fast path wants W contiguous
        total = total + m.mul_(da).sum(2).double().sum(1)
    tap.w_lag.copy_(total)

def _gated_lstm_setup(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor, peep: Tensor | None,
    w_ss: Tensor | None, cfg: tuple,
) -> tuple[tuple, tuple, tuple, tuple, tuple]:
    """GatedLSTM.forward's buffers, views and weights, made once before its loop, in five groups:

    buffers   (z, hs, cs, sig, gs, outs, w): the (T(+1), B, ·) tensors the loop fills, and W
    steps     (z_at, h_at, c_at, g_at, out_at, early, late): their per-step views
    pre       (a, a_sig, a_g, a_early, a_early_at, a_late): views of one step's pre-activations
    gates     (i_at, f_at, o_at): gates i, f, o per step, None where the variant drops one
    operands  (w_f, bias_f, w_ss_t, p_early, p_late, minus_one, c2): the weights as mm and the
              loop take them, and two (B, H) constants/scratch
    """
    flags, names, E = cfg
    T, B, I = x.shape
    H, S = h0.size(1), len(names)
    # z[t] = [x_t, h_{t-1}]: a step's pre-activations are one product with [W_ih, W_hh]
    # (K = I + H). Hoisting x W_ih^T out of the loop instead costs more: a (T*B, I) x (I, 4H)
    # product runs at ~34 GMAC/s here against ~45 for the per-step one, and its (T, B, 4H)
    # result is another 13 MB pass at T = 200.
    z = x.new_empty(T + 1, B, I + H)
    z[:T, :, :I] = x
    z[T, :, :I] = 0
    hs = z[:, :, I:]  # h_{t-1} at t: hs[0] = h0, hs[t + 1] = h_t
    cs = x.new_empty(T + 1, B, H)
    hs[0], cs[0] = h0, c0
    sig = x.new_empty(T, B, S * H)  # sigmoid gate activations
    gs = x.new_empty(T, B, H)  # g after its activation
    outs = cs[1:] if "NOAF" in flags else x.new_empty(T, B, H)  # tanh(c_t), or c_t (NOAF)
    # act[name][t] is gate `name` at step t, (B, H).
    act = {n: v.unbind(0) for n, v in zip(names, sig.split(H, 2))}
    f_at = None if "CIFG" in flags else act.get("f")
    steps = (z[:T].unbind(0), hs.unbind(0), cs.unbind(0), gs.unbind(0), outs.unbind(0),
             sig[:, :, : E * H].unbind(0), sig[:, :, E * H :].unbind(0))
    a = x.new_empty(B, w_hh.size(0))  # one step's pre-activations, overwritten each step
    pre = (a, a[:, : S * H], a[:, S * H :], a[:, : E * H], a[:, : E * H].split(H, 1), a[:, E * H : S * H])
    w = torch.cat([w_ih, w_hh], 1)
    # tanh(x) = 2 σ(2x) - 1: torch.tanh of one step's (B, H) costs 12-20 us here, sigmoid
    # and an add ~5 (float32 error ~1e-7 absolute). g's rows of W and b are doubled once.
    w_f = w
    if "NIAF" not in flags:
        w_f = torch.cat([w[: S * H], 2 * w[S * H :]])
        bias = torch.cat([bias[: S * H], 2 * bias[S * H :]])
    operands = (
        w_f.t(), bias, None if w_ss is None else w_ss.t(),  # mm takes weights transposed
        None if peep is None or not E else peep[:E].unbind(0), None if peep is None or E == S else peep[E],
        x.new_full((B, H), -1.0), x.new_empty(B, H),
    )
    return (z, hs, cs, sig, gs, outs, w), steps, pre, (act.get("i"), f_at, act.get("o")), operands


class GatedLSTM(torch.autograd.Function):
    """The LSTM family of cells._GatedLSTM: gates stacked [sigmoid gates in order i, f, o | g].

    cfg = (flags, sigmoid gate names, n_early): the early sigmoid gates read c_{t-1} through
    their peepholes and come first; the late one (o, by default) reads c_t.

    At B = 64, H = 64 one step's element-wise op costs 1.5-3 us and so does making a view, so
    both loops touch only views made once before them (``unbind``: one call for all t) and a
    step's pre-activations go into one reused buffer whose gate views are fixed.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, h0: Tensor, c0: Tensor, s0: Tensor | None, w_ih: Tensor, bias: Tensor, w_hh: Tensor,
        peep: Tensor | None, w_ss: Tensor | None, cfg: tuple, tap: Tap | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        flags, names, E = cfg
        S, T = len(names), x.size(0)
        niaf, noaf, cifg = "NIAF" in flags, "NOAF" in flags, "CIFG" in flags
        # Everything the loop touches is a local made before it (see _gated_lstm_setup).
        buffers, steps, pre, gates, operands = _gated_lstm_setup(x, h0, c0, w_ih, bias, w_hh, peep, w_ss, cfg)
        z, hs, cs, sig, gs, outs, w = buffers
        z_at, h_at, c_at, g_at, out_at, early, late = steps
        a, a_sig, a_g, a_early, a_early_at, a_late = pre
        i_at, f_at, o_at = gates
        w_f, bias_f, w_ss_t, p_early, p_late, minus_one, c2 = operands
        s = s0
        for t, z_t in enumerate(z_at):
            mm(z_t, w_f, bias_f, out=a)
            if w_ss_t is not None:  # FGR: the sigmoid gates read the last step's sigmoid gates
                a_sig.add_(mm(s, w_ss_t))
                s = sig[t]
            c_prev, c, g = c_at[t], c_at[t + 1], g_at[t]
            if E:
                if p_early is not None:  # gate by gate: a broadcast (B, E, H) product took 7 us, two 4
                    for a_e, p_e in zip(a_early_at, p_early):
                        a_e.addcmul_(p_e, c_prev)
                torch.sigmoid(a_early, out=early[t])
            if niaf:
                g.copy_(a_g)
            else:
                torch.add(minus_one, torch.sigmoid(a_g, out=g), alpha=2, out=g)
            if cifg:  # f = 1 - i:  c = c_prev - i c_prev + i g = c_prev + i (g - c_prev)
                torch.addcmul(c_prev, i_at[t], g - c_prev, out=c)
            else:
                if f_at is None:
                    c.copy_(c_prev)
                else:
                    torch.mul(f_at[t], c_prev, out=c)
                if i_at is None:
                    c.add_(g)
                else:
                    c.addcmul_(i_at[t], g)
            if E < S:  # the output gate peeks at the new c_t
                if p_late is not None:
                    a_late.addcmul_(p_late, c)
                torch.sigmoid(a_late, out=late[t])
            if not noaf:
                torch.sigmoid(torch.add(c, c, out=c2), out=out_at[t])
                torch.add(minus_one, out_at[t], alpha=2, out=out_at[t])
            if o_at is None:
                h_at[t + 1].copy_(out_at[t])
            else:
                torch.mul(o_at[t], out_at[t], out=h_at[t + 1])
        ctx.cfg, ctx.tap = cfg, tap
        ctx.saved = (z, cs, sig, gs, outs, s0, w, peep, w_ss)
        return hs[1:], cs[T], sig[T - 1]

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor | None, d_c: Tensor | None, d_s: Tensor | None) -> tuple:
        _once_differentiable("GatedLSTM")
        flags, names, E = ctx.cfg
        z, cs, sig, gs, outs, s0, w, peep, w_ss = ctx.saved
        T, B, H = outs.shape
        I = w.size(1) - H
        S, gates = len(names), (*names, "g")
        G = len(gates)
        # Every step's local derivatives, for all t at once, outside the loop. A gate's
        # pre-activation gradient is a factor times dh (gate o) or dc_t (i, f, g), so one step's
        # da is one product M ⊙ A[t]: A (T, B, G, H) holds the factors, M (B, G, H) dh or dc_t
        # in each gate's slot. FGR adds, to the sigmoid gates, what flowed back from the next
        # step's gates: e = ds_next ⊙ σ'.
        #     dc_t     = dc_{t+1 -> t} + dh ⊙ k_c + e_o ⊙ p_o           (o reads c_t)
        #     dc_{t-1} = dc_t ⊙ f_c + Σ_early e_n ⊙ p_n                 (f_c: f and the early peepholes)
        act = dict(zip(names, sig.split(H, 2)))  # (T, B, H) each
        i, o, c_prev = act.get("i"), act.get("o"), cs[:-1]
        one = sig.new_ones(())
        A = sig.new_empty(T, B, G, H)
        a = {n: A[:, :, k] for k, n in enumerate(gates)}
        if "NIAF" in flags:  # g: c = f c_prev + i g
            a["g"].copy_(one if i is None else i)
        else:
            torch.addcmul(one, gs, gs, value=-1, out=a["g"])  # tanh' = 1 - tanh²
            if i is not None:
                a["g"].mul_(i)
        # σ' = σ - σ² of each sigmoid gate, in its slot, times what the gate multiplies (CIFG:
        # f = 1 - i, so c = c_prev + i (g - c_prev)). T = 200 buffers outgrow the caches, so each
        # pass and buffer saved counts; FGR also needs σ' itself in the loop: one more buffer.
        sd = None if w_ss is None else torch.addcmul(sig, sig, sig, value=-1)
        times = {"i": gs - c_prev if "CIFG" in flags else gs, "f": c_prev, "o": outs}
        for k, n in enumerate(names):
            if sd is None:
                torch.addcmul(act[n], act[n], act[n], value=-1, out=a[n]).mul_(times[n])
            else:
                torch.mul(sd[:, :, k * H : (k + 1) * H], times[n], out=a[n])
        k_c = torch.ones_like(outs) if "NOAF" in flags else torch.addcmul(one, outs, outs, value=-1)
        if o is not None:  # h = o ⊙ out(c_t)
            k_c.mul_(o)
        f = 1 - i if "CIFG" in flags else act.get("f")
        f_c = torch.ones_like(outs) if f is None else f  # read-only in the loop: a view will do
        p = {} if peep is None else dict(zip(names, peep.unbind(0)))
        early = names[:E]
        o_early = "o" in early and "o" in p  # o read c_{t-1}: its dh ⊙ a_o ⊙ p_o goes to dc_{t-1}
        if "o" in p and not o_early:
            k_c.addcmul_(a["o"], p["o"])
        for n in early:
            if n != "o" and n in p:
                f_c = torch.addcmul(f_c, a[n], p[n])
        k_h = (a["o"] * p["o"]).unbind(0) if o_early else None

        # The pre-activation gradients, every step: da[t] = M ⊙ A[t] overwrites A[t], which
        # only step t reads (one (T, B, G*H) buffer fewer: 13 MB per layer at T = 200).
        da = A.view(T, B, G * H)
        dz = z.new_empty(T, B, I + H)  # [dx_t, dh_{t-1} from step t] = da[t] [W_ih, W_hh]
        # FGR: a step's e = ds_next ⊙ σ' goes into the sigmoid gates' slots of one (B, G*H)
        # buffer whose g slot stays 0, and da[t] = e + M ⊙ A[t] (zeroing da's g part instead was
        # a strided pass over the whole (T, B, G*H) buffer).
        e = z.new_zeros(B, G * H) if w_ss is not None else None
        w_T, w_ss_T = _untransposed(w), None if w_ss is None else _untransposed(w_ss)  # for da W
        e_sig, e_of = (None, {}) if e is None else (e[:, : S * H], dict(zip(names, e.split(H, 1))))
        # Per-step views, made once (see the class docstring).
        da_at, da_sig = da.unbind(0), da[:, :, : S * H].unbind(0)
        k_c, f_c, d_hs = k_c.unbind(0), f_c.unbind(0), d_hs.unbind(0)
        sd_at = None if sd is None else sd.unbind(0)
        dh_out = None if ctx.tap is None else ctx.tap.dh.unbind(0)
        M = z.new_empty(B, G, H)
        M_flat = M.view(B, G * H)
        dc_slots = [k for k, n in enumerate(gates) if n != "o"]
        M_dc = M[:, dc_slots[0]]
        rest = dc_slots[1:]  # the other dc slots, as one strided view: (1, 3) or (1, 2) or (2,)
        M_rest = M[:, rest[0] : rest[-1] + 1 : (rest[1] - rest[0] if len(rest) > 1 else 1)] if rest else None
        M_dh = M[:, gates.index("o")] if o is not None else None
        e_o = e_of["o"] if "o" in p and not o_early and e is not None else None  # FGR's e_o ⊙ p_o
        e_early = [(e_of[n], p[n]) for n in early if n in p] if e is not None else []

        dh_next = torch.zeros_like(cs[0])
        dc_carry = _zeros_if_none(d_c, cs[0])
        dz_at, dh_prev_at = dz.unbind(0), dz[:, :, I:].unbind(0)
        ds_next = _zeros_if_none(d_s, sig[0]) if w_ss is not None else None
        for t in reversed(range(T)):
            if dh_out is not None:
                dh = torch.add(d_hs[t], dh_next, out=dh_out[t])
                if M_dh is not None:
                    M_dh.copy_(dh)
            else:
                dh = torch.add(d_hs[t], dh_next, out=M_dh) if M_dh is not None else d_hs[t] + dh_next
            dc = torch.addcmul(dc_carry, dh, k_c[t], out=M_dc)
            if e is not None:
                torch.mul(ds_next, sd_at[t], out=e_sig)
                if e_o is not None:
                    dc.addcmul_(e_o, p["o"])
            dc_carry = dc * f_c[t]  # the gradient of c_{t-1}
            if k_h is not None:
                dc_carry.addcmul_(dh, k_h[t])
            for e_n, p_n in e_early:
                dc_carry.addcmul_(e_n, p_n)
            if M_rest is not None:
                M_rest.copy_(dc.unsqueeze(1))
            if e is None:
                da_at[t].mul_(M_flat)  # A[t] becomes da[t]
            else:
                torch.addcmul(e, M_flat, da_at[t], out=da_at[t])
            mm(da_at[t], w_T, out=dz_at[t])
            dh_next = dh_prev_at[t]
            if w_ss is not None:
                ds_next = mm(da_sig[t], w_ss_T)
        d_w = grad_weight(_flat(da), _flat(z[:T]))  # [dW_ih, dW_hh] in one product
        d_peep = d_w_ss = None
        if peep is not None:  # Σ_t,b da_gate ⊙ c, gate by gate (2x faster than one (T, B, S, H) product)
            c_seen = [_flat(cs[:-1])] * E + [_flat(cs[1:])] * (S - E)  # early gates c_{t-1}, late c_t
            d_peep = torch.stack([(_flat(da[:, :, k * H : (k + 1) * H]) * c).sum(0) for k, c in enumerate(c_seen)])
        if w_ss is not None:  # Σ_t da_sig[t]^T s_{t-1}, with s_{-1} = s0 (no (T, B, 3H) copy)
            d_w_ss = grad_weight(_flat(da[1:, :, : S * H]), _flat(sig[:-1])).add_(da_sig[0].t() @ s0)
        d_w_ih, d_w_hh = d_w.split([I, H], 1)
        _write_lags(ctx.tap, [(da, z[:T, :, I:], d_w_hh)])
        return dz[:, :, :I], dh_next, dc_carry, ds_next, d_w_ih, da.sum((0, 1)), d_w_hh, d_peep, d_w_ss, None, None


class GRUClassic(torch.autograd.Function):
    """The GRU of Cho et al. 2014: gates stacked [r | z | h̃]; the reset acts before the recurrent product."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, h0: Tensor, w_hh: Tensor, tap: Tap | None = None) -> Tensor:
        T, B, _ = xp.shape
        H = h0.size(1)
        w_rz, w_h = w_hh[: 2 * H].t(), w_hh[2 * H :].t()
        hs = xp.new_empty(T + 1, B, H)
        hs[0] = h0
        rz, rh, cand = xp.new_empty(T, B, 2 * H), xp.new_empty(T, B, H), xp.new_empty(T, B, H)
        for t in range(T):
            x_rz, x_h = xp[t].split([2 * H, H], 1)
            torch.sigmoid(mm(hs[t], w_rz, x_rz), out=rz[t])
            r, z = rz[t].split(H, 1)
            torch.mul(r, hs[t], out=rh[t])
            torch.tanh(mm(rh[t], w_h, x_h), out=cand[t])
            torch.lerp(hs[t], cand[t], z, out=hs[t + 1])  # (1 - z) h + z h̃
        ctx.saved, ctx.tap = (hs, rz, rh, cand, w_hh), tap
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple:
        _once_differentiable("GRUClassic")
        hs, rz, rh, cand, w_hh = ctx.saved
        T, B, H = cand.shape
        w_rz, w_h = _untransposed(w_hh[: 2 * H]), _untransposed(w_hh[2 * H :])
        da = hs.new_empty(T, B, 3 * H)
        dh_next = torch.zeros_like(hs[0])
        dh_out = None if ctx.tap is None else ctx.tap.dh
        for t in reversed(range(T)):
            dh = d_hs[t] + dh_next if dh_out is None else torch.add(d_hs[t], dh_next, out=dh_out[t])
            r, z = rz[t].split(H, 1)
            n, h_prev = cand[t], hs[t]
            d_r, d_z, d_n = da[t].split(H, 1)
            dn = dh * z
            torch.mul(dn, 1 - n * n, out=d_n)
            d_rh = mm(d_n, w_h)  # gradient of r ⊙ h_{t-1}
            torch.mul(d_rh * h_prev, r * (1 - r), out=d_r)
            torch.mul(dh * (n - h_prev), z * (1 - z), out=d_z)
            dh_next = mm(da[t, :, : 2 * H], w_rz, dh - dn + d_rh * r)
        d_w_hh = torch.cat([
            grad_weight(_flat(da[:, :, : 2 * H]), _flat(hs[:-1])),
            grad_weight(_flat(da[:, :, 2 * H :]), _flat(rh)),
        ])
        # r, z multiply W_hh into h_{t-1}; the candidate's rows into r ⊙ h_{t-1}
        _write_lags(ctx.tap, [(da[:, :, : 2 * H], hs[:-1], d_w_hh[: 2 * H]), (da[:, :, 2 * H :], rh, d_w_hh[2 * H :])])
        return da, dh_next, d_w_hh, None


class IndRNN(torch.autograd.Function):
    """h_t = relu(xp_t + u ⊙ h_{t-1}): element-wise, so the step costs two ops either way."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, h0: Tensor, u: Tensor, tap: Tap | None = None) -> Tensor:
        T, B, H = xp.shape
        hs = xp.new_empty(T + 1, B, H)
        hs[0] = h0
        for t in range(T):
            torch.addcmul(xp[t], u, hs[t], out=hs[t + 1]).relu_()
        ctx.saved, ctx.tap = (hs, u), tap
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple:
        _once_differentiable("IndRNN")
        hs, u = ctx.saved
        da = torch.empty_like(hs[1:])
        dh_next = torch.zeros_like(hs[0])
        dh_out = None if ctx.tap is None else ctx.tap.dh
        for t in reversed(range(da.size(0))):
            dh = d_hs[t] + dh_next if dh_out is None else torch.add(d_hs[t], dh_next, out=dh_out[t])
            torch.mul(dh, hs[t + 1] > 0, out=da[t])  # relu' = 1 where h_t > 0
            dh_next = da[t] * u
        d_u = (da * hs[:-1]).sum((0, 1))
        if ctx.tap is not None and ctx.tap.w_lag is not None:  # C_t = Σ_b da_t ⊙ h_{t-1}: element-wise, no product
            ctx.tap.w_lag.copy_((da * hs[:-1] * d_u).sum(2).double().sum(1))
        return da, dh_next, d_u, None


# The fused cells' own recurrences, run only when a probe taps them (training uses the fused
# kernels, which are faster but keep the path through time to themselves).


class Elman(torch.autograd.Function):
    """h_t = act(xp_t + h_{t-1} W_hh^T), act tanh or relu (xp holds both biases)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, h0: Tensor, w_hh: Tensor, relu: bool, tap: Tap | None = None) -> Tensor:
        T, B, H = xp.shape
        hs = xp.new_empty(T + 1, B, H)
        hs[0] = h0
        w_hh_t = w_hh.t()
        for t, (x_t, h, out) in enumerate(zip(xp.unbind(0), hs[:-1].unbind(0), hs[1:].unbind(0))):
            a = mm(h, w_hh_t, x_t)
            torch.clamp(a, min=0, out=out) if relu else torch.tanh(a, out=out)
        ctx.saved, ctx.relu, ctx.tap = (hs, w_hh), relu, tap
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple:
        _once_differentiable("Elman")
        hs, w_hh = ctx.saved
        dh_out = None if ctx.tap is None else ctx.tap.dh
        slope = (hs[1:] > 0).to(hs.dtype) if ctx.relu else 1 - hs[1:] * hs[1:]  # act'(a_t) from h_t
        da = torch.empty_like(slope)
        dh_next = torch.zeros_like(hs[0])
        w_hh = _untransposed(w_hh)
        for t in reversed(range(da.size(0))):
            dh = d_hs[t] + dh_next if dh_out is None else torch.add(d_hs[t], dh_next, out=dh_out[t])
            torch.mul(dh, slope[t], out=da[t])
            dh_next = mm(da[t], w_hh)
        d_w_hh = grad_weight(_flat(da), _flat(hs[:-1]))
        _write_lags(ctx.tap, [(da, hs[:-1], d_w_hh)])
        return da, dh_next, d_w_hh, None, None


class GRU(torch.autograd.Function):
    """The fused-kernel GRU: gates stacked [r | z | n]; the reset multiplies W_hn h + b_hn.

        hp = h_{t-1} W_hh^T + b_hh;   r, z = σ(xp_rz + hp_rz);   n = tanh(xp_n + r ⊙ hp_n)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    """

    @staticmethod
    def forward(ctx: Any, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, tap: Tap | None = None) -> Tensor:
        T, B, _ = xp.shape
        H = h0.size(1)
        hs = xp.new_empty(T + 1, B, H)
        hs[0] = h0
        rz, n, hp_n = xp.new_empty(T, B, 2 * H), xp.new_empty(T, B, H), xp.new_empty(T, B, H)
        w_hh_t = w_hh.t()
        for t, x_t in enumerate(xp.unbind(0)):
            hp = mm(hs[t], w_hh_t, b_hh)
            x_rz, x_n = x_t.split([2 * H, H], 1)
            torch.sigmoid(x_rz + hp[:, : 2 * H], out=rz[t])
            hp_n[t] = hp[:, 2 * H :]
            torch.tanh(torch.addcmul(x_n, rz[t, :, :H], hp_n[t]), out=n[t])
            torch.lerp(n[t], hs[t], rz[t, :, H:], out=hs[t + 1])  # n + z (h - n)
        ctx.saved, ctx.tap = (hs, rz, n, hp_n, w_hh), tap
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple:
        _once_differentiable("GRU")
        hs, rz, n, hp_n, w_hh = ctx.saved
        T, B, H = n.shape
        dh_out = None if ctx.tap is None else ctx.tap.dh
        r, z = rz.split(H, 2)
        da = hs.new_empty(T, B, 3 * H)  # pre-activation gradients: r, z (shared by x and h) and x_n
        dhp = hs.new_empty(T, B, 3 * H)  # gradient of hp = h W_hh^T + b_hh
        dh_next = torch.zeros_like(hs[0])
        w_hh = _untransposed(w_hh)
        for t in reversed(range(T)):
            dh = d_hs[t] + dh_next if dh_out is None else torch.add(d_hs[t], dh_next, out=dh_out[t])
            d_r, d_z, d_n = da[t].split(H, 1)
            torch.mul(dh * (1 - z[t]), 1 - n[t] * n[t], out=d_n)
            torch.mul(d_n * hp_n[t], r[t] * (1 - r[t]), out=d_r)
            torch.mul(dh * (hs[t] - n[t]), z[t] * (1 - z[t]), out=d_z)
            dhp[t, :, : 2 * H] = da[t, :, : 2 * H]
            torch.mul(d_n, r[t], out=dhp[t, :, 2 * H :])
            dh_next = mm(dhp[t], w_hh, dh * z[t])
        d_w_hh = grad_weight(_flat(dhp), _flat(hs[:-1]))
        _write_lags(ctx.tap, [(dhp, hs[:-1], d_w_hh)])  # W_hh multiplies into hp, so dhp is its da
        return da, dh_next, d_w_hh, dhp.sum((0, 1)), None
