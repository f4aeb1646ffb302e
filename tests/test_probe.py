"""The probe measures the right thing: ||dL/dh^l_t|| equals an independent autograd.grad
reference (float64, 1e-10), on every path, for every cell and depth > 1, with truncation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnlab.cells import CELLS
from rnnlab.model import StackedRNN
from rnnlab.probe import Probe, spectra, summary_metrics, weight_norms
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


@pytest.mark.parametrize("cell", RECURRENT)
def test_captured_norms_equal_the_autograd_reference_for_every_cell(cell):
    torch.manual_seed(0)
    model = StackedRNN(cell, 3, 8, depth=3)
    x, y = torch.randn(5, 9, 3), torch.randn(5, 1)
    record = probed(model, x, y)
    np.testing.assert_allclose(record.dh[:, 0], reference_dh(model, x, y), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_coarser_resolution_keeps_every_kth_step_back_from_the_last_and_truncation_zeroes_the_rest(cell):
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
    assert "spectral_radius/l0" not in summary_metrics(probe.records[0])
    assert summary_metrics(probe.records[2])["spectral_radius/l0"] == pytest.approx(spectra(model)[0][0])


def test_summary_metrics_are_few_and_per_layer():
    torch.manual_seed(5)
    model = StackedRNN("gru", 3, 6, depth=2)
    record = probed(model, torch.randn(4, 8, 3), torch.randn(4, 1))
    metrics = summary_metrics(record)
    assert len(metrics) <= 2 + (6 + 3) * 2  # per layer: 6 summaries and the recurrent norm of each of 3 gates
    assert metrics["vanishing/l0"] == pytest.approx(np.log10(record.dh[0, 0, 0] / record.dh[0, 0, -1]))


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_both_directions_of_a_bidirectional_stack_equal_the_autograd_reference(cell):
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
