"""Cells against independent float64 references written from ../shared/spec/CELLS.md."""
from __future__ import annotations

import pytest
import torch

from rnnlab.cells import CELLS, GRU, LSTM, RNN, step_scan
from rnnlab.model import count_parameters

pytestmark = pytest.mark.usefixtures("float64")


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def reference_lstm(x, h, c, W, b):
    """CELLS.md: f = σ(W_f[h, x] + b_f), i, g = tanh(W_c[h, x] + b_c), o; c = f c + i g; h = o tanh(c).
    W maps [h, x] (the spec's concatenation order) for each gate; b per gate."""
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


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_spec(nonlinearity):
    torch.manual_seed(1)
    cell = RNN(3, 5, nonlinearity=nonlinearity)
    x = torch.randn(4, 9, 3)
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    h = torch.zeros(4, 5)
    for t in range(9):  # h_t = f(W_xh x_t + W_hh h_{t-1} + b_h)
        h = f(x[:, t] @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh)
    out, _ = cell.scan(x, cell.init_state(4, x))
    assert torch.allclose(out[:, -1], h, atol=1e-10, rtol=0)


def test_gru_matches_spec():
    torch.manual_seed(2)
    cell = GRU(3, 5)
    x = torch.randn(4, 9, 3)
    (Wr, Wz, Wn), (Ur, Uz, Un) = cell.weight_ih.chunk(3), cell.weight_hh.chunk(3)
    (br, bz, bn), (cr, cz, cn) = cell.bias_ih.chunk(3), cell.bias_hh.chunk(3)
    h = torch.zeros(4, 5)
    for t in range(9):  # the fused-kernel convention: r applied after W_hn h + b_hn
        xt = x[:, t]
        r = sigmoid(xt @ Wr.T + br + h @ Ur.T + cr)
        z = sigmoid(xt @ Wz.T + bz + h @ Uz.T + cz)
        n = torch.tanh(xt @ Wn.T + bn + r * (h @ Un.T + cn))
        h = (1 - z) * n + z * h
    out, _ = cell.scan(x, cell.init_state(4, x))
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
