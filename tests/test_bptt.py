"""bptt's one door to a private torch op: oneDNN's matmul, torch.ops.mkldnn._linear_pointwise.

The op is checked once when bptt is imported (_working_onednn_linear); these tests pin that
this torch passes the check, that an op which is missing, has another signature or computes
something else is refused, and that the fallback (torch.mm/addmm) gives the fast path's
results. The products themselves are compared with float64 in tests/test_cells.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rnnlab import bptt
from rnnlab.cells import CELLS

has_mkldnn = torch.backends.mkldnn.is_available()


@pytest.mark.skipif(not has_mkldnn, reason="this torch build has no oneDNN (mkldnn)")
def test_this_torchs_onednn_linear_passes_the_check_so_bptt_takes_it():
    # An upgrade that drops or changes the op fails here, loudly, instead of only running slower.
    op = torch.ops.mkldnn._linear_pointwise
    assert bptt._working_onednn_linear() is op and bptt._onednn_linear is op
    x, w = torch.randn(7, 5), torch.randn(3, 5)
    b, p = torch.randn(3), torch.randn(7, 3)
    want = x.double() @ w.double().t()
    assert (op(x, w, b, "none", [], "").double() - (want + b.double())).abs().max() < 1e-5
    assert (op(x, w, None, "none", [], "").double() - want).abs().max() < 1e-5
    assert (op.binary(x, p, w, None, "add").double() - (want + p.double())).abs().max() < 1e-5


def _raises(*args):
    raise RuntimeError("_linear_pointwise() expected at most 5 arguments")  # what a schema change says


def _no_binary(*args):
    return torch.ops.mkldnn._linear_pointwise(*args)  # right, but without the ``binary`` form


def _wrong(x, w, b, *rest):
    return x @ w.t()  # ignores the bias


@pytest.mark.skipif(not has_mkldnn, reason="the check runs only where torch has oneDNN")
@pytest.mark.parametrize(
    "ops",
    [
        SimpleNamespace(),  # gone
        SimpleNamespace(_linear_pointwise=SimpleNamespace()),  # not callable any more
        SimpleNamespace(_linear_pointwise=_raises),  # another signature
        SimpleNamespace(_linear_pointwise=_no_binary),
    ],
    ids=["missing", "not-callable", "other-schema", "no-binary"],
)
def test_an_op_that_is_gone_or_has_another_signature_is_refused(ops):
    assert bptt._working_onednn_linear(ops) is None


@pytest.mark.skipif(not has_mkldnn, reason="the check runs only where torch has oneDNN")
def test_an_op_that_computes_something_else_is_refused():
    _wrong.binary = lambda x, p, w, b, how: x @ w.t() + p
    assert bptt._working_onednn_linear(SimpleNamespace(_linear_pointwise=_wrong)) is None
    real = torch.ops.mkldnn._linear_pointwise
    right = SimpleNamespace(_linear_pointwise=lambda *args: real(*args))
    right._linear_pointwise.binary = lambda x, p, w, b, how: x @ w.t() - p  # subtracts: refused
    assert bptt._working_onednn_linear(right) is None


def _counted(monkeypatch, calls):
    real = bptt._onednn_linear

    def op(*args):
        calls.append(1)
        return real(*args)

    op.binary = lambda *args: calls.append(1) or real.binary(*args)
    monkeypatch.setattr(bptt, "_onednn_linear", op)


@pytest.mark.skipif(bptt._onednn_linear is None, reason="no oneDNN linear: only the fallback exists")
def test_the_fallback_gives_the_fast_paths_products(monkeypatch, one_thread, onednn_products):
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)
    torch.manual_seed(0)
    x = torch.randn(6, 40, 30)[:, 3, 5:25]  # (6, 20): a row view, as bptt's z[t]
    w = torch.randn(12, 20)
    bias, term = torch.randn(12), torch.randn(6, 16)[:, :12]
    d, z = torch.randn(900, 12), torch.randn(900, 7)
    results, calls = [], []
    for fast in (True, False):
        if fast:
            _counted(monkeypatch, calls)
        else:
            monkeypatch.setattr(bptt, "_onednn_linear", None)
        out = torch.full((6, 12), float("nan"))
        results.append([bptt.mm(x, w.t()), bptt.mm(x, w.t(), bias), bptt.mm(x, w.t(), term, out=out).clone(),
                        bptt.mm(term, bptt._untransposed(w)), bptt.grad_weight(d, z), bptt.grad_weight(z, d)])
    assert len(calls) == 6  # the fast run really took oneDNN for every product
    for a, b in zip(*results):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())  # float32 sums


@pytest.mark.skipif(bptt._onednn_linear is None, reason="no oneDNN linear: only the fallback exists")
@pytest.mark.parametrize("name", ["lstm", "peephole", "gru_classic", "rnn"])
def test_a_hand_written_scan_gives_the_same_outputs_and_gradients_on_the_fallback(name, monkeypatch, one_thread, onednn_products):
    monkeypatch.setattr(bptt, "_ONEDNN_MIN_MACS", 0)  # the per-step products too, at these sizes
    torch.manual_seed(3)
    cell = CELLS[name](4, 6)
    x = torch.randn(5, 9, 4)
    state = tuple(s + 0.3 * torch.randn_like(s) for s in cell.init_state(5, x))
    weights = torch.linspace(-1, 2, 5 * 9 * 6).view(5, 9, 6)
    results, calls = [], []
    for fast in (True, False):
        if fast:
            _counted(monkeypatch, calls)
        else:
            monkeypatch.setattr(bptt, "_onednn_linear", None)
        xs = x.clone().requires_grad_()
        ss = tuple(s.clone().requires_grad_() for s in state)
        tap = torch.zeros(9, 5, 6)  # a tap sends the LSTM and RNN through their hand-written backward too
        out, last = cell.scan(xs, ss, bptt.Tap(tap))
        loss = (out * weights).sum() + sum((s * s).sum() for s in last)
        results.append([out, *last, tap, *torch.autograd.grad(loss, [xs, *ss, *(p for p in cell.parameters() if p.requires_grad)])])
    assert calls  # the fast run took oneDNN's products
    for a, b in zip(*results):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


# ------------------------------------------- which product a host takes: pinned, or raced once

@pytest.fixture
def undecided(monkeypatch):
    """cpu_products as a fresh process finds it: not decided yet, no environment pin."""
    monkeypatch.setattr(bptt, "_products", None)
    monkeypatch.delenv(bptt.PRODUCTS_ENV, raising=False)


@pytest.mark.parametrize("pin", ["mkl", "onednn"])
def test_the_environment_pins_the_products_and_the_loops_take_them(pin, undecided, monkeypatch, one_thread):
    if pin == "onednn" and bptt._onednn_linear is None:
        pytest.skip("this torch build has no oneDNN linear to pin")
    monkeypatch.setenv(bptt.PRODUCTS_ENV, pin)
    monkeypatch.setattr(bptt, "_onednn_wins", lambda: pytest.fail("a pinned choice runs no race"))
    calls = []
    if bptt._onednn_linear is not None:
        _counted(monkeypatch, calls)
    assert bptt.cpu_products() == pin and bptt.products_in_use() == pin
    x, w = torch.randn(64, 128), torch.randn(256, 128)
    assert (bptt.mm(x, w.t()).double() - x.double() @ w.double().t()).abs().max() < 1e-4
    assert bool(calls) == (pin == "onednn")


@pytest.mark.parametrize("value,message", [
    ("fast", "RNNLAB_CPU_PRODUCTS='fast' is not allowed (allowed: auto, mkl, onednn)"),
    ("MKL", "RNNLAB_CPU_PRODUCTS='MKL' is not allowed (allowed: auto, mkl, onednn)"),
])
def test_a_bad_pin_is_one_line_naming_the_variable_and_what_is_allowed(value, message, undecided, monkeypatch):
    monkeypatch.setenv(bptt.PRODUCTS_ENV, value)
    with pytest.raises(ValueError) as info:
        bptt.cpu_products()
    assert str(info.value) == message
    assert bptt._products is None  # nothing decided: the next call says it again


def test_pinning_onednn_where_this_torch_has_none_is_refused(undecided, monkeypatch):
    monkeypatch.setenv(bptt.PRODUCTS_ENV, "onednn")
    monkeypatch.setattr(bptt, "_onednn_linear", None)
    with pytest.raises(ValueError, match=r"^RNNLAB_CPU_PRODUCTS=onednn, but this torch build has no working oneDNN linear \(allowed: auto, mkl\)$"):
        bptt.cpu_products()


@pytest.mark.skipif(bptt._onednn_linear is None, reason="no oneDNN linear: nothing to race")
@pytest.mark.parametrize("onednn_is", ["slower", "much faster"])
def test_the_race_takes_onednn_only_where_it_wins_and_is_decided_once(onednn_is, undecided, monkeypatch):
    import time

    real = bptt._onednn_linear
    if onednn_is == "slower":
        def op(*args):
            time.sleep(2e-4)  # ~4x MKL's time for this product on any host we have seen
            return real(*args)
    else:
        done = real(torch.randn(64, 128), torch.randn(256, 128), None, "none", [], "")

        def op(*args):
            return done  # no arithmetic: far faster than any product
    monkeypatch.setattr(bptt, "_onednn_linear", op)
    threads = torch.get_num_threads()
    want = "mkl" if onednn_is == "slower" else "onednn"
    assert bptt.cpu_products() == want
    assert torch.get_num_threads() == threads  # the race ran on one thread and gave the rest back
    monkeypatch.setattr(bptt, "_onednn_wins", lambda: pytest.fail("decided once per process"))
    assert bptt.cpu_products() == want


def test_on_more_threads_the_loops_use_mkl_whatever_the_race_chose(monkeypatch):
    monkeypatch.setattr(bptt, "_products", "onednn")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bptt.products_in_use() == "mkl"
    finally:
        torch.set_num_threads(before)
    torch.set_num_threads(1)
    try:
        assert bptt.products_in_use() == "onednn"
    finally:
        torch.set_num_threads(before)
