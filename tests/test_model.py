from __future__ import annotations

import pytest
import torch

from rnnlab.model import StackedRNN, count_parameters

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_stack_is_layers_reading_layers_plus_a_head_on_the_last_step(cell):
    torch.manual_seed(0)
    model = StackedRNN(cell, input_size=3, hidden_size=5, depth=3, output_size=2)
    x = torch.randn(4, 7, 3)
    y, state = model(x)
    h = x
    for layer in model.layers:  # by hand: layer l reads layer l-1's outputs, zero initial state
        h, _ = layer.scan(h, layer.init_state(4, x))
    assert y.shape == (4, 2) and len(state) == 3
    assert torch.allclose(y, model.head(h[:, -1]), atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carrying_state_across_chunks_equals_one_pass(cell):
    torch.manual_seed(1)
    model = StackedRNN(cell, 3, 5, depth=2)
    x = torch.randn(2, 10, 3)
    y_full, state_full = model(x)
    _, state = model(x[:, :6])
    y_chunked, state_chunked = model(x[:, 6:], state)
    assert torch.allclose(y_full, y_chunked, atol=1e-12)
    for a, b in zip(state_full, state_chunked):
        assert all(torch.allclose(s, t, atol=1e-12) for s, t in zip(a, b))


def test_step_path_equals_fused_path_for_the_stack():
    torch.manual_seed(2)
    model = StackedRNN("lstm", 3, 5, depth=3)
    x = torch.randn(2, 8, 3)
    assert torch.allclose(model(x)[0], model(x, step_path=True)[0], atol=1e-12)


def test_dropout_acts_between_layers_in_training_only():
    torch.manual_seed(3)
    model = StackedRNN("gru", 3, 16, depth=2, dropout=0.5)
    x = torch.randn(4, 6, 3)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
    single = StackedRNN("gru", 3, 16, depth=1, dropout=0.5).train()  # no layer above: no dropout
    assert torch.equal(single(x)[0], single(x)[0])


def test_parameter_count_sums_layers_and_head():
    model = StackedRNN("lstm", 10, 64, depth=4)
    layer = lambda i: 4 * ((i + 64) * 64 + 64)
    assert count_parameters(model) == layer(10) + 3 * layer(64) + 64 + 1


def test_many_to_many_head_reads_every_step_and_its_last_step_is_many_to_one():
    torch.manual_seed(4)
    many = StackedRNN("lstm", 3, 5, depth=2, output_size=4, many_to_many=True)
    one = StackedRNN("lstm", 3, 5, depth=2, output_size=4)
    one.load_state_dict(many.state_dict())
    x = torch.randn(2, 9, 3)
    y_all, _ = many(x)
    assert y_all.shape == (2, 9, 4)
    assert torch.allclose(y_all[:, -1], one(x)[0], atol=1e-12)
    _, state = many(x[:, :4])  # step t's output does not depend on later inputs (causal)
    assert torch.allclose(y_all[:, 4:], many(x[:, 4:], state)[0], atol=1e-12)


# ----------------------------------------------------------------- every cell, both directions

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from rnnlab.cells import CELLS  # noqa: E402
from rnnlab.model import fit_readout  # noqa: E402

SMALL = {"transformer": {"heads": 2}, "esn": {"density": 0.5}}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_stacks_and_carries_state_across_chunks(cell):
    torch.manual_seed(5)
    model = StackedRNN(cell, 3, 6, depth=2, **SMALL.get(cell, {}))
    x = torch.randn(2, 9, 3)
    y_full, _ = model(x)
    _, state = model(x[:, :4])
    assert torch.allclose(y_full, model(x[:, 4:], state)[0], atol=1e-10)
    assert torch.allclose(y_full, model(x, step_path=True)[0], atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "peephole", "transformer"])
def test_bidirectional_layer_concatenates_a_forward_and_a_time_reversed_pass(cell):
    torch.manual_seed(6)
    model = StackedRNN(cell, 3, 4, depth=2, output_size=2, bidirectional=True, **SMALL.get(cell, {}))
    x = torch.randn(2, 7, 3)
    y, state = model(x)
    h = x
    for fwd, bwd in zip(model.layers, model.backward_layers):  # by hand, reversing with index lists
        out_f, _ = fwd.scan(h, fwd.init_state(2, x))
        out_b, _ = bwd.scan(h[:, list(range(6, -1, -1))], bwd.init_state(2, x))
        h = torch.cat([out_f, out_b[:, list(range(6, -1, -1))]], 2)  # (B, T, 2H)
    assert h.shape == (2, 7, 8) and len(state) == 2
    assert torch.allclose(y, model.head(torch.cat([h[:, -1, :4], h[:, 0, 4:]], 1)), atol=1e-12)
    x2 = x.clone()
    x2[:, -1] += 1.0  # the last input reaches the backward direction's output at t = 0
    assert not torch.allclose(model.features(x)[0][:, 4:], model.features(x2)[0][:, 4:])


def test_bidirectional_many_to_many_is_refused():
    with pytest.raises(ValueError, match="bidirectional=true on a task that predicts every step causally"):
        StackedRNN("lstm", 3, 4, many_to_many=True, bidirectional=True)


def test_unknown_cell_is_a_one_line_value_error():
    with pytest.raises(ValueError, match=r"cell.name='lstmm' is not a cell \(allowed: rnn, lstm"):
        StackedRNN("lstmm", 3, 4)


@pytest.mark.parametrize("many_to_many", [False, True])
def test_fit_readout_solves_the_ridge_system_like_numpy(many_to_many):
    torch.manual_seed(7)
    model = StackedRNN("esn", 2, 20, depth=2, output_size=3, many_to_many=many_to_many)
    batches = [(torch.randn(8, 10, 2), torch.randn(8, 10, 3) if many_to_many else torch.randn(8, 3)) for _ in range(3)]
    fit_readout(model, batches, ridge=0.5)
    with torch.no_grad():
        phi = np.concatenate([model.features(x)[0].reshape(-1, 20).numpy() for x, _ in batches])
    y = np.concatenate([t.reshape(-1, 3).numpy() for _, t in batches])
    # ridge as least squares on [phi 1; sqrt(ridge) I 0] (bias unpenalised)
    a = np.vstack([np.hstack([phi, np.ones((len(phi), 1))]), np.hstack([np.sqrt(0.5) * np.eye(20), np.zeros((20, 1))])])
    b = np.vstack([y, np.zeros((20, 3))])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    assert np.allclose(model.head.weight.detach().numpy(), w[:-1].T, atol=1e-8)
    assert np.allclose(model.head.bias.detach().numpy(), w[-1], atol=1e-8)


def test_esn_gradient_readout_trains_only_the_head():
    model = StackedRNN("esn", 2, 10, depth=2, readout="gradient")
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_rnnlab_exports_the_model_and_cells_without_importing_torch_early():
    code = (
        "import sys, rnnlab; assert 'torch' not in sys.modules, 'torch imported by import rnnlab';"
        "from rnnlab import StackedRNN, CELLS; import rnnlab.model, rnnlab.cells;"
        "assert StackedRNN is rnnlab.model.StackedRNN and CELLS is rnnlab.cells.CELLS"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
