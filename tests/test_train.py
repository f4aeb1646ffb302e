"""The training loop: truncated BPTT semantics, determinism, early stopping, clipping."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from rnnlab.config import TrainConfig
from rnnlab.data import generate_weather, make_windows
from rnnlab.model import StackedRNN
from rnnlab.train import evaluate, forward_truncated, train


@pytest.fixture(scope="module")
def data():
    return make_windows(generate_weather(0.15, seed=0), lookback=24)


def small_model(seed=0, cell="lstm"):
    torch.manual_seed(seed)
    return StackedRNN(cell, 10, 8, depth=2)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_gradients_reach_back_exactly_k_steps(cell, k):
    torch.manual_seed(0)
    model = StackedRNN(cell, 3, 6, depth=2).double()
    x = torch.randn(4, 20, 3, dtype=torch.float64, requires_grad=True)
    forward_truncated(model, x, k).sum().backward()
    per_step = x.grad.abs().sum(dim=(0, 2))  # (T,)
    assert torch.all(per_step[: 20 - k] == 0)  # older than k steps: exactly zero
    assert torch.all(per_step[20 - k :] > 0)  # within k steps: non-zero


def test_truncation_changes_gradients_not_outputs():
    torch.manual_seed(0)
    model = StackedRNN("lstm", 3, 6, depth=2).double()
    x = torch.randn(4, 20, 3, dtype=torch.float64, requires_grad=True)
    full = forward_truncated(model, x, 0)
    assert torch.equal(forward_truncated(model, x, 7), full) or torch.allclose(forward_truncated(model, x, 7), full, atol=1e-14)
    full.sum().backward()
    assert torch.all(x.grad.abs().sum(dim=(0, 2)) > 0)  # full BPTT: every step gets gradient
    assert torch.equal(forward_truncated(model, x, 20), full)  # k = L is full BPTT


def test_two_runs_with_one_seed_are_identical(data):
    cfg = TrainConfig(epochs=2, steps_per_epoch=15, batch_size=32)
    a = train(small_model(seed=1), data, cfg, truncation=10, seed=3)
    b = train(small_model(seed=1), data, cfg, truncation=10, seed=3)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    c = train(small_model(seed=1), data, cfg, truncation=10, seed=4)  # another batch order
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


@pytest.mark.slow
def test_training_learns_and_logs_every_epoch():
    data = make_windows(generate_weather(1.0, seed=0), lookback=24)  # a year: val is not a new season
    logged = []
    untrained = evaluate(small_model(), data, "val", 1024, torch.device("cpu"))
    result = train(small_model(), data, TrainConfig(epochs=3, lr=5e-3, batch_size=32, steps_per_epoch=80),
                   log=lambda metrics, step: logged.append((step, metrics)))
    assert [step for step, _ in logged] == [80, 160, 240]  # the optimiser step: one axis with the probe's
    assert set(logged[0][1]) == {"train_loss", "val_loss", "grad_norm", "clip_rate", "nonfinite_skips", "lr", "epoch_seconds",
                                 "optimizer_steps"}
    assert [m["optimizer_steps"] for _, m in logged] == [80, 160, 240]
    assert logged[-1][1]["train_loss"] < logged[0][1]["train_loss"]
    assert result.best_val_loss < 0.2 * untrained


@pytest.mark.slow
def test_early_stopping_restores_the_best_weights(data):
    # A learning rate this high makes the validation loss erratic: stopping must keep the best.
    cfg = TrainConfig(epochs=8, patience=2, steps_per_epoch=10, batch_size=32, lr=0.5, clip=0)
    model = small_model(seed=2)
    result = train(model, data, cfg)
    vals = [h["val_loss"] for h in result.history]
    assert result.best_val_loss == min(vals) and vals[result.best_epoch - 1] == min(vals)
    assert result.epochs_run == len(vals) and (result.epochs_run == 8 or result.epochs_run - result.best_epoch == 2)
    assert evaluate(model, data, "val", 1024, torch.device("cpu")) == pytest.approx(result.best_val_loss, rel=1e-6)


def test_clipping_fires_and_reports_the_norm_before_clipping(data):
    cfg = TrainConfig(epochs=1, steps_per_epoch=5, batch_size=32, clip=1e-6)
    result = train(small_model(), data, cfg)
    assert result.history[0]["clip_rate"] == 1.0 and result.history[0]["grad_norm"] > 1e-6
    off = train(small_model(), data, dataclasses.replace(cfg, clip=0.0))
    assert off.history[0]["clip_rate"] == 0.0


@pytest.mark.slow
def test_sgd_with_momentum_trains(data):
    cfg = TrainConfig(epochs=2, steps_per_epoch=20, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9)
    result = train(small_model(), data, cfg)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5
    assert np.isfinite(result.best_val_loss)


def test_rmsprop_is_arjovsky_et_als_update_decay_0_9_without_momentum():
    from rnnlab.train import make_optimizer

    model = torch.nn.Linear(3, 1, bias=False).double()
    theta = model.weight.detach().clone().reshape(-1)
    cfg = TrainConfig(optimizer="rmsprop", lr=1e-3, momentum=0.9)  # momentum is SGD's: not applied
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    r = torch.zeros(3, dtype=torch.float64)
    for c in ([0.5, -2.0, 3.0], [1.0, 1.0, -0.25]):  # loss = c . w: the gradient is c
        g = torch.tensor(c, dtype=torch.float64)
        optimizer.zero_grad()
        (model.weight.reshape(-1) @ g).backward()
        optimizer.step()
        r = 0.9 * r + 0.1 * g**2  # the float64 reference
        theta = theta - 1e-3 * g / (r.sqrt() + 1e-8)
        torch.testing.assert_close(model.weight.detach().reshape(-1), theta, rtol=0, atol=1e-15)


def test_rmsprop_trains(data):
    cfg = TrainConfig(epochs=2, steps_per_epoch=20, batch_size=32, optimizer="rmsprop", lr=1e-3)
    result = train(small_model(), data, cfg)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("poison,what", [(float("nan"), "loss"), (float("inf"), "loss")])
def test_a_non_finite_loss_stops_training_on_its_step_with_weights_untouched(data, poison, what):
    from rnnlab.train import NonFiniteError

    model = small_model()
    model.head.bias.data.fill_(poison)  # every prediction, so the loss, is poisoned
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=f"non-finite {what} at step 1 \\(epoch 1\\)") as info:
        train(model, data, TrainConfig(epochs=1, steps_per_epoch=5, batch_size=8))
    assert info.value.step == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or not torch.isfinite(before[k]).all() for k in before)


# ----------------------------------------------------------------------------- resume


def _params_hash(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _run_with_stops(data, stops: list[int], tmp_path, corrupt=None, probes=None):
    """Train, stopping after each global step in ``stops``, saving, reloading from disk
    (weights_only) and resuming in a freshly built model; ``corrupt`` damages the saved state.
    ``probes``: a list that receives the gradient probe's records (probing every 4 steps)."""
    from rnnlab import checkpoint
    from rnnlab.probe import Probe
    from rnnlab.train import Interrupted, TrainState

    cfg = TrainConfig(epochs=3, steps_per_epoch=12, batch_size=32, lr=5e-3)
    counter = {"steps": 0}
    pending = list(stops)

    def stop_requested():
        counter["steps"] += 1
        return bool(pending) and counter["steps"] == pending[0]

    state = None
    path = tmp_path / "checkpoint.pt"
    while True:
        torch.manual_seed(99)  # a different init: the weights must come from the checkpoint
        model = StackedRNN("lstm", 10, 8, depth=2, dropout=0.3)
        if state is None:
            torch.manual_seed(1)
            model = StackedRNN("lstm", 10, 8, depth=2, dropout=0.3)
        probe = Probe(every=4) if probes is not None else None  # a new process knows no earlier probes
        try:
            result = train(model, data, cfg, truncation=10, seed=3, resume=state, probe=probe,
                           save=lambda s: checkpoint.save(s.payload(), path), stop_requested=stop_requested)
            if probe is not None:
                probes.extend(probe.records)
            return result, model
        except Interrupted:
            pending.pop(0)
            state = TrainState.from_payload(checkpoint.load(path))
            counter["steps"] = state.step
            if corrupt:
                corrupt(state)


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(data, tmp_path):
    straight, model = _run_with_stops(data, [], tmp_path)
    once, model_once = _run_with_stops(data, [17], tmp_path)  # mid-epoch 2
    twice, model_twice = _run_with_stops(data, [5, 12], tmp_path)  # mid-epoch 1, then at its very end
    for other, other_model in [(once, model_once), (twice, model_twice)]:
        assert [h["train_loss"].hex() for h in other.history] == [h["train_loss"].hex() for h in straight.history]
        assert [h["val_loss"].hex() for h in other.history] == [h["val_loss"].hex() for h in straight.history]
        assert other.best_val_loss.hex() == straight.best_val_loss.hex() and other.steps == straight.steps
        assert _params_hash(other_model) == _params_hash(model)


def test_a_resumed_run_keeps_the_probe_records_made_before_it_stopped(data, tmp_path):
    straight, resumed = [], []
    _run_with_stops(data, [], tmp_path, probes=straight)
    _run_with_stops(data, [7, 17], tmp_path, probes=resumed)
    assert [r.step for r in straight] == [0, 4, 8, 12, 16, 20, 24, 28, 32]  # step 0: the initial weights
    assert [r.step for r in resumed] == [r.step for r in straight]
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a.dh, b.dh)
        assert a.weight_norms == b.weight_norms and a.grad_norm == b.grad_norm


@pytest.mark.parametrize("skip", ["data_rng", "torch_rng"])
def test_negative_control_resume_without_restoring_an_rng_diverges(data, tmp_path, skip):
    straight, model = _run_with_stops(data, [], tmp_path)

    def corrupt(state):
        if skip == "data_rng":
            state.data_rng = np.random.default_rng(12345).bit_generator.state
        else:
            state.torch_rng = torch.Generator().manual_seed(12345).get_state()

    resumed, other = _run_with_stops(data, [17], tmp_path, corrupt=corrupt)
    assert _params_hash(other) != _params_hash(model)
    assert [h["train_loss"] for h in resumed.history] != [h["train_loss"] for h in straight.history]


def test_skip_policy_skips_non_finite_steps_and_counts_them(data):
    model = small_model()
    model.head.bias.data.fill_(float("nan"))
    result = train(model, data, TrainConfig(epochs=1, steps_per_epoch=5, batch_size=8, on_nonfinite="skip"))
    assert result.history[0]["nonfinite_skips"] == 5 and result.steps == 5


# ------------------------------------------------------------------- tasks other than forecasts


def test_a_stream_carries_its_state_across_chunks_and_cuts_the_graph():
    from rnnlab.train import detached, forward

    torch.manual_seed(0)
    model = StackedRNN("lstm", 5, 6, depth=2, output_size=5, many_to_many=True).double()
    x = torch.randn(3, 12, 5, dtype=torch.float64, requires_grad=True)
    whole, _ = model(x)
    first, state = forward(model, x[:, :6], None, True, 0)
    second, _ = forward(model, x[:, 6:], detached(state), True, 0)  # as train's loop does between chunks
    torch.testing.assert_close(torch.cat([first, second], 1), whole)  # the values are carried
    second.sum().backward()
    assert torch.all(x.grad[:, :6] == 0) and torch.all(x.grad[:, 6:].abs().sum(-1) > 0)  # the graph is cut


def test_classification_and_tolerance_metrics_follow_the_task(tmp_path):
    from rnnlab.data.adding import adding_hs
    from rnnlab.data.digits import digits
    from rnnlab.data.text import char_lm
    from rnnlab.train import score

    cpu = torch.device("cpu")
    data = digits(read="row")
    torch.manual_seed(0)
    model = StackedRNN("gru", 8, 16, output_size=10)
    result = train(model, data, TrainConfig(epochs=3, batch_size=32, lr=1e-2, steps_per_epoch=30))
    scores = score(model, data, "test", 256, cpu)
    assert set(scores) == {"loss", "accuracy"} and scores["accuracy"] > 0.3  # chance is 0.1
    assert scores["loss"] < np.log(10) and result.best_val_loss < np.log(10)

    hs = adding_hs(length=20, n_train=64, n_val=32, n_test=40)
    scores = score(StackedRNN("lstm", 2, 4), hs, "test", 16, cpu)
    assert set(scores) == {"loss", "wrong"} and 0 <= scores["wrong"] <= 40

    (tmp_path / "t.txt").write_text("abcd" * 300)
    text = char_lm(str(tmp_path / "t.txt"), length=10)
    model = StackedRNN("lstm", 4, 16, output_size=4, many_to_many=True)
    train(model, text, TrainConfig(epochs=4, batch_size=8, lr=2e-2, patience=0))
    scores = score(model, text, "test", 8, cpu)
    assert scores["bpc"] == pytest.approx(scores["loss"] / np.log(2)) and scores["accuracy"] > 0.9  # abcd is predictable


def test_a_stream_resumed_mid_epoch_continues_its_carried_state(tmp_path):
    from rnnlab import checkpoint
    from rnnlab.data.text import char_lm
    from rnnlab.train import Interrupted, TrainState

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    text = char_lm(str(tmp_path / "t.txt"), length=10)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, patience=0)

    def build():
        torch.manual_seed(5)
        return StackedRNN("gru", text.n_features, 12, output_size=text.task.n_outputs, many_to_many=True)

    straight_model = build()
    straight = train(straight_model, text, cfg, seed=1)
    path, calls = tmp_path / "c.pt", {"n": 0}

    def stop_at_7():
        calls["n"] += 1
        return calls["n"] == 7

    model = build()
    with pytest.raises(Interrupted):
        train(model, text, cfg, seed=1, save=lambda s: checkpoint.save(s.payload(), path), stop_requested=stop_at_7)
    state = TrainState.from_payload(checkpoint.load(path))
    assert state.carried is not None and state.batch == 7  # mid-epoch, streams in flight
    resumed_model = build()
    resumed = train(resumed_model, text, cfg, seed=1, resume=state)
    assert [h["train_loss"].hex() for h in resumed.history] == [h["train_loss"].hex() for h in straight.history]
    assert _params_hash(resumed_model) == _params_hash(straight_model)
    state.carried = None  # negative control: restarting the streams from zeros is not the same run
    other = train(build(), text, cfg, seed=1, resume=state)
    assert [h["train_loss"] for h in other.history] != [h["train_loss"] for h in straight.history]


# ------------------------------------------------- truncated BPTT inside a many-to-many sequence


class Float64:
    """A dataset's batches in float64 (its buffers are float32; train() takes either)."""

    def __init__(self, data):
        self.data, self.task = data, data.task

    def n_batches(self, split, batch_size):
        return self.data.n_batches(split, batch_size)

    def batches(self, split, batch_size, rng=None, pin=False):
        for x, y in self.data.batches(split, batch_size, rng, pin):
            yield x.double(), y


def copy_model(seed=0, cell="lstm"):
    torch.manual_seed(seed)
    return StackedRNN(cell, 10, 6, depth=2, output_size=10, many_to_many=True)


@pytest.mark.parametrize("cell", ["lstm", "peephole"])  # a fused kernel and a hand-written backward
def test_each_chunk_of_a_copy_sequence_gets_the_gradient_of_its_own_loss_from_the_carried_state(cell):
    """Truncated BPTT (docs/maths.md), checked step by step against a computation by hand: chunk j's
    gradient is that of its own loss, at the weights of that step, from the state the previous
    chunk ended with (its true forward value, detached), so nothing crosses a chunk boundary."""
    import torch.nn.functional as F

    from rnnlab.data.copy_memory import copy_memory

    data = Float64(copy_memory(length=5, n_train=8, n_val=4, n_test=4))  # sequences of 25 steps
    k, B = 10, 8  # chunks of 10, 10 and 5 steps
    model = copy_model(cell=cell).double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    seen = []  # per backward, per parameter: (its gradient, its value at that step)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.register_hook(lambda g, name=name, p=p: seen.append((name, g.clone(), p.detach().clone())))
    result = train(model, data, TrainConfig(epochs=1, batch_size=B, lr=0.05, patience=0), truncation=k, seed=3)
    assert result.steps == 3
    steps = [dict((n, (g, w)) for n, g, w in seen[i : i + len(names)]) for i in range(0, len(seen), len(names))]

    x, y = next(data.batches("train", B, np.random.default_rng(3)))  # the batch train() drew
    reference = copy_model(cell=cell).double()
    params = dict(reference.named_parameters())
    state = None  # a sequence starts from zeros
    for j, t in enumerate(range(0, 25, k)):
        with torch.no_grad():
            for name in names:
                params[name].copy_(steps[j][name][1])  # the weights as they were at step j
        out, new_state = reference(x[:, t : t + k], state)
        loss = F.cross_entropy(out.reshape(-1, 10), y[:, t : t + k].reshape(-1))
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for name, g in zip(names, grads):
            torch.testing.assert_close(steps[j][name][0], g, rtol=0, atol=1e-10)
        if j == 1:  # negative control: from a zero state instead of the carried one, it differs
            out0, _ = reference(x[:, t : t + k])
            g0 = torch.autograd.grad(F.cross_entropy(out0.reshape(-1, 10), y[:, t : t + k].reshape(-1)), params[names[0]])[0]
            assert (g0 - steps[j][names[0]][0]).abs().max() > 1e-6
        state = [tuple(s.detach() for s in layer) for layer in new_state]


@pytest.mark.parametrize("k,per_batch", [(0, 1), (1, 25), (7, 4), (24, 2), (25, 1)])
def test_a_copy_batch_makes_ceil_length_over_k_optimiser_steps(k, per_batch):
    from rnnlab.data.copy_memory import copy_memory

    data = copy_memory(length=5, n_train=32, n_val=8, n_test=8)
    logged = []
    result = train(copy_model(), data, TrainConfig(epochs=1, batch_size=8, steps_per_epoch=2), truncation=k,
                   log=lambda metrics, step: logged.append(metrics))
    assert per_batch == (math.ceil(25 / k) if k else 1)
    assert result.steps == 2 * per_batch  # steps_per_epoch caps batches; each makes ceil(L/k) steps
    assert all(np.isfinite(m["train_loss"]) and 0 <= m["clip_rate"] <= 1 for m in logged)


def test_copy_with_truncation_zero_or_the_whole_sequence_is_full_bptt_bit_for_bit():
    from rnnlab.data.copy_memory import copy_memory

    data = copy_memory(length=5, n_train=32, n_val=8, n_test=8)
    cfg = TrainConfig(epochs=2, batch_size=8, steps_per_epoch=3)
    runs = [train(copy_model(seed=1), data, cfg, truncation=k, seed=2) for k in (0, 25, 10)]
    full, whole, cut = ([h["train_loss"].hex() for h in r.history] for r in runs)
    assert full == whole  # one chunk of L steps from a zero state: the same computation
    assert cut != full


def test_a_copy_run_stopped_between_batches_resumes_bit_identically(tmp_path):
    """Stops are taken at batch boundaries (never between two chunks of one sequence)."""
    from rnnlab import checkpoint
    from rnnlab.data.copy_memory import copy_memory
    from rnnlab.train import Interrupted, TrainState

    data = copy_memory(length=5, n_train=32, n_val=8, n_test=8)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
    straight_model = copy_model(seed=4)
    straight = train(straight_model, data, cfg, truncation=10, seed=1)
    path, calls = tmp_path / "c.pt", {"n": 0}

    def stop_at_batch_6():
        calls["n"] += 1
        return calls["n"] == 6  # polled once per batch: epoch 2, batch 2

    with pytest.raises(Interrupted, match="stopped at step 18 "):
        train(copy_model(seed=4), data, cfg, truncation=10, seed=1,
              save=lambda s: checkpoint.save(s.payload(), path), stop_requested=stop_at_batch_6)
    state = TrainState.from_payload(checkpoint.load(path))
    assert (state.epoch, state.batch, state.step, state.carried) == (2, 2, 18, None)
    resumed_model = copy_model(seed=9)
    resumed = train(resumed_model, data, cfg, truncation=10, seed=1, resume=state)
    assert [h["train_loss"].hex() for h in resumed.history] == [h["train_loss"].hex() for h in straight.history]
    assert resumed.steps == straight.steps == 24 and _params_hash(resumed_model) == _params_hash(straight_model)


def test_a_run_resumes_from_an_end_of_epoch_checkpoint(data):
    """The checkpoint a killed run leaves behind is the last epoch's end (no running sums)."""
    cfg = TrainConfig(epochs=2, steps_per_epoch=4, batch_size=32)
    saved = []
    straight = train(small_model(seed=1), data, cfg, seed=3, save=lambda s: saved.append(copy.deepcopy(s)))
    resumed = train(small_model(seed=7), data, cfg, seed=3, resume=saved[0])
    assert saved[0].batch == 0 and saved[0].sums == {}
    assert [h["train_loss"].hex() for h in resumed.history] == [h["train_loss"].hex() for h in straight.history]


def test_the_probe_at_step_0_sees_the_initial_weights_and_at_lists_more_steps(data):
    from rnnlab.probe import Probe

    model = small_model(seed=2)
    initial = copy.deepcopy(model.state_dict())
    seen: dict[int, bool] = {}

    def on_probe(record):  # before this step's update: the weights of `record.step` updates
        seen[record.step] = all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())

    probe = Probe(every=10, at=(0, 3, 25))
    train(model, data, TrainConfig(epochs=1, steps_per_epoch=30, batch_size=32), seed=3, probe=probe, on_probe=on_probe)
    assert [r.step for r in probe.records] == [0, 3, 10, 20, 25]
    assert seen == {0: True, 3: False, 10: False, 20: False, 25: False}


# ------------------------------------------------------------------------------- train.steps


def _counting_optimiser_steps():
    """Every optimiser.step() any optimiser makes, counted by torch's global post-step hook."""
    counted = {"n": 0}
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda *_: counted.update(n=counted["n"] + 1))
    return counted, handle


@pytest.mark.parametrize("steps,per_epoch,epochs", [(10, 4, 3), (4, 4, 1), (1, 4, 1)])
def test_train_steps_makes_exactly_that_many_optimiser_steps_whatever_epochs_says(data, steps, per_epoch, epochs):
    counted, handle = _counting_optimiser_steps()
    try:  # epochs=1 would stop at 4 steps: train.steps replaces it as the budget
        result = train(small_model(), data, TrainConfig(epochs=1, steps=steps, steps_per_epoch=per_epoch, patience=0,
                                                        batch_size=32))
    finally:
        handle.remove()
    assert counted["n"] == result.steps == steps
    assert result.epochs_run == len(result.history) == epochs  # 4 + 4 + 2: the last epoch cut short


def test_train_steps_can_end_a_copy_run_between_two_chunks_of_one_batch():
    from rnnlab.data.copy_memory import copy_memory

    data = copy_memory(length=5, n_train=32, n_val=8, n_test=8)  # 25 steps a sequence: 4 chunks of 7
    counted, handle = _counting_optimiser_steps()
    try:
        result = train(copy_model(), data, TrainConfig(steps=10, batch_size=8, steps_per_epoch=2, patience=0), truncation=7)
    finally:
        handle.remove()
    assert counted["n"] == result.steps == 10 and result.epochs_run == 2  # 8 steps, then 2 chunks of a batch


def test_train_steps_with_early_stopping_can_end_sooner(data):
    # lr 0.5 makes the validation loss erratic: with patience 1 the run stops before its 40 steps.
    result = train(small_model(seed=2), data, TrainConfig(steps=40, steps_per_epoch=2, patience=1, lr=0.5, clip=0,
                                                          batch_size=32))
    assert result.steps < 40 and result.steps == 2 * result.epochs_run


def test_a_fresh_data_run_resumed_mid_epoch_is_bit_identical_and_sees_new_batches(tmp_path):
    """Fresh batches come from the run's data generator, which a checkpoint restores as it was
    when the epoch began: the resumed run draws the same batches it would have."""
    from rnnlab import checkpoint
    from rnnlab.data.adding import adding
    from rnnlab.train import Interrupted, TrainState

    data = adding(length=12, n_train=64, n_val=16, n_test=16, fresh=True)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, patience=0)

    def model(seed):
        torch.manual_seed(seed)
        return StackedRNN("gru", 2, 6)

    straight_model = model(4)
    straight = train(straight_model, data, cfg, seed=1)
    fixed = train(model(4), dataclasses.replace(data, draw=None), cfg, seed=1)  # the same run on the fixed split
    assert [h["train_loss"] for h in fixed.history] != [h["train_loss"] for h in straight.history]
    path, calls = tmp_path / "c.pt", {"n": 0}

    def stop_at_batch_6():
        calls["n"] += 1
        return calls["n"] == 6  # epoch 2, batch 2

    with pytest.raises(Interrupted, match="stopped at step 6 "):
        train(model(4), data, cfg, seed=1, save=lambda s: checkpoint.save(s.payload(), path), stop_requested=stop_at_batch_6)
    resumed_model = model(9)
    resumed = train(resumed_model, data, cfg, seed=1, resume=TrainState.from_payload(checkpoint.load(path)))
    assert [h["train_loss"].hex() for h in resumed.history] == [h["train_loss"].hex() for h in straight.history]
    assert resumed.steps == straight.steps == 12 and _params_hash(resumed_model) == _params_hash(straight_model)
