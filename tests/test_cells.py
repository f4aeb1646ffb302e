"""Cells against independent float64 references written from the papers (docs/maths.md)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from rnnlab import bptt
from rnnlab.cells import CELLS, GRU, LSTM, RNN, Tap, step_scan
from rnnlab.model import StackedRNN, count_parameters

pytestmark = pytest.mark.usefixtures("float64")


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def reference_lstm(x, h, c, W, b):
    """f = σ(W_f[h, x] + b_f), i, g = tanh(W_c[h, x] + b_c), o; c = f c + i g; h = o tanh(c).
    W maps [h, x] (the textbook concatenation order) for each gate; b per gate."""
    hx = torch.cat([h, x], 1)
    f = sigmoid(hx @ W["f"].T + b["f"])
    i = sigmoid(hx @ W["i"].T + b["i"])
    g = torch.tanh(hx @ W["c"].T + b["c"])
    o = sigmoid(hx @ W["o"].T + b["o"])
    c = f * c + i * g
    return o * torch.tanh(c), c


def spec_weights_lstm(cell: LSTM):
    """The cell's parameters re-expressed in the spec's form: one [h, x] matrix per gate."""
    H = cell.hidden_size
    W, b = {}, {}
    for k, name in enumerate("ifco"):  # PyTorch's gate order: i, f, g (= the spec's c), o
        rows = slice(k * H, (k + 1) * H)
        W[name] = torch.cat([cell.weight_hh[rows], cell.weight_ih[rows]], 1).detach()
        b[name] = (cell.bias_ih[rows] + cell.bias_hh[rows]).detach()
    return W, b


@pytest.mark.parametrize("batch,steps,inp,hid", [(1, 1, 3, 4), (5, 7, 2, 6), (3, 20, 8, 16)])
def test_lstm_matches_spec(batch, steps, inp, hid):
    torch.manual_seed(batch * 100 + steps)
    cell = LSTM(inp, hid)
    x = torch.randn(batch, steps, inp)
    W, b = spec_weights_lstm(cell)
    h = c = torch.zeros(batch, hid)
    for t in range(steps):
        h, c = reference_lstm(x[:, t], h, c, W, b)
    out, (h_last, c_last) = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)
    assert torch.allclose(c_last, c, atol=1e-10, rtol=0)


@pytest.mark.parametrize("batch,steps,inp,hid", [(1, 1, 2, 3), (4, 9, 3, 5)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_spec(nonlinearity, batch, steps, inp, hid):
    torch.manual_seed(1)
    cell = RNN(inp, hid, nonlinearity=nonlinearity)
    x = torch.randn(batch, steps, inp)
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    h = torch.zeros(batch, hid)
    for t in range(steps):  # h_t = f(W_xh x_t + W_hh h_{t-1} + b_h)
        h = f(x[:, t] @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh)
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


@pytest.mark.parametrize("batch,steps,inp,hid", [(1, 1, 2, 3), (4, 9, 3, 5)])
def test_gru_matches_spec(batch, steps, inp, hid):
    torch.manual_seed(2)
    cell = GRU(inp, hid)
    x = torch.randn(batch, steps, inp)
    (Wr, Wz, Wn), (Ur, Uz, Un) = cell.weight_ih.chunk(3), cell.weight_hh.chunk(3)
    (br, bz, bn), (cr, cz, cn) = cell.bias_ih.chunk(3), cell.bias_hh.chunk(3)
    h = torch.zeros(batch, hid)
    for t in range(steps):  # the fused-kernel convention: r applied after W_hn h + b_hn
        xt = x[:, t]
        r = sigmoid(xt @ Wr.T + br + h @ Ur.T + cr)
        z = sigmoid(xt @ Wz.T + bz + h @ Uz.T + cz)
        n = torch.tanh(xt @ Wn.T + bn + r * (h @ Un.T + cn))
        h = (1 - z) * n + z * h
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_fused_and_step_paths_agree_on_outputs_and_gradients(name):
    torch.manual_seed(3)
    cell = CELLS[name](4, 6)
    x = torch.randn(3, 12, 4, requires_grad=True)
    state = tuple(s + 0.1 * torch.randn_like(s) for s in cell.init_state(3, x))  # a non-zero start
    grads = []
    for scan in (cell.scan, lambda x, s: step_scan(cell, x, s)):
        cell.zero_grad()
        x.grad = None
        out, last = scan(x, state)
        (out.pow(2).sum() + sum(s.sum() for s in last)).backward()
        grads.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in cell.parameters() if p.requires_grad]))
    (o1, gx1, gp1), (o2, gx2, gp2) = grads
    assert torch.allclose(o1, o2, atol=1e-8, rtol=0)
    assert torch.allclose(gx1, gx2, atol=1e-8, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-8, rtol=0) for a, b in zip(gp1, gp2))


def test_parameter_counts_match_spec():
    i, h = 100, 50
    assert count_parameters(LSTM(i, h)) == 4 * ((i + h) * h + h) == 30_200
    assert count_parameters(RNN(i, h)) == (i + h) * h + h
    assert count_parameters(GRU(i, h)) == 3 * (i * h + h * h + 2 * h)


@pytest.mark.parametrize("cls", [LSTM, RNN])
def test_folded_bias_is_frozen_at_zero_and_stays_there(cls):
    cell = cls(3, 4)
    assert not cell.bias_hh.requires_grad and torch.count_nonzero(cell.bias_hh) == 0
    opt = torch.optim.Adam([p for p in cell.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 5, 3)
    cell.scan(x, cell.init_state(2, x))[0].sum().backward()
    opt.step()
    assert torch.count_nonzero(cell.bias_hh) == 0


def test_lstm_forget_bias_initialisation():
    cell = LSTM(3, 4, forget_bias=1.0)
    assert torch.equal(cell.bias_ih[4:8], torch.ones(4))
    assert not torch.equal(cell.bias_ih[:4], torch.ones(4))  # only the forget gate
    assert torch.equal(LSTM(3, 4, forget_bias=0.0).bias_ih[4:8], torch.zeros(4))


def test_bad_cell_options_are_one_line_errors():
    with pytest.raises(ValueError, match="nonlinearity='sigmoid'.*tanh, relu"):
        RNN(3, 4, nonlinearity="sigmoid")


# ------------------------------------------------------------------- the loop cells (issue 3)

from torch.autograd import gradcheck  # noqa: E402

from rnnlab.cells import CIFG, ESN, GRUClassic, IndRNN, LSTMVariant, Peephole, Transformer  # noqa: E402

SHAPES = [(1, 1, 3, 4), (5, 7, 2, 6), (2, 15, 4, 3)]  # batch, steps, input, hidden: batch 1 and T = 1 included
VARIANTS = ["vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR"]


def spec_gates(cell, names):
    """The stacked parameters re-expressed as one matrix per gate over [h, x] (docs/maths.md)."""
    H = cell.hidden_size
    W = {n: torch.cat([wh, wx], 1).detach() for n, wh, wx in zip(names, cell.weight_hh.split(H), cell.weight_ih.split(H))}
    b = dict(zip(names, cell.bias.detach().split(H)))
    return W, b


def reference_greff(x, h, c, s, cell, flags, output_reads="c_t"):
    """Greff et al. 2017's LSTM with one variant's change, written from the paper.
    s: the previous step's sigmoid gate activations {name: (B, H)} (FGR), else None."""
    one = torch.ones_like(h)
    present = [g for g, off in (("i", "NIG"), ("f", "NFG"), ("o", "NOG")) if off not in flags and not (g == "f" and "CIFG" in flags)]
    W, b = spec_gates(cell, present + ["g"])
    p = dict(zip(present, cell.peephole.detach())) if "NP" not in flags else {}
    hx = torch.cat([h, x], 1)
    pre = {n: hx @ W[n].T + b[n] for n in W}
    if "FGR" in flags:  # every sigmoid gate reads every sigmoid gate of the previous step
        R = cell.weight_ss.detach()
        prev = torch.cat([s[n] for n in present], 1)
        for k, n in enumerate(present):
            pre[n] = pre[n] + prev @ R[k * h.size(1) : (k + 1) * h.size(1)].T
    i = one if "NIG" in flags else sigmoid(pre["i"] + p.get("i", 0) * c)
    f = 1 - i if "CIFG" in flags else one if "NFG" in flags else sigmoid(pre["f"] + p.get("f", 0) * c)
    g = pre["g"] if "NIAF" in flags else torch.tanh(pre["g"])
    c_new = f * c + i * g
    o = one if "NOG" in flags else sigmoid(pre["o"] + p.get("o", 0) * (c_new if output_reads == "c_t" else c))
    h_new = o * (c_new if "NOAF" in flags else torch.tanh(c_new))
    return h_new, c_new, {"i": i, "f": f, "o": o}


def run_reference(step, x, *state):
    outs = []
    for t in range(x.size(1)):
        h, *state = step(x[:, t], *state)
        state = [h, *state]
        outs.append(h)
    return torch.stack(outs, 1), state


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,steps,inp,hid", SHAPES)
def test_lstm_variants_match_greff(variant, batch, steps, inp, hid):
    torch.manual_seed(steps * 10 + hid)
    cell = LSTMVariant(inp, hid, variant=variant)
    flags = {variant} - {"vanilla"}
    x = torch.randn(batch, steps, inp)
    zeros = torch.zeros(batch, hid)
    step = lambda x_t, h, c, s: reference_greff(x_t, h, c, s, cell, flags)
    ref, _ = run_reference(step, x, zeros, zeros, {"i": zeros, "f": zeros, "o": zeros})
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("output_reads", ["c_t", "c_prev"])
@pytest.mark.parametrize("batch,steps,inp,hid", SHAPES)
def test_peephole_and_cifg_match_spec(output_reads, batch, steps, inp, hid):
    torch.manual_seed(steps + hid)
    x = torch.randn(batch, steps, inp)
    zeros = torch.zeros(batch, hid)
    for cell, flags in [(Peephole(inp, hid, output_reads=output_reads), set()), (CIFG(inp, hid), {"CIFG", "NP"})]:
        with torch.no_grad():  # non-zero peepholes, so reading c_t vs c_{t-1} matters
            for p in cell.parameters():
                p.add_(0.3 * torch.randn_like(p))
        step = lambda x_t, h, c, s: reference_greff(x_t, h, c, s, cell, flags, output_reads)
        ref, (h, c, _) = run_reference(step, x, zeros, zeros, None)
        out, (h_last, c_last) = cell.scan(x, cell.init_state(batch, x))
        assert torch.allclose(out, ref, atol=1e-10, rtol=0) and torch.allclose(c_last, c, atol=1e-10, rtol=0)


@pytest.mark.parametrize("batch,steps,inp,hid", SHAPES)
def test_gru_classic_matches_cho_et_al(batch, steps, inp, hid):
    torch.manual_seed(batch + steps)
    cell = GRUClassic(inp, hid)
    W, b = spec_gates(cell, ["r", "z", "h"])
    x = torch.randn(batch, steps, inp)
    h = torch.zeros(batch, hid)
    for t in range(steps):  # r = σ(W_r[h,x]+b_r), z likewise, h̃ = tanh(W_h[r⊙h, x]+b_h), h = (1-z)h + z h̃
        r = sigmoid(torch.cat([h, x[:, t]], 1) @ W["r"].T + b["r"])
        z = sigmoid(torch.cat([h, x[:, t]], 1) @ W["z"].T + b["z"])
        cand = torch.tanh(torch.cat([r * h, x[:, t]], 1) @ W["h"].T + b["h"])
        h = (1 - z) * h + z * cand
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


def test_gru_classic_is_not_gru():
    torch.manual_seed(0)
    a, b = GRUClassic(3, 4), GRU(3, 4)
    with torch.no_grad():  # the same numbers in both layouts: r, z, candidate rows; b_hn = 0
        b.weight_ih.copy_(a.weight_ih), b.weight_hh.copy_(a.weight_hh), b.bias_ih.copy_(a.bias), b.bias_hh.zero_()
        b.bias_ih[:4].zero_()  # keep r's bias once
        b.bias_hh[:4].copy_(a.bias[:4])
    x = torch.randn(2, 6, 3)
    assert not torch.allclose(a.scan(x, a.init_state(2, x))[0], b.scan(x, b.init_state(2, x))[0], atol=1e-3)


@pytest.mark.parametrize("u_max", [None, 1.2])
@pytest.mark.parametrize("batch,steps,inp,hid", SHAPES)
def test_indrnn_matches_spec(u_max, batch, steps, inp, hid):
    torch.manual_seed(batch * steps)
    cell = IndRNN(inp, hid, u_max=u_max)
    x = torch.randn(batch, steps, inp)
    h = torch.zeros(batch, hid)
    u = cell.u.detach()
    assert u.shape == (hid,)  # one recurrent weight per unit
    for t in range(steps):
        h = torch.relu(x[:, t] @ cell.weight_ih.T + u * h + cell.bias)
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


@pytest.mark.parametrize("leak", [1.0, 0.3])
@pytest.mark.parametrize("batch,steps,inp,hid", SHAPES)
def test_esn_matches_spec(leak, batch, steps, inp, hid):
    torch.manual_seed(hid)
    cell = ESN(inp, hid, leak=leak, density=1.0)
    x = torch.randn(batch, steps, inp)
    h = torch.zeros(batch, hid)
    for t in range(steps):  # h_t = (1-a) h_{t-1} + a tanh(W_in x_t + W h_{t-1} + b)
        h = (1 - leak) * h + leak * torch.tanh(x[:, t] @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias)
    out, _ = cell.scan(x, cell.init_state(batch, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


def reference_attention_block(x, cache_len, cell, window=None):
    """One pre-norm causal block written out per query: softmax(q.k/sqrt(d) - slope (t - j)) over
    j <= t, and t - j <= window when given."""
    heads, H = cell.heads, cell.hidden_size
    d = H // heads

    def norm(z, ln):
        mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
        return (z - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    e = x @ cell.embed.weight.T + cell.embed.bias
    qkv = norm(e, cell.norm1) @ cell.qkv.weight.T + cell.qkv.bias
    q, k, v = qkv[..., :H], qkv[..., H : 2 * H], qkv[..., 2 * H :]
    out = torch.zeros_like(e)
    T = x.size(1)
    for t in range(T):
        for m in range(heads):
            cols = slice(m * d, (m + 1) * d)
            slope = 2.0 ** (-8.0 * (m + 1) / heads)
            first = 0 if window is None else max(0, t - window)
            keys = range(first, t + 1)
            scores = torch.stack([(q[:, t, cols] * k[:, j, cols]).sum(-1) / d**0.5 - slope * (t - j) for j in keys], 1)
            w = torch.softmax(scores, 1)
            out[:, t, cols] = (w[:, :, None] * v[:, first : t + 1, cols]).sum(1)
    y = e + out @ cell.proj.weight.T + cell.proj.bias
    hidden = torch.nn.functional.gelu(norm(y, cell.norm2) @ cell.mlp[0].weight.T + cell.mlp[0].bias)
    return y + hidden @ cell.mlp[2].weight.T + cell.mlp[2].bias


@pytest.mark.parametrize("batch,steps,inp", [(1, 1, 3), (3, 6, 5)])
def test_transformer_block_matches_written_out_attention(batch, steps, inp):
    torch.manual_seed(steps)
    cell = Transformer(inp, 8, heads=2)
    x = torch.randn(batch, steps, inp)
    out, _ = cell.scan(x, cell.init_state(batch, x))
    with torch.no_grad():
        assert torch.allclose(out, reference_attention_block(x, 0, cell), atol=1e-10, rtol=0)


# --------------------------------------------------- the fast paths equal the step-by-step path

LOOP_CELLS = [
    ("peephole", {}), ("peephole", {"output_reads": "c_prev"}), ("cifg", {}), ("gru_classic", {}),
    ("indrnn", {}), ("indrnn", {"u_max": 1.1}), ("esn", {"density": 0.5}), ("transformer", {"heads": 2, "mlp_ratio": 1}),
    *[("lstm_variant", {"variant": v}) for v in VARIANTS],
]
EVERY_CELL = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {}), *LOOP_CELLS]


def perturbed_state(cell, batch, x):
    state = cell.init_state(batch, x)
    if isinstance(cell, Transformer):  # a cache of 3 past steps
        return tuple(torch.randn(batch, 3, cell.hidden_size) for _ in state)
    return tuple(s + 0.3 * torch.randn_like(s) for s in state)


@pytest.mark.parametrize("name,options", LOOP_CELLS, ids=lambda v: str(v))
def test_scan_equals_step_scan_on_outputs_and_every_gradient(name, options):
    torch.manual_seed(5)
    cell = CELLS[name](3, 4 if name != "transformer" else 6, **options)
    x = torch.randn(3, 11, 3, requires_grad=True)
    state = tuple(s.requires_grad_() for s in perturbed_state(cell, 3, x))
    results = []
    for scan in (cell.scan, lambda x, s: step_scan(cell, x, s)):
        out, last = scan(x, state)
        loss = (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum() + sum((s * s).sum() for s in last)
        wrt = [x, *state, *[p for p in cell.parameters() if p.requires_grad]]
        results.append([out, *last, *torch.autograd.grad(loss, wrt)])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-8, rtol=0)


@pytest.mark.parametrize("variant", ["vanilla", "NOAF", "CIFG", "FGR"])
def test_lstm_family_scan_in_float32_stays_within_1e_6_of_float64(variant):
    # The scan computes tanh as 2 sigmoid(2x) - 1 (faster here); in float32 over 200 steps and
    # 4 layers it must stay as close to the float64 function as float32 allows (measured:
    # ~1e-7; the step path with torch.tanh ~5e-8).
    torch.manual_seed(0)
    model = StackedRNN("lstm_variant", 8, 64, 4, variant=variant).float()  # this module defaults to float64
    x = torch.randn(16, 200, 8, dtype=torch.float32)
    with torch.no_grad():
        fast = model.features(x)[0].double()
        reference = model.double().features(x.double(), step_path=True)[0]
    assert (fast - reference).abs().max() < 1e-6


@pytest.mark.parametrize("name,options", EVERY_CELL, ids=lambda v: str(v))
def test_a_tapped_scan_is_the_same_function_and_its_tap_holds_the_total_dl_dh(name, options):
    """With a tap, fused cells run their hand-written twin: outputs and every gradient equal
    the step path's, and the tap holds dL/dh_t, summed over every path (autograd.grad of the
    loss with respect to each step's h_t in an independent step-by-step unroll)."""
    torch.manual_seed(7)
    cell = CELLS[name](3, 4 if name != "transformer" else 6, **options)
    x = torch.randn(3, 9, 3, requires_grad=True)
    state = tuple(s.requires_grad_() for s in perturbed_state(cell, 3, x))
    weights = torch.linspace(-1, 2, 3 * 9 * cell.hidden_size).view(3, 9, -1)
    wrt = [x, *state, *[p for p in cell.parameters() if p.requires_grad]]

    def loss_of(out, last):
        return (out * weights).sum() + sum((s * s).sum() for s in last if s.dim() == 2)

    tap = torch.zeros(9, 3, cell.hidden_size)
    out, last = cell.scan(x, state, Tap(tap))
    tapped = [out, *last, *torch.autograd.grad(loss_of(out, last), wrt)]
    hs, step_state = [], state
    for x_t in x.unbind(1):
        h, step_state = cell(x_t, step_state)
        hs.append(h)
    reference_loss = loss_of(torch.stack(hs, 1), step_state)
    reference = [torch.stack(hs, 1), *step_state, *torch.autograd.grad(reference_loss, wrt, retain_graph=True)]
    for a, b in zip(tapped, reference):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    dh = torch.stack(torch.autograd.grad(reference_loss, hs))  # (T, B, H)
    assert torch.allclose(tap, dh, atol=1e-10, rtol=0) and tap.abs().sum() > 0


def recurrent_weight(cell):
    """(its parameter name, the tensor the recurrence multiplies by, the trained tensor) of the
    cell's recurrent weight: IndRNN with u_max multiplies by u = u_max tanh(v), v trained."""
    (w,) = [w for w in cell.weight_groups() if w.group == "recurrent"]
    (name,) = [n for n, p in cell.named_parameters() if p is w.tensor]
    return name, (w.tensor if w.applied is None else w.applied), w.tensor


def per_step_recurrent_terms(cell, x, state, loss_of):
    """C_t = step t's term of dL/dW_hh, independently of bptt: the step path with each step's
    W_hh a separate copy (torch.func.functional_call), so autograd's gradient of copy t is C_t.
    For an applied u = φ(v) (element-wise) the copies are of v, and C_t = (dL/dv_t) / φ'(v)."""
    name, applied, trained = recurrent_weight(cell)
    copies = [trained.detach().clone().requires_grad_() for _ in range(x.size(1))]
    hs, step_state = [], state
    for x_t, w_t in zip(x.unbind(1), copies):
        h, step_state = torch.func.functional_call(cell, {name: w_t}, (x_t, step_state))
        hs.append(h)
    terms = torch.stack(torch.autograd.grad(loss_of(torch.stack(hs, 1), step_state), copies))  # (T, *W.shape)
    if applied is not trained:
        (slope,) = torch.autograd.grad(applied, trained, torch.ones_like(applied))  # φ'(v), element-wise
        terms = terms / slope
    return terms


HAND_WRITTEN_CELLS = [(n, o) for n, o in EVERY_CELL if n not in ("esn", "transformer")]


@pytest.mark.parametrize("name,options", HAND_WRITTEN_CELLS, ids=lambda v: str(v))
def test_a_tapped_backward_writes_each_steps_projection_on_the_recurrent_weight_gradient(name, options):
    """tap.w_lag[t] = <C_t, dL/dW_hh>_F against C_t from per-step copies of W_hh (float64,
    1e-8), for every hand-written backward and the fused cells' twins: the terms add up to
    autograd's dW_hh and the shares w_lag / Σ w_lag to 1."""
    torch.manual_seed(9)
    cell = CELLS[name](3, 4, **options)
    x = torch.randn(3, 9, 3)
    state = perturbed_state(cell, 3, x)
    weights = torch.linspace(-1, 2, 3 * 9 * cell.hidden_size).view(3, 9, -1)

    def loss_of(out, last):
        return (out * weights).sum() + sum((s * s).sum() for s in last)

    _, applied, trained = recurrent_weight(cell)
    terms = per_step_recurrent_terms(cell, x, state, loss_of)  # (T, *W.shape)
    total = terms.sum(0)
    (step_path_grad,) = torch.autograd.grad(loss_of(*step_scan(cell, x, state)), trained)
    # Σ_t C_t is autograd's gradient (of the trained tensor: through u = u_max tanh(v) if applied)
    (chained,) = torch.autograd.grad(applied, trained, total) if applied is not trained else (total,)
    assert torch.allclose(chained, step_path_grad, atol=1e-8, rtol=0)

    tap = Tap(torch.zeros(9, 3, cell.hidden_size), torch.full((9,), float("nan"), dtype=torch.float64))
    (scan_grad,) = torch.autograd.grad(loss_of(*cell.scan(x, state, tap)), trained)
    assert torch.allclose(scan_grad, step_path_grad, atol=1e-8, rtol=0)
    want = (terms * total).flatten(1).sum(1)  # <C_t, dW_hh>_F
    assert torch.allclose(tap.w_lag, want, atol=1e-8, rtol=0)
    shares = tap.w_lag / tap.w_lag.sum()
    assert abs(shares.sum().item() - 1) < 1e-8 and abs(tap.w_lag.sum() - total.pow(2).sum()) < 1e-8
    assert shares.std() > 1e-3  # the steps differ: not a constant that would pass for any cell


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_probed_stack_keeps_every_layers_lag_terms_which_add_up_to_its_squared_gradient_norm(bidirectional):
    from rnnlab.probe import Probe

    torch.manual_seed(10)
    model = StackedRNN("lstm", 3, 5, depth=2, bidirectional=bidirectional)
    probe = Probe(every=1)
    out, _ = model(torch.randn(4, 7, 3), run=probe.scan)
    out.pow(2).sum().backward()
    cells = {(l, 0): c for l, c in enumerate(model.layers)}
    cells.update({(l, 1): c for l, c in enumerate(model.backward_layers or [])})
    assert probe._lags.keys() == cells.keys()
    for key, cell in cells.items():
        lags = probe._lags[key]
        assert lags.shape == (7,) and lags.dtype == torch.float64
        assert abs(lags.sum() - cell.weight_hh.grad.pow(2).sum()) < 1e-8


@pytest.mark.parametrize("name,options", [("esn", {}), ("transformer", {"heads": 2})], ids=lambda v: str(v))
def test_without_a_hand_written_backward_the_lag_terms_read_nan_not_measured(name, options):
    torch.manual_seed(9)
    cell = CELLS[name](3, 4, **options)
    x = torch.randn(2, 5, 3, requires_grad=True)
    tap = Tap(torch.zeros(5, 2, 4), torch.zeros(5, dtype=torch.float64))
    out, _ = cell.scan(x, cell.init_state(2, x), tap)
    out.pow(2).sum().backward()
    assert torch.isnan(tap.w_lag).all()


@pytest.mark.parametrize("name,options", EVERY_CELL, ids=lambda v: str(v))
def test_gradcheck_every_cell(name, options):
    torch.manual_seed(6)
    cell = CELLS[name](2, 3 if name != "transformer" else 4, **options)
    x = torch.randn(2, 4, 2, requires_grad=True)
    state = tuple(s.requires_grad_() for s in perturbed_state(cell, 2, x))
    params = [p for p in cell.parameters() if p.requires_grad]  # perturbed in place by gradcheck

    def f(x, *inputs):
        out, last = cell.scan(x, inputs[: len(state)])
        return out, *last

    assert gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_fused_cells_equal_torch_nn_with_copied_weights(name):
    torch.manual_seed(7)
    cell = CELLS[name](3, 5)
    reference = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name](3, 5, batch_first=True)
    reference.load_state_dict({k.removeprefix("fused."): v for k, v in cell.state_dict().items()})
    x = torch.randn(2, 8, 3)
    assert torch.allclose(step_scan(cell, x, cell.init_state(2, x))[0], reference(x)[0], atol=1e-10, rtol=0)
    assert torch.allclose(cell.scan(x, cell.init_state(2, x))[0], reference(x)[0], atol=1e-10, rtol=0)


# ------------------------------------------------------------------------- parameter counts


def test_every_cell_has_the_spec_parameter_count():
    i, h = 100, 50
    assert count_parameters(GRUClassic(i, h)) == 3 * ((i + h) * h + h) == 22_650
    assert count_parameters(Peephole(i, h)) == 4 * ((i + h) * h + h) + 3 * h
    assert count_parameters(CIFG(i, h)) == 3 * ((i + h) * h + h)
    assert count_parameters(IndRNN(i, h)) == count_parameters(IndRNN(i, h, u_max=2.0)) == i * h + 2 * h
    assert count_parameters(ESN(i, h)) == 0  # the readout is the model's head
    gate = (i + h) * h + h
    derived = {  # Greff et al.: each variant removes (or adds) its part of the vanilla peephole LSTM
        "vanilla": 4 * gate + 3 * h, "NIG": 3 * gate + 2 * h, "NFG": 3 * gate + 2 * h, "NOG": 3 * gate + 2 * h,
        "NIAF": 4 * gate + 3 * h, "NOAF": 4 * gate + 3 * h, "NP": 4 * gate, "CIFG": 3 * gate + 2 * h,
        "FGR": 4 * gate + 3 * h + 9 * h * h,
    }
    for variant, n in derived.items():
        assert count_parameters(LSTMVariant(i, h, variant=variant)) == n, variant


def test_indrnn_bound_holds_after_every_optimiser_step():
    torch.manual_seed(11)
    u_max = 2 ** (1 / 20)  # Li et al.: |u| <= 2^(1/T) keeps a T-step product of u bounded by 2
    cell = IndRNN(2, 8, u_max=u_max)
    opt = torch.optim.SGD(cell.parameters(), lr=10.0)  # steps large enough to cross the bound
    x = torch.randn(4, 20, 2)
    for _ in range(10):
        opt.zero_grad()
        (-cell.scan(x, cell.init_state(4, x))[0].sum()).backward()  # pushes u up
        opt.step()
        assert torch.all(cell.u.abs() <= u_max)
    assert cell.u.max() > 0.99 * u_max  # it was pushed against the bound


def test_indrnn_bound_clip_is_li_et_als_projection_after_each_step_and_reaches_the_bound():
    from torch.nn.utils import parametrize

    from rnnlab.config import TrainConfig
    from rnnlab.train import make_optimizer

    torch.manual_seed(11)
    u_max = 2 ** (1 / 20)
    model = StackedRNN("indrnn", 2, 8, u_max=u_max, bound="clip")
    cell = model.layers[0]
    assert not parametrize.is_parametrized(cell, "u")  # u itself is trained, as Li et al.
    opt = make_optimizer(model, TrainConfig(optimizer="sgd", lr=10.0, momentum=0.0), torch.device("cpu"))
    x = torch.randn(4, 20, 2)
    for _ in range(10):
        opt.zero_grad()
        (-model.features(x)[0].sum()).backward()  # pushes u up, far past the bound
        opt.step()
        assert torch.all(cell.u.abs() <= u_max)
    assert torch.any(cell.u == u_max)  # clipped onto the bound itself (tanh only approaches it)
    # Inside the bound a step is the plain gradient step on u (no tanh slope in between).
    cell.u.data.fill_(0.5)
    opt.zero_grad()
    model.features(x)[0].sum().backward()
    expected = 0.5 - 10.0 * cell.u.grad
    opt.step()
    inside = expected.abs() <= u_max
    assert inside.any() and torch.equal(cell.u[inside], expected[inside])


def test_indrnn_u_init_ranges_and_the_top_layer_of_a_stack_alone_near_one():
    T = 1000
    low, high = 2 ** (-1 / T), 2 ** (1 / T)
    cell = IndRNN(3, 64, u_init=[0.2, 0.4])
    assert 0.2 <= cell.u.min() and cell.u.max() <= 0.4
    torch.manual_seed(0)
    default = IndRNN(3, 64, u_max=0.5)
    assert 0 <= default.u.min() and default.u.max() < 0.5  # U(0, min(1, u_max)) without u_init
    for bidirectional in (False, True):
        torch.manual_seed(3)
        plain = StackedRNN("indrnn", 3, 64, depth=3, u_max=high, bound="clip", bidirectional=bidirectional)
        torch.manual_seed(3)
        top = StackedRNN("indrnn", 3, 64, depth=3, u_max=high, bound="clip", u_init_top=[low, high],
                         bidirectional=bidirectional)
        stacks = [top.layers] + ([top.backward_layers] if bidirectional else [])
        for layers in stacks:
            assert torch.all((low <= layers[-1].u) & (layers[-1].u <= high))  # only the top layer starts near 1
            assert layers[0].u.max() < 1 and layers[1].u.max() < 1
        for a, b in zip(plain.layers[:-1], top.layers[:-1]):  # the layers below start as in any stack
            assert torch.equal(a.u, b.u) and torch.equal(a.weight_ih, b.weight_ih)


@pytest.mark.parametrize("options,message", [
    ({"u_init": [0.5, 0.2]}, "cell.u_init=[0.5, 0.2] is not allowed (allowed: [low, high] with low <= high)"),
    ({"u_init": [0.1]}, "cell.u_init=[0.1] is not allowed"),
    ({"u_max": 1.05, "u_init_top": [0.9, 1.1]},
     "cell.u_init_top=[0.9, 1.1] is not allowed (allowed: [low, high] with low <= high, within [-u_max, u_max] = [-1.05, 1.05])"),
    ({"bound": "hard"}, "cell.bound='hard' is not allowed (allowed: tanh, clip)"),
])
def test_indrnn_init_and_bound_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError) as info:
        IndRNN(3, 4, **options)
    assert str(info.value) == message or str(info.value).startswith(message)


# ----------------------------------------------------------------------------- echo state


def test_esn_reservoir_is_frozen_sparse_and_scaled():
    torch.manual_seed(8)
    cell = ESN(10, 300, spectral_radius=0.8, density=0.05)
    assert not any(p.requires_grad for p in cell.parameters())
    eigenvalues = torch.linalg.eigvals(cell.weight_hh.double())
    assert abs(eigenvalues.abs().max().item() - 0.8) < 1e-6
    assert abs((cell.weight_hh != 0).double().mean().item() - 0.05) < 0.005
    x = torch.randn(2, 5, 10, requires_grad=True)
    cell.scan(x, cell.init_state(2, x))[0].sum().backward()
    assert all(b.grad is None for b in cell.buffers())


def test_esn_echo_state_property_forgets_the_initial_state():
    torch.manual_seed(9)
    cell = ESN(2, 100, spectral_radius=0.9, leak=0.5)
    x = torch.randn(1, 300, 2)
    a, _ = cell.scan(x, (torch.randn(1, 100),))
    b, _ = cell.scan(x, (torch.randn(1, 100),))
    assert (a[:, 0] - b[:, 0]).norm() > 0.1
    assert (a[:, -1] - b[:, -1]).norm() < 1e-6


# --------------------------------------------------------------------------- initialisation


def test_default_initialisation_is_pytorchs():
    for cell in (GRUClassic(5, 16), Peephole(5, 16), IndRNN(5, 16)):
        bound = 1 / 16**0.5
        for name, p in cell.named_parameters():
            if name != "u" and not (isinstance(cell, Peephole) and name == "bias"):  # (forget bias 1)
                assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound, name


@pytest.mark.parametrize("make", [RNN, LSTM, GRU, GRUClassic, Peephole, CIFG])
def test_orthogonal_recurrent_init_makes_every_gate_block_orthogonal(make):
    cell = make(3, 8, recurrent_init="orthogonal")
    assert not torch.allclose(make(3, 8).weight_hh[:8] @ make(3, 8).weight_hh[:8].T, torch.eye(8), atol=0.1)
    for block in cell.weight_hh.detach().split(8):
        assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-6)


def test_identity_init_with_relu_is_the_irnn():
    cell = RNN(3, 6, nonlinearity="relu", recurrent_init="identity")
    assert torch.equal(cell.weight_hh, torch.eye(6)) and torch.count_nonzero(cell.bias_ih) == 0
    h = torch.rand(2, 6)  # no input, non-negative state: carried over unchanged (Le et al. 2015)
    assert torch.allclose(cell(torch.zeros(2, 3), (h,))[0], h)


@pytest.mark.parametrize("make", [LSTM, Peephole, CIFG, LSTMVariant])
def test_forget_gate_bias_is_one_by_default(make):
    cell = make(3, 4)
    if isinstance(cell, LSTM):
        f_bias = cell.bias_ih[4:8]
    elif isinstance(cell, CIFG):
        f_bias = -cell.bias[:4]  # f = 1 - σ(a_i) = σ(-a_i)
    else:
        f_bias = cell.bias[4:8]  # i, f, o, g
    assert torch.equal(f_bias, torch.ones(4))


@pytest.mark.parametrize("make", [LSTM, Peephole, LSTMVariant])
def test_chrono_init_spreads_forget_biases_and_negates_the_input_bias(make):
    torch.manual_seed(10)
    cell = make(3, 200, chrono=50)
    b = cell.bias_ih if isinstance(cell, LSTM) else cell.bias
    b_i, b_f = b[:200], b[200:400]  # both layouts start i, f
    assert torch.all(b_f >= 0) and torch.all(b_f <= torch.log(torch.tensor(49.0)))
    assert b_f.std() > 0.5 and torch.equal(b_i, -b_f)  # Tallec & Ollivier 2018: b_f = log U(1, T-1), b_i = -b_f


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: LSTMVariant(3, 4, variant="XYZ"), "cell.variant='XYZ' is not allowed (allowed: vanilla, NIG"),
        (lambda: ESN(3, 4, spectral_radius=0.0), "cell.spectral_radius=0.0 is out of range (allowed: > 0"),
        (lambda: ESN(3, 4, density=1.5), "cell.density=1.5 is out of range"),
        (lambda: IndRNN(3, 4, u_max=0.0), "cell.u_max=0.0 must be > 0"),
        (lambda: IndRNN(3, 4, u_max=-1.0), "cell.u_max=-1.0 must be > 0"),
        (lambda: Peephole(3, 4, output_reads="c"), "cell.output_reads='c' is not allowed"),
        (lambda: LSTM(3, 4, chrono=1), "cell.chrono=1"),
        (lambda: Transformer(3, 6, heads=4), "cell.heads=4: must divide hidden_size=6"),
    ],
)
def test_bad_options_raise_one_line_value_errors(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------ float32: the products go through oneDNN on the CPU

onednn = pytest.mark.skipif(bptt._onednn_linear is None, reason="this torch build has no oneDNN (mkldnn) linear")


@contextlib.contextmanager
def torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@onednn
@pytest.mark.parametrize("plus", ["none", "bias", "term"])
def test_mm_equals_a_float64_product_for_every_layout_it_is_given(plus, monkeypatch, one_thread, onednn_products):
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)  # oneDNN for these small shapes too
    torch.manual_seed(0)
    x = torch.randn(6, 40, 30, dtype=torch.float32)[:, 3, 5:25]  # (6, 20), a row view: bptt's z[t]
    w = torch.randn(12, 20, dtype=torch.float32)
    p = {"none": None, "bias": torch.randn(12, dtype=torch.float32), "term": torch.randn(6, 16, dtype=torch.float32)[:, :12]}[plus]
    # The layout bptt passes (a weight (N, K) transposed), and a contiguous (K, N) one, which
    # oneDNN would run ~1000x slower, so it takes MKL.
    for w_t in (w.t(), w.t().contiguous()):
        want = x.double() @ w_t.double() + (0 if p is None else p.double())
        got = bptt.mm(x, w_t, p).double()
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5
        out = torch.full((6, 12), float("nan"), dtype=torch.float32)
        assert bptt.mm(x, w_t, p, out=out) is out and (out.double() - want).abs().max() < 1e-5


@onednn
@pytest.mark.parametrize("k", [3, 7, 11])  # narrower than, as wide as, wider than d
def test_grad_weight_sums_d_transposed_x_over_every_row(k, one_thread, onednn_products):
    torch.manual_seed(0)
    d = torch.randn(30, 500, 14, dtype=torch.float32)[:, :, 3:10].reshape(-1, 7)  # rows of a strided view
    x = torch.randn(15000, k, dtype=torch.float32)
    got = bptt.grad_weight(d, x)
    assert got.shape == (7, k)
    want = d.double().t() @ x.double()
    assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()  # Σ of 15000 float32 products


@onednn
@pytest.mark.parametrize("name,options", EVERY_CELL, ids=lambda v: str(v))
def test_every_hand_written_backward_in_float32_matches_float64(name, options, monkeypatch, one_thread, onednn_products):
    """The float64 tests above take torch's products (oneDNN has none in float64); this runs
    each tapped scan in float32, where its products go through oneDNN, against the float64
    step path: outputs, every gradient and the tap, within float32's reach."""
    calls = []
    real = bptt._onednn_linear

    def counted(*args):
        calls.append(1)
        return real(*args)

    counted.binary = lambda *args: calls.append(1) or real.binary(*args)
    monkeypatch.setattr(bptt, "_onednn_linear", counted)
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)  # the per-step products too, at these small sizes
    torch.manual_seed(8)
    cell = CELLS[name](3, 5 if name != "transformer" else 6, **options)
    x = torch.randn(3, 12, 3)
    state = perturbed_state(cell, 3, x)
    weights = torch.linspace(-1, 2, 3 * 12 * cell.hidden_size).view(3, 12, -1)
    results = []
    for dtype, tapped in ((torch.float32, True), (torch.float64, False)):
        cell.to(dtype)
        xs = x.to(dtype).requires_grad_()
        ss = tuple(s.to(dtype).requires_grad_() for s in state)
        tap = torch.zeros(12, 3, cell.hidden_size, dtype=dtype)
        out, last = cell.scan(xs, ss, Tap(tap)) if tapped else step_scan(cell, xs, ss, Tap(tap))
        loss = (out * weights.to(dtype)).sum() + sum((s * s).sum() for s in last if s.dim() == 2)
        wrt = [xs, *ss, *[p for p in cell.parameters() if p.requires_grad]]
        results.append([out, *last, *torch.autograd.grad(loss, wrt), tap])
    for a, b in zip(*results):
        assert (a.double() - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    has_products = name not in ("esn", "transformer", "indrnn")  # indrnn's recurrence is element-wise
    assert bool(calls) == has_products  # the float32 run really took oneDNN's products


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru_classic", "indrnn", "rnn", "gru"])
def test_the_lag_terms_in_float32_match_float64(name, monkeypatch, one_thread, onednn_products):
    """Their product takes oneDNN in float32 (where this torch has it), and the sum over units
    stays in float32: within float32's reach of the float64 terms."""
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)
    torch.manual_seed(11)
    cell = CELLS[name](3, 5)
    x = torch.randn(3, 12, 3)
    weights = torch.linspace(-1, 2, 3 * 12 * 5).view(3, 12, 5)
    lags = []
    for dtype in (torch.float32, torch.float64):
        cell.to(dtype)
        tap = Tap(torch.zeros(12, 3, 5, dtype=dtype), torch.zeros(12, dtype=torch.float64))
        out, _ = cell.scan(x.to(dtype), cell.init_state(3, x.to(dtype)), tap)
        (out * weights.to(dtype)).sum().backward()
        lags.append(tap.w_lag)
    assert (lags[0] - lags[1]).abs().max() <= 1e-5 * lags[1].abs().max()


@onednn
def test_on_two_threads_every_product_takes_torchs_own(monkeypatch):
    calls = []
    monkeypatch.setattr(bptt, "_onednn_linear", lambda *args: calls.append(1))
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)
    with torch_threads(2):
        x, w = torch.randn(8, 6, dtype=torch.float32), torch.randn(5, 6, dtype=torch.float32)
        assert torch.allclose(bptt.mm(x, w.t()), x @ w.t())
        assert torch.allclose(bptt.grad_weight(x, x[:, :3]), x.t() @ x[:, :3])
    assert not calls


# ------------------------------------------------------- what a cell declares: weights, readout

import copy  # noqa: E402

from torch.autograd import gradgradcheck  # noqa: E402

from rnnlab.cells import GROUPS, Cell  # noqa: E402


def width(name):
    return 8 if name == "transformer" else 4  # divisible by the default 4 heads


@pytest.mark.parametrize("name,options", EVERY_CELL, ids=lambda v: str(v))
def test_every_cell_declares_its_own_tensors_with_one_gate_per_row_block(name, options):
    cell = CELLS[name](3, width(name), **options)
    own = [*cell.parameters(), *cell.buffers()]
    declared = cell.weight_groups()
    for w in declared:
        assert w.group in GROUPS and any(w.tensor is t for t in own), w.group
        rows = len(w.gates) * (1 if w.group == "peephole" else cell.hidden_size)  # a peephole row is one gate's p
        assert not w.gates or (w.tensor.size(0) == rows and len(set(w.gates)) == len(w.gates))
    trainable = [p for p in cell.parameters() if p.requires_grad]
    if name == "transformer":  # no recurrent weight, no gates: the probe calls all of it "other"
        assert declared == [] and trainable
        return
    assert all(any(p is w.tensor for w in declared) for p in trainable)  # nothing left undeclared
    (recurrent,) = [w for w in declared if w.group == "recurrent"]
    if name == "indrnn" and options.get("u_max"):  # trained v, applied u = u_max tanh(v)
        assert torch.equal(recurrent.applied, cell.u) and not torch.equal(recurrent.tensor, cell.u)


def close(cell, **bias):
    """A copy of ``cell`` whose named gates get the given bias (±1e4: the gate shut or open, in
    float64 exactly 0 or 1), found through what the cell declares."""
    cell = copy.deepcopy(cell)
    with torch.no_grad():
        for w in cell.weight_groups():
            if w.group == "bias":
                rows = w.tensor.view(len(w.gates), -1)
                for gate, value in bias.items():
                    rows[w.gates.index(gate)] = value
    return cell


BIG = 1e4
LSTM_FAMILY = [("lstm", {}), ("peephole", {}), ("cifg", {}), *[("lstm_variant", {"variant": v}) for v in VARIANTS]]


@pytest.mark.parametrize("name,options", LSTM_FAMILY, ids=lambda v: str(v))
def test_each_declared_lstm_gate_is_the_gate_of_that_name_in_the_forward(name, options):
    torch.manual_seed(12)
    cell = CELLS[name](3, 4, **options)
    gates = next(w.gates for w in cell.weight_groups() if w.group == "bias")
    x = torch.randn(2, 3)
    one, other = perturbed_state(cell, 2, x), perturbed_state(cell, 2, x)
    other = (one[0], other[1], *one[2:])  # the same h (and FGR's gates), another c_{t-1}

    def step(cell, state):
        _, (h, c, *_) = cell(x, state)
        return h, c

    if "o" in gates:  # o = 0: nothing goes out
        assert torch.equal(step(close(cell, o=-BIG), one)[0], torch.zeros(2, 4))
    if "i" in gates:  # i = 0 and f = 1 (CIFG: f = 1 - i): the memory is kept as it was
        shut = close(cell, i=-BIG, **({"f": BIG} if "f" in gates else {}))
        assert torch.allclose(step(shut, one)[1], one[1], atol=1e-12, rtol=0)
    if "f" in gates:  # f = 0 and i = 1: the memory is g alone, whatever c_{t-1} was
        forget = close(cell, f=-BIG, **({"i": BIG} if "i" in gates else {}))
        assert torch.allclose(step(forget, one)[1], step(forget, other)[1], atol=1e-12, rtol=0)
        assert not torch.allclose(step(cell, one)[1], step(cell, other)[1])


@pytest.mark.parametrize("name,keep,take", [("gru", BIG, -BIG), ("gru_classic", -BIG, BIG)])
def test_each_declared_gru_gate_is_the_gate_of_that_name_in_the_forward(name, keep, take):
    """z keeps h_{t-1} where it is 1 in the fused kernel's convention, where it is 0 in Cho et al.'s."""
    torch.manual_seed(13)
    cell = CELLS[name](3, 4)
    candidate = "n" if name == "gru" else "h"
    x = torch.randn(2, 3)
    one, other = perturbed_state(cell, 2, x), perturbed_state(cell, 2, x)
    assert torch.equal(close(cell, z=keep)(x, one)[0], one[0])  # z: the update gate keeps h
    reset = close(cell, z=take, r=-BIG)  # h_t = the candidate, r = 0: it reads no h_{t-1}
    assert torch.allclose(reset(x, one)[0], reset(x, other)[0], atol=1e-12, rtol=0)
    assert torch.equal(close(cell, z=take, **{candidate: BIG})(x, one)[0], torch.ones(2, 4))  # tanh(big) = 1


def test_every_cell_declares_how_it_is_fitted():
    assert Cell.readout == "gradient"
    for name, make in CELLS.items():
        if name != "esn":
            assert make(3, width(name)).readout == "gradient", name
    assert ESN(3, 4).readout == "ridge" and ESN(3, 4, readout="gradient").readout == "gradient"
    assert StackedRNN("esn", 3, 4, depth=2).layers[0].readout == "ridge"  # where the run reads it
    assert StackedRNN("lstm", 3, 4).layers[0].readout == "gradient"


# ------------------------------------------------------------------------------ double backward

# Every hand-written backward; a fused cell runs its twin when tapped.
HAND_WRITTEN = [("peephole", {}, "GatedLSTM"), ("lstm_variant", {"variant": "FGR"}, "GatedLSTM"),
                ("lstm", {}, "GatedLSTM"), ("gru_classic", {}, "GRUClassic"), ("indrnn", {}, "IndRNN"),
                ("rnn", {}, "Elman"), ("gru", {}, "GRU")]


@pytest.mark.parametrize("name,options,function", HAND_WRITTEN, ids=lambda v: str(v))
def test_a_graph_of_a_hand_written_backward_is_refused_in_one_line_that_names_step_path(name, options, function):
    torch.manual_seed(14)
    cell = CELLS[name](2, 3, **options)
    x = torch.randn(2, 4, 2, requires_grad=True)
    tap = Tap(torch.zeros(4, 2, 3)) if name in ("rnn", "lstm", "gru") else None
    out, _ = cell.scan(x, cell.init_state(2, x), tap)
    with pytest.raises(RuntimeError) as info:
        torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    message = str(info.value)
    assert f"rnnlab.bptt.{function}" in message and "step_path=True" in message and "\n" not in message


def test_a_gradient_penalty_trains_through_the_step_path_and_not_through_scan():
    torch.manual_seed(15)
    model = StackedRNN("peephole", 2, 3, depth=2)
    x, y = torch.randn(2, 5, 2, requires_grad=True), torch.randn(2, 1)

    def penalised(step_path):
        loss = torch.nn.functional.mse_loss(model(x, step_path=step_path)[0], y)
        (dx,) = torch.autograd.grad(loss, x, create_graph=True)
        return loss + dx.pow(2).sum()  # input-gradient penalty: a second backward through the cell

    with pytest.raises(RuntimeError, match="step_path=True"):
        penalised(step_path=False)
    weight = model.layers[0].weight_hh
    (with_penalty,) = torch.autograd.grad(penalised(step_path=True), weight)
    (plain,) = torch.autograd.grad(torch.nn.functional.mse_loss(model(x)[0], y), weight)
    assert torch.isfinite(with_penalty).all() and (with_penalty - plain).abs().max() > 1e-8


@pytest.mark.parametrize("name,options", [("peephole", {}), ("lstm_variant", {"variant": "FGR"}), ("gru_classic", {}),
                                          ("indrnn", {"u_max": 1.1}), ("rnn", {}), ("gru", {})], ids=lambda v: str(v))
def test_gradgradcheck_through_the_step_loop(name, options):
    torch.manual_seed(16)
    cell = CELLS[name](2, 2, **options)
    x = torch.randn(1, 3, 2, requires_grad=True)
    state = tuple(s.requires_grad_() for s in perturbed_state(cell, 1, x))
    params = [p for p in cell.parameters() if p.requires_grad]

    def f(x, *inputs):
        out, last = step_scan(cell, x, inputs[: len(state)])
        return out, *last

    assert gradgradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------ the transformer's window


def test_a_transformer_state_carried_chunk_after_chunk_stays_window_long():
    """A char_lm epoch carries the cache from chunk to chunk: it must not grow with the epoch."""
    from rnnlab.train import detached, forward

    torch.manual_seed(17)
    model = StackedRNN("transformer", 3, 4, depth=2, output_size=3, many_to_many=True, heads=2, window=8)
    state, sizes = None, []
    for chunk in range(40):  # 40 chunks of 5 steps: 200 steps through a cache of 8
        out, state = forward(model, torch.randn(2, 5, 3), detached(state), True, 0)
        out.sum().backward()
        for k, v in state:
            assert k.shape == v.shape == (2, min(5 * (chunk + 1), 8), 4)
        sizes.append(sum(t.untyped_storage().nbytes() for layer in state for t in layer))
    assert len(set(sizes[2:])) == 1  # flat from the chunk that fills the window on
    assert sizes[-1] <= 2 * 2 * (8 + 5) * 2 * 4 * 8  # layers x (k, v) x (window + chunk) x B x H x float64


@pytest.mark.parametrize("window", [11, 50])
def test_a_transformer_window_no_shorter_than_the_sequence_is_unbounded_attention(window):
    torch.manual_seed(18)
    cell = Transformer(3, 4, heads=2, window=window)
    x = torch.randn(2, 12, 3)  # t - j <= 11 for every pair
    with torch.no_grad():
        out, (k, _) = cell.scan(x, cell.init_state(2, x))
        assert torch.allclose(out, reference_attention_block(x, 0, cell), atol=1e-10, rtol=0)
    assert k.size(1) == min(12, window)


@pytest.mark.parametrize("window", [1, 4])
def test_a_windowed_transformer_scans_in_chunks_as_at_once_and_as_the_written_out_window(window):
    torch.manual_seed(19)
    cell = Transformer(3, 4, heads=2, window=window)
    x = torch.randn(2, 13, 3)
    with torch.no_grad():
        whole, _ = cell.scan(x, cell.init_state(2, x))
        assert torch.allclose(whole, reference_attention_block(x, 0, cell, window=window), atol=1e-10, rtol=0)
        assert not torch.allclose(whole, reference_attention_block(x, 0, cell), atol=1e-3)  # the window matters here
        state, parts = cell.init_state(2, x), []
        for piece in x.split(3, 1):  # chunks of 3 (and a last of 1), the cache carried
            out, state = cell.scan(piece, state)
            parts.append(out)
        assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-12, rtol=0)
        assert torch.allclose(step_scan(cell, x, cell.init_state(2, x))[0], whole, atol=1e-12, rtol=0)


def test_a_transformer_window_below_one_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^cell.window=0 is out of range \(allowed: >= 1\)$"):
        Transformer(3, 4, heads=2, window=0)


def test_recurrent_gain_scales_w_hh_so_an_orthogonal_init_has_that_spectral_radius():
    cell = RNN(3, 8, recurrent_init="orthogonal", recurrent_gain=3.0)
    torch.testing.assert_close(torch.linalg.svdvals(cell.weight_hh.detach()), torch.full((8,), 3.0))
    assert torch.equal(RNN(3, 8, recurrent_init="identity", recurrent_gain=0.5).weight_hh, 0.5 * torch.eye(8))
    torch.manual_seed(0)
    plain = RNN(3, 8).weight_hh.detach().clone()
    torch.manual_seed(0)
    assert torch.equal(RNN(3, 8, recurrent_gain=2.0).weight_hh, 2 * plain)  # the default init, scaled
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"^cell\.recurrent_gain=.* is out of range \(allowed: a finite number > 0\)$"):
            RNN(3, 8, recurrent_gain=bad)
