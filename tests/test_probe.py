"""The probe measures the right thing: ||dL/dh^l_t|| equals an independent autograd.grad
reference (float64, 1e-10), on every path, for every cell and depth > 1, with truncation."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnlab.cells import CELLS, Cell, Weight
from rnnlab.model import StackedRNN
from rnnlab.probe import Probe, ProbeRecord, decay_fit, spectra, summary_metrics, weight_norms
from rnnlab.train import forward

pytestmark = pytest.mark.usefixtures("float64")

RECURRENT = [name for name in CELLS if name not in ("esn",)]  # esn has no trainable recurrence


def reference_dh(model: StackedRNN, x: torch.Tensor, y: torch.Tensor, truncation: int = 0) -> np.ndarray:
    """Unroll every layer one step at a time through the cell's own ``forward``, keep each
    h_t, and take torch.autograd.grad of the loss with respect to all of them: the total
    derivative on every path, by construction. (layers, T); steps before the truncation
    window are 0."""
    T = x.size(1)
    k = truncation if 0 < truncation < T else T
    states = [cell.init_state(x.size(0), x) for cell in model.layers]
    if k < T:
        with torch.no_grad():
            _, states = model(x[:, : T - k], [tuple(s) for s in states])
    hs, inputs = [], x[:, T - k :]
    for layer, cell in enumerate(model.layers):
        if layer > 0:
            inputs = model.dropout(inputs)
        state, outs = states[layer], []
        for x_t in inputs.unbind(1):
            h, state = cell(x_t, state)
            outs.append(h)
        hs.append(outs)
        inputs = torch.stack(outs, 1)
    loss = F.mse_loss(model.head(inputs[:, -1]), y)
    grads = torch.autograd.grad(loss, [h for layer in hs for h in layer])
    dh = np.zeros((len(model.layers), T))
    for i, g in enumerate(grads):
        layer, t = divmod(i, k)
        dh[layer, T - k + t] = g.norm(dim=-1).mean().item()
    return dh


def probed(model: StackedRNN, x, y, resolution=1, truncation=0):
    """A probed training step: train's forward (its truncation) with the probe's scan hook."""
    probe = Probe(every=1, resolution=resolution)
    out, _ = forward(model, x, None, False, truncation, run=probe.scan)
    model.zero_grad()
    F.mse_loss(out, y).backward()
    return probe.record(model, 1, max_norm=math.inf, length=x.size(1))


@pytest.fixture(params=[False, True], ids=["taps", "replayed"])
def replay(request, monkeypatch):
    """Both ways the probe gets its norms: from the training's taps, and from the float64
    replay it runs when float32 lost steps (forced here by calling every norm lost)."""
    if request.param:
        monkeypatch.setattr("rnnlab.probe.TINY", math.inf)
    return request.param


@pytest.mark.parametrize("cell", RECURRENT)
def test_captured_norms_equal_the_autograd_reference_for_every_cell(cell, replay):
    torch.manual_seed(0)
    model = StackedRNN(cell, 3, 8, depth=3)
    x, y = torch.randn(5, 9, 3), torch.randn(5, 1)
    record = probed(model, x, y)
    assert record.float32_underflow == replay and record.unrepresentable == 0
    np.testing.assert_allclose(record.dh[:, 0], reference_dh(model, x, y), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_coarser_resolution_keeps_every_kth_step_back_from_the_last_and_truncation_zeroes_the_rest(cell, replay):
    torch.manual_seed(1)
    model = StackedRNN(cell, 3, 6, depth=2)
    x, y = torch.randn(4, 10, 3), torch.randn(4, 1)
    reference = reference_dh(model, x, y)
    record = probed(model, x, y, resolution=4)
    kept = [1, 5, 9]  # the loss's step is always kept
    np.testing.assert_allclose(record.dh[:, 0, kept], reference[:, kept], rtol=1e-10)
    assert np.isnan(np.delete(record.dh[:, 0], kept, axis=1)).all()  # not kept, and says so
    x = torch.randn(4, 12, 3)
    truncated = probed(model, x, y, truncation=5)
    np.testing.assert_allclose(truncated.dh[:, 0], reference_dh(model, x, y, truncation=5), rtol=1e-10, atol=1e-14)
    assert (truncated.dh[:, 0, :7] == 0).all() and (truncated.dh[:, 0, 7:] > 0).all()


def test_a_fused_layers_output_gradient_alone_misses_the_path_through_time():
    """The trap the probe avoids: for the top layer of a many-to-one LSTM, the gradient of
    the fused output sequence is zero at every step but the last; the true one is not."""
    torch.manual_seed(2)
    model = StackedRNN("lstm", 3, 6, depth=2)
    x, y = torch.randn(4, 10, 3), torch.randn(4, 1)
    top_out, _ = model.layers[1].scan(model.layers[0].scan(x, model.layers[0].init_state(4, x))[0],
                                      model.layers[1].init_state(4, x))
    top_out.retain_grad()
    F.mse_loss(model.head(top_out[:, -1]), y).backward()
    assert (top_out.grad[:, :-1] == 0).all()
    assert (probed(model, x, y).dh[1, 0, :-1] > 0).all()


def test_group_norms_equal_the_parameters_grad_norms():
    torch.manual_seed(3)
    model = StackedRNN("lstm", 3, 5, depth=2)
    record = probed(model, torch.randn(4, 7, 3), torch.randn(4, 1))
    cell = model.layers[1]
    assert record.weight_norms["l1.recurrent"] == pytest.approx(cell.weight_hh.grad.norm().item(), rel=1e-12)
    assert record.weight_norms["l1.input"] == pytest.approx(cell.weight_ih.grad.norm().item(), rel=1e-12)
    gates = cell.weight_hh.grad.chunk(4, 0)
    for g, name in enumerate("ifgo"):  # PyTorch's gate order
        assert record.weight_norms[f"l1.recurrent.{name}"] == pytest.approx(gates[g].norm().item(), rel=1e-12)
    total = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters() if p.grad is not None))
    assert record.grad_norm == pytest.approx(total, rel=1e-12)
    assert weight_norms(model) == record.weight_norms


@pytest.mark.parametrize("radius,grows", [(0.5, False), (1.5, True)])
def test_a_tanh_rnn_vanishes_below_radius_one_and_explodes_above(radius, grows):
    torch.manual_seed(4)
    model = StackedRNN("rnn", 2, 32, depth=1)
    cell = model.layers[0]
    with torch.no_grad():  # an orthogonal recurrence scaled to the radius, small inputs (linear regime)
        q, _ = torch.linalg.qr(torch.randn(32, 32))
        cell.weight_hh.copy_(radius * q)
        cell.weight_ih.mul_(0.01)
        cell.bias_ih.zero_()
    record = probed(model, 1e-4 * torch.randn(8, 24, 2), torch.randn(8, 1))
    assert spectra(model)[0][0] == pytest.approx(radius, rel=1e-9)
    norms = record.dh[0, 0]  # t = 0 .. 23, the loss at t = 23
    ratios = norms[:-1] / norms[1:]  # one step further from the loss
    if grows:
        assert (ratios > 1.2).all() and norms[0] > 1e3 * norms[-1]
    else:
        assert (ratios < 0.6).all() and norms[0] < 1e-6 * norms[-1]
    assert np.allclose(ratios, radius, rtol=0.05)  # geometric, at the spectral radius


def test_spectra_come_on_probed_steps_that_are_multiples_of_spectra_every():
    torch.manual_seed(8)
    model = StackedRNN("gru", 3, 6, depth=2)
    x, y = torch.randn(4, 5, 3), torch.randn(4, 1)
    probe = Probe(every=1, spectra_every=3)
    for step in range(1, 7):
        out, _ = forward(model, x, None, False, 0, run=probe.scan)
        model.zero_grad()
        F.mse_loss(out, y).backward()
        probe.record(model, step, max_norm=math.inf)
    have = [bool(np.isfinite(r.spectral_radius).all()) for r in probe.records]
    assert have == [False, False, True, False, False, True]
    assert all(np.isnan(r.max_singular).all() != h for r, h in zip(probe.records, have))
    assert "w_hh_spectral_radius/l0" not in summary_metrics(probe.records[0])
    assert summary_metrics(probe.records[2])["w_hh_spectral_radius/l0"] == pytest.approx(spectra(model)[0][0])


def test_summary_metrics_are_few_and_per_layer():
    torch.manual_seed(5)
    model = StackedRNN("gru", 3, 6, depth=2)
    record = probed(model, torch.randn(4, 8, 3), torch.randn(4, 1))
    metrics = summary_metrics(record)
    per_layer = {"log10_grad_h_first", "log10_grad_h_last", "vanishing", "decay_rate", "decay_r2", "grad_w_input",
                 "grad_w_recurrent", "w_hh_spectral_radius", "w_hh_max_singular", "w_hh_mean_lag"}
    expected = {f"{k}/l{l}" for k in per_layer for l in (0, 1)} | {f"grad_w/l{l}/recurrent/{g}" for l in (0, 1) for g in "rzn"}
    expected |= {"probe/grad_norm", "probe/clipped", "probe/float32_underflow", "probe/unrepresentable"}
    assert set(metrics) == expected  # a few per layer; the lag shares join once the backwards measure them
    assert metrics["vanishing/l0"] == pytest.approx(np.log10(record.dh[0, 0, 0] / record.dh[0, 0, -1]))
    assert metrics["log10_grad_h_first/l0"] == pytest.approx(np.log10(record.dh[0, 0, 0]))


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_both_directions_of_a_bidirectional_stack_equal_the_autograd_reference(cell, replay):
    """The backward cell reads the sequence reversed; its dL/dh is stored at the time step
    it belongs to (h←_t), so both rows share one time axis."""
    torch.manual_seed(6)
    model = StackedRNN(cell, 3, 5, depth=2, bidirectional=True)
    x, y = torch.randn(4, 7, 3), torch.randn(4, 1)
    T, inputs, forward_hs, backward_hs = x.size(1), x, [], []
    for fwd, bwd in zip(model.layers, model.backward_layers):
        outs = []
        for cells, seq, keep in [(fwd, inputs, forward_hs), (bwd, inputs.flip(1), backward_hs)]:
            state, hs = cells.init_state(4, x), []
            for x_t in seq.unbind(1):
                h, state = cells(x_t, state)
                hs.append(h)
            keep.append(hs)
            outs.append(torch.stack(hs, 1))
        inputs = torch.cat([outs[0], outs[1].flip(1)], 2)
    H = 5
    loss = F.mse_loss(model.head(torch.cat([inputs[:, -1, :H], inputs[:, 0, H:]], 1)), y)
    flat = [h for layer in forward_hs + backward_hs for h in layer]
    grads = torch.autograd.grad(loss, flat)
    reference = np.zeros((2, 2, T))
    for i, g in enumerate(grads):
        which, t = divmod(i, T)
        direction, layer = divmod(which, 2)
        reference[layer, direction, t if direction == 0 else T - 1 - t] = g.norm(dim=-1).mean().item()
    record = probed(model, x, y)
    assert record.float32_underflow == replay
    np.testing.assert_allclose(record.dh, reference, rtol=1e-10, atol=1e-14)


# ------------------------------------------------- weight norms by the groups and gates cells declare


def stacked_gates(name: str, options: dict) -> str:
    """The gate order of the cell's forward, from each cell's reference in tests/test_cells.py:
    PyTorch's i, f, g, o and r, z, n; Cho et al.'s r, z, h̃; Greff et al.'s family i, f, o, g
    (the gates the variant has)."""
    if name in ("lstm", "gru", "gru_classic"):
        return {"lstm": "ifgo", "gru": "rzn", "gru_classic": "rzh"}[name]
    flags = {"peephole": set(), "cifg": {"CIFG", "NP"}}.get(name, {options.get("variant")})
    return "".join(g for g, off in (("i", "NIG"), ("f", "NFG"), ("o", "NOG")) if off not in flags
                   and not (g == "f" and "CIFG" in flags)) + "g"


def expected_layout(name: str, options: dict) -> dict[str, tuple[str, str]]:
    """parameter name -> (group, gates in stacking order), written out per cell by hand."""
    if name == "transformer":
        return {}  # everything is "other"
    if name in ("rnn", "lstm", "gru"):
        gates = "" if name == "rnn" else stacked_gates(name, options)
        layout = {"fused.weight_ih_l0": ("input", gates), "fused.weight_hh_l0": ("recurrent", gates),
                  "fused.bias_ih_l0": ("bias", gates)}
        return layout | ({"fused.bias_hh_l0": ("bias", gates)} if name == "gru" else {})  # rnn, lstm: folded
    if name == "indrnn":
        u = "parametrizations.u.original" if options.get("u_max") else "u"
        return {"weight_ih": ("input", ""), u: ("recurrent", ""), "bias": ("bias", "")}
    gates = stacked_gates(name, options)
    layout = {"weight_ih": ("input", gates), "weight_hh": ("recurrent", gates), "bias": ("bias", gates)}
    sigmoid = gates[:-1]
    variant = options.get("variant", "")
    if name == "peephole" or (name == "lstm_variant" and variant != "NP"):
        layout["peephole"] = ("peephole", sigmoid)
    if variant == "FGR":
        layout["weight_ss"] = ("gate_recurrent", sigmoid)
    return layout


TRAINABLE = [
    ("rnn", {}), ("lstm", {}), ("gru", {}), ("gru_classic", {}), ("peephole", {}), ("cifg", {}),
    ("indrnn", {}), ("indrnn", {"u_max": 1.5}), ("transformer", {"heads": 2}),
    *[("lstm_variant", {"variant": v}) for v in ("vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")],
]


@pytest.mark.parametrize("name,options", TRAINABLE, ids=str)
def test_weight_norms_are_slices_of_each_parameters_gradient_in_the_forwards_gate_order(name, options):
    torch.manual_seed(9)
    model = StackedRNN(name, 3, 4, depth=2, **options)
    record = probed(model, torch.randn(3, 6, 3), torch.randn(3, 1))
    squares: dict[str, float] = {}
    for index, cell in enumerate(model.layers):
        layout = expected_layout(name, options)
        for pname, p in cell.named_parameters():
            if p.grad is None:
                continue
            group, gates = layout.get(pname, ("other", ""))
            key = f"l{index}.{group}"
            squares[key] = squares.get(key, 0.0) + p.grad.pow(2).sum().item()
            for block, gate in zip(p.grad.chunk(len(gates)) if gates else [], gates):
                squares[f"{key}.{gate}"] = squares.get(f"{key}.{gate}", 0.0) + block.pow(2).sum().item()
    assert set(record.weight_norms) == set(squares)
    for key, value in squares.items():
        assert record.weight_norms[key] == pytest.approx(math.sqrt(value), rel=1e-12), key
    metrics = summary_metrics(record)
    gates = "" if name in ("rnn", "indrnn", "transformer") else stacked_gates(name, options)
    assert sorted(k for k in metrics if k.startswith("grad_w/l1/")) == sorted(f"grad_w/l1/recurrent/{g}" for g in gates)
    for g in gates:
        assert metrics[f"grad_w/l1/recurrent/{g}"] == record.weight_norms[f"l1.recurrent.{g}"]
    assert ("grad_w_recurrent/l1" in metrics) == (name != "transformer")


@pytest.mark.parametrize("name,gate,index", [("lstm", "f", 1), ("peephole", "o", 2), ("cifg", "o", 1),
                                             ("gru", "n", 2), ("gru_classic", "h", 2)])
def test_changing_one_gates_rows_changes_only_that_gates_key(name, gate, index):
    torch.manual_seed(10)
    model = StackedRNN(name, 3, 4, depth=2)
    before = probed(model, torch.randn(3, 6, 3), torch.randn(3, 1)).weight_norms
    cell = model.layers[1]
    weight = cell.fused.weight_hh_l0 if name in ("lstm", "gru") else cell.weight_hh
    with torch.no_grad():
        weight.grad[index * 4 : (index + 1) * 4] *= 3  # that gate's rows, in the forward's order
    after = weight_norms(model)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {"l1.recurrent", f"l1.recurrent.{gate}"}
    assert after[f"l1.recurrent.{gate}"] == pytest.approx(3 * before[f"l1.recurrent.{gate}"], rel=1e-12)


def test_spectra_read_the_declared_recurrence_as_the_forward_applies_it():
    torch.manual_seed(11)
    esn = StackedRNN("esn", 3, 20, depth=2, spectral_radius=0.7, density=0.5)
    assert np.allclose(spectra(esn)[0], 0.7, rtol=1e-9)  # the frozen reservoir, scaled to its radius
    bounded = StackedRNN("indrnn", 3, 5, u_max=0.5)
    cell = bounded.layers[0]
    with torch.no_grad():
        cell.parametrizations.u.original.fill_(3.0)  # v = 3: u = 0.5 tanh(3)
    assert spectra(bounded)[0][0] == pytest.approx(0.5 * math.tanh(3.0), rel=1e-12)
    assert np.isnan(spectra(StackedRNN("transformer", 3, 4, heads=2))[0]).all()  # no recurrent matrix
    gru = StackedRNN("gru", 3, 4)
    blocks = gru.layers[0].fused.weight_hh_l0.detach().chunk(3)  # r, z, n: the largest over the gates
    want = max(torch.linalg.eigvals(b).abs().max().item() for b in blocks)
    assert spectra(gru)[0][0] == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------- exact over any range


class Linear(Cell):
    """h_t = W x_t + A h_{t-1}: a linear recurrence, whose gradient decays exactly as A^k."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = torch.nn.Parameter(torch.randn(hidden_size, input_size) / input_size**0.5)
        self.weight_hh = torch.nn.Parameter(torch.eye(hidden_size))

    def forward(self, x_t, state):
        h = x_t @ self.weight_ih.T + state[0] @ self.weight_hh.T
        return h, (h,)

    def weight_groups(self):
        return [Weight("input", self.weight_ih), Weight("recurrent", self.weight_hh)]


def linear_model(a: float, orthogonal: bool, hidden: int = 6) -> StackedRNN:
    torch.manual_seed(3)
    model = StackedRNN(Linear, 2, hidden, depth=1)
    # A signed permutation: orthogonal exactly in float32 too (a QR's Q is orthogonal to ~1e-7,
    # which over 1000 steps would move the norm by 1e-4).
    q = torch.eye(hidden)[torch.randperm(hidden)] * torch.tensor([1.0, -1.0]).repeat(hidden)[:hidden] if orthogonal else torch.eye(hidden)
    with torch.no_grad():
        model.layers[0].weight_hh.copy_(a * q)
    return model


@pytest.mark.parametrize("orthogonal", [False, True])
@pytest.mark.parametrize("a,T", [(0.5, 300), (0.5, 1000), (0.8, 120)])
def test_a_linear_recurrence_decays_exactly_as_a_to_the_k_in_float32_over_hundreds_of_decades(a, T, orthogonal):
    torch.set_default_dtype(torch.float32)  # the training precision, whose own gradient underflows
    model = linear_model(a, orthogonal)
    x, y = torch.randn(3, T, 2), torch.randn(3, 1)
    record = probed(model, x, y)
    log = record.log_dh[0, 0]
    assert np.isfinite(log).all() and record.unrepresentable == 0  # every step, none floored
    # ||A^T^k g|| = a^k ||g|| exactly (A = a Q, Q orthogonal): the float32 head's gradient g,
    # propagated without a rounding worth 1e-9 in log10.
    a32 = float(np.float32(a))  # what the float32 weights hold (0.8 is not exact)
    # Recomputed in float64 when float32 underflowed (1e-9); float32's own rounding otherwise
    # (~6e-8 relative a step, ~3e-8 in log10).
    tolerance = 1e-9 if record.float32_underflow else 3e-8 * T
    np.testing.assert_allclose(log - log[-1], np.log10(a32) * np.arange(T)[::-1], rtol=0, atol=tolerance)
    rate, r2 = decay_fit(log)
    assert rate == pytest.approx(np.log10(a32), abs=1e-8) and rate == pytest.approx(np.log10(a), abs=1e-6) and r2 == pytest.approx(1.0, abs=1e-9)
    decades = -np.log10(a) * (T - 1)
    assert record.float32_underflow == (decades > 38)  # float32's range: the training's own gradient lost it
    assert summary_metrics(record)["vanishing/l0"] == pytest.approx(-decades, abs=tolerance + 1e-6)  # negative: vanishing


def test_what_no_float64_scaling_can_hold_is_nan_and_counted_never_a_floor():
    torch.set_default_dtype(torch.float32)
    model = linear_model(1e-3, orthogonal=False)  # 3 decades a step: 900 over the window
    record = probed(model, torch.randn(2, 301, 2), torch.randn(2, 1))
    log = record.log_dh[0, 0]
    assert record.float32_underflow and record.unrepresentable > 0
    assert np.isnan(log[: record.unrepresentable]).all() and np.isfinite(log[record.unrepresentable :]).all()
    np.testing.assert_allclose(np.diff(log[np.isfinite(log)]), 3.0, atol=1e-9)  # exact where it is held
    assert log[np.isfinite(log)][0] < -600  # over 600 decades fit


def test_a_float32_tanh_rnn_over_300_steps_matches_the_float64_reference_at_every_step():
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(6)
    model = StackedRNN("rnn", 3, 16, depth=2)
    x, y = torch.randn(4, 300, 3), torch.randn(4, 1)
    record = probed(model, x, y)
    torch.set_default_dtype(torch.float64)
    reference = reference_dh(copy.deepcopy(model).double(), x.double(), y.double())
    assert record.float32_underflow and record.unrepresentable == 0
    assert (reference > 0).all() and reference.min() < 1e-45  # below float32's range, and no floor
    # The replay starts from the float32 run's inputs per layer and its head's gradient: ~1e-6 relative.
    np.testing.assert_allclose(record.log_dh[:, 0], np.log10(reference), atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "peephole", "transformer"])
def test_truncation_reads_minus_infinity_and_an_exact_zero_is_not_called_underflow(cell):
    torch.manual_seed(2)
    model = StackedRNN(cell, 3, 8, depth=2)
    record = probed(model, torch.randn(4, 12, 3), torch.randn(4, 1), truncation=5)
    assert (record.log_dh[:, 0, :7] == -np.inf).all()  # no gradient reaches before the window
    assert not record.float32_underflow and record.unrepresentable == 0
    top = record.log_dh[-1, 0, 7:]
    if cell == "transformer":  # no path through time: only the last output reaches the head
        assert (top[:-1] == -np.inf).all() and np.isfinite(top[-1])
    else:
        assert np.isfinite(top).all()


def test_the_batch_spread_is_the_10th_and_90th_percentile_of_the_per_sample_norms():
    torch.manual_seed(9)
    model = StackedRNN("gru", 3, 8, depth=2)
    x, y = torch.randn(20, 10, 3), torch.randn(20, 1)
    record = probed(model, x, y)
    per_sample = np.stack([reference_dh(model, x[i : i + 1], y[i : i + 1]) for i in range(20)])  # (B, layers, T)
    # mse over the batch is 1/B of the mean of per-sample losses: scale each back by 1/B
    logs = np.log10(per_sample / 20)
    np.testing.assert_allclose(record.log_dh_p10[:, 0], np.percentile(logs, 10, axis=0, method="nearest"), atol=1e-9)
    np.testing.assert_allclose(record.log_dh_p90[:, 0], np.percentile(logs, 90, axis=0, method="nearest"), atol=1e-9)
    assert (record.log_dh_p10 <= record.log_dh_p90).all()
    np.testing.assert_allclose(record.log_dh[:, 0], np.log10(per_sample.mean(0) / 20), atol=1e-9)


def test_decay_fit_is_the_least_squares_slope_against_distance_and_its_r2():
    t = np.arange(30)
    line = -0.25 * (29 - t) + 1.0
    assert decay_fit(line) == pytest.approx((-0.25, 1.0))
    noisy = line + np.random.default_rng(0).normal(0, 0.5, 30)
    slope, intercept = np.polyfit(29 - t, noisy, 1)
    r2 = 1 - np.sum((noisy - (slope * (29 - t) + intercept)) ** 2) / np.sum((noisy - noisy.mean()) ** 2)
    assert decay_fit(noisy) == pytest.approx((slope, r2), rel=1e-12)
    with_gaps = line.copy()
    with_gaps[:5], with_gaps[10] = -np.inf, np.nan  # before a truncation window; not kept
    assert decay_fit(with_gaps) == pytest.approx((-0.25, 1.0))
    assert all(math.isnan(v) for v in decay_fit(np.array([1.0, 2.0, np.nan])))


def test_a_checkpointed_record_from_before_log_norms_still_loads():
    old = {"step": 3, "dh": torch.tensor([[[0.0, 1e-3, 1.0]]]), "weight_norms": {}, "grad_norm": 1.0,
           "grad_norm_clipped": 1.0, "clipped": False, "spectral_radius": torch.tensor([0.9]),
           "max_singular": torch.tensor([1.1])}
    record = ProbeRecord.from_payload(old)
    np.testing.assert_array_equal(record.log_dh, [[[-np.inf, -3.0, 0.0]]])
    assert ProbeRecord.from_payload(record.payload()).log_dh.tolist() == record.log_dh.tolist()


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole", "indrnn", "transformer"])
def test_the_lag_shares_of_w_hh_sum_to_one_per_layer_and_direction_and_zero_before_the_window(cell):
    torch.manual_seed(4)
    model = StackedRNN(cell, 3, 8, depth=2, bidirectional=cell != "transformer")
    record = probed(model, torch.randn(4, 12, 3), torch.randn(4, 1), truncation=8)
    if cell == "transformer":  # no W_hh: not measured, and no key
        assert np.isnan(record.w_share).all() and "w_hh_mean_lag/l0" not in summary_metrics(record)
        return
    assert (record.w_share[:, :, :4] == 0).all()  # before the truncation window: no term
    np.testing.assert_allclose(record.w_share.sum(-1), 1.0, atol=1e-8)
    mean_lag = summary_metrics(record)["w_hh_mean_lag/l0"]
    assert mean_lag == pytest.approx((record.w_share[0, 0] * np.arange(12)[::-1]).sum())
    assert 0 <= mean_lag <= 7 or not (record.w_share[0, 0] >= 0).all()  # within the window when no share is negative


# ---------------------------------------------------------------- the Jacobian and Lyapunov exponents


def test_a_probe_measures_the_state_jacobian_along_the_truncation_windows_own_trajectory():
    from rnnlab import jacobians

    torch.manual_seed(7)
    model = StackedRNN("lstm", 3, 6, depth=2)
    x, y = torch.randn(4, 12, 3), torch.randn(4, 1)
    probe = Probe(every=1, jacobian_samples=2, jacobian_every=2)
    for step in (1, 2):
        out, _ = forward(model, x, None, False, 5, run=probe.scan)  # a window of 5, from the burn-in's state
        model.zero_grad()
        F.mse_loss(out, y).backward()
        probe.record(model, step, max_norm=math.inf, length=12)
    skipped, record = probe.records
    assert skipped.jacobian_log10_sigma is None  # step 1 is not a multiple of jacobian_every
    with torch.no_grad():
        _, state = model(x[:, :7])  # the state the window starts from
    expected = jacobians.jacobian_norms(model, x[:, 7:], samples=2, dtype=torch.float64, state=state)
    assert record.jacobian_log10_sigma.shape == (2, 2, 12) and np.isnan(record.jacobian_log10_sigma[..., :7]).all()
    np.testing.assert_allclose(record.jacobian_log10_sigma[..., 7:], np.log10(expected.top_singular), atol=1e-10)
    np.testing.assert_allclose(record.jacobian_log10_product, expected.log10_product, atol=1e-10)
    from_zero = jacobians.jacobian_norms(model, x[:, 7:], samples=2, dtype=torch.float64)
    assert not np.allclose(from_zero.log10_product, record.jacobian_log10_product, atol=1e-6)  # the state matters
    metrics = summary_metrics(record)
    assert metrics["jacobian_log10_sigma/l1"] == pytest.approx(np.nanmean(record.jacobian_log10_sigma[1]))
    assert metrics["jacobian_log10_product/l0"] == pytest.approx(record.jacobian_log10_product[0].mean())


def test_for_a_linear_recurrence_the_decay_rate_jacobian_and_top_lyapunov_exponent_agree():
    model = linear_model(0.7, orthogonal=True)
    probe = Probe(every=1, jacobian_samples=1, lyapunov_k=2, lyapunov_steps=200, lyapunov_warmup=20)
    out, _ = forward(model, torch.randn(8, 40, 2), None, False, 0, run=probe.scan)
    F.mse_loss(out, torch.randn(8, 1)).backward()
    metrics = summary_metrics(probe.record(model, 0, max_norm=math.inf))
    log10_a = math.log10(0.7)
    assert metrics["decay_rate/l0"] == pytest.approx(log10_a, abs=1e-9)
    assert metrics["jacobian_log10_sigma/l0"] == pytest.approx(log10_a, abs=1e-9)
    assert metrics["jacobian_log10_product/l0"] == pytest.approx(40 * log10_a, abs=1e-8)
    assert metrics["lyapunov/l0/1"] / math.log(10) == pytest.approx(log10_a, abs=1e-9)
    assert metrics["lyapunov/l0/2"] == pytest.approx(math.log(0.7), abs=1e-9)  # every direction: a Q is normal
