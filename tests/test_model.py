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
