"""train() and evaluate(): one loop, truncated BPTT visible in it.

Logging, progress and epoch-end hooks are plain callables passed in, so this module knows
nothing of MLflow, Optuna or Hydra. A pruning hook (Optuna) raises from ``on_epoch_end`` and
simply unwinds ``train``.

The data declares its task (``data.task``), and the loss and the metrics follow from it.
Regression: the mean squared error over the batch, *without* the spec's ½ (CELLS.md writes
L = Σ_t ½(ŷ_t - y_t)²). The ½ only rescales gradients by 2, and the plain mean is what the
baselines, the reports and every other tool call "MSE". Classification: the cross-entropy in
nats, averaged over every prediction (every step for many-to-many tasks).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import State
from rnnlab.model import fit_readout
from rnnlab.config import TrainConfig
from rnnlab.probe import Probe, ProbeRecord
from rnnlab.data import Sequences, Stream, Task, Windows

Data = Windows | Sequences | Stream

Log = Callable[[dict[str, float], int], None]  # (metrics, step)
Progress = Callable[[int, int, int, float, float | None], None]  # epoch, batch, n_batches, loss, val


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; says what and at which step."""

    def __init__(self, what: str, step: int, epoch: int) -> None:
        super().__init__(f"non-finite {what} at step {step} (epoch {epoch})")
        self.what, self.step, self.epoch = what, step, epoch


@dataclass
class TrainResult:
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def forward_truncated(model: nn.Module, x: Tensor, truncation: int) -> Tensor:
    """Forward a many-to-one window so that gradients reach back at most ``truncation`` steps.

        x:  | t = 1 ............ L-k | L-k+1 ........ L |  -> ŷ, loss
            |  burn-in: no graph     |  k steps: BPTT   |
                                 state ─┘ (carried, cut from the graph)

    The burn-in runs without autograd, so its outputs are the same as a full forward but no
    gradient flows into steps older than k; the loss sits at the last step only, so this is
    the spec's "forward k steps, backpropagate k steps" with chunks aligned to the window's
    end. ``truncation`` = 0 (or >= L) is full BPTT.
    """
    k = truncation
    if k == 0 or k >= x.size(1):
        return model(x)[0]
    with torch.no_grad():
        _, state = model(x[:, :-k])
    return model(x[:, -k:], state)[0]


def forward(
    model: nn.Module, x: Tensor, state: list[State] | None, carry: bool, truncation: int
) -> tuple[Tensor, list[State] | None]:
    """One forward of a batch or of a chunk of one. With ``carry`` (a stream, or a chunk of a
    many-to-many sequence) it continues from the state the previous chunk ended with and hands
    its own on, cut from the graph, so gradients stop at the chunk boundary
    (word_language_model's repackage_hidden); ``truncation`` is then already the chunking.
    Otherwise it is a many-to-one window from a zero state, truncated by ``forward_truncated``.

        chunk i-1 ──state──> chunk i ──state──> chunk i+1        (values carried)
                   ✂ grad               ✂ grad                   (graph cut)
    """
    if not carry:
        return forward_truncated(model, x, truncation), None
    out, state = model(x, state)
    return out, [tuple(t.detach() for t in layer) for layer in state]  # truncated BPTT: cut the graph here


def chunks(x: Tensor, y: Tensor, k: int) -> Iterator[tuple[Tensor, Tensor]]:
    """A batch of many-to-many sequences cut along time into chunks of ``k`` steps, the last
    one possibly shorter; ``k`` = 0 yields the batch whole. Each chunk gets its own forward,
    backward and optimiser step, the state carried from one to the next (CELLS.md's truncated
    BPTT), so a batch of length L makes ceil(L / k) optimiser steps:

        x, y:  | 1 ....... k | k+1 ..... 2k | ... | ....... L |     (B, L, ·)
               zero ──state──>  ──state──>  ...  ──>                values carried
                             ✂ grad       ✂ grad                    graph cut
    """
    if k == 0:
        yield x, y
        return
    for t in range(0, x.size(1), k):
        yield x[:, t : t + k], y[:, t : t + k]


def task_loss(out: Tensor, y: Tensor, task: Task) -> Tensor:
    """MSE for regression; cross-entropy (nats) for classification, over every prediction."""
    if task.kind == "classification":
        return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
    return F.mse_loss(out, y)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        # Fused Adam: one kernel for the whole update instead of a few per parameter.
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict(model: nn.Module, data: Windows, split: str, batch_size: int, device: torch.device) -> np.ndarray:
    """Scaled predictions for every window of a split, in window order."""
    model.eval()
    out = [model(x.to(device))[0].squeeze(1).cpu().numpy() for x, _ in data.batches(split, batch_size)]
    return np.concatenate(out)


def evaluate(model: nn.Module, data: Data, split: str, batch_size: int, device: torch.device) -> float:
    """The task's loss over every example of a split: MSE (scaled units) or cross-entropy (nats)."""
    return score(model, data, split, batch_size, device)["loss"]


@torch.no_grad()
def score(model: nn.Module, data: Data, split: str, batch_size: int, device: torch.device) -> dict[str, float]:
    """The task's loss and metrics over a split: ``loss``; ``accuracy`` (classification);
    ``bpc``, bits per character (streams); ``wrong``, predictions off by >= the task's tolerance."""
    model.eval()
    task = data.task
    total, correct, wrong, count = 0.0, 0, 0, 0
    state = None
    for x, y in data.batches(split, batch_size):
        out, state = forward(model, x.to(device), state, task.stateful_stream, 0)
        y = y.to(device)
        if task.kind == "classification":
            logits, y = out.reshape(-1, out.size(-1)), y.reshape(-1)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
        else:
            error = out - y
            total += error.square().sum().item()
            wrong += (error.abs() >= (task.tolerance or math.inf)).sum().item()
        count += y.numel()
    metrics = {"loss": total / count}
    if task.kind == "classification":
        metrics["accuracy"] = correct / count
    if task.stateful_stream:
        metrics["bpc"] = metrics["loss"] / math.log(2)
    if task.tolerance:
        metrics["wrong"] = float(wrong)
    return metrics


class Interrupted(Exception):
    """Training stopped on request (preemption, Ctrl-C) after saving a checkpoint."""


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped: a resumed run ends
    with the same weights and losses, bit for bit, as one that never stopped (on CPU).

    Plain values and tensors only, so a checkpoint loads with ``weights_only=True``.
    """

    epoch: int  # the epoch to run next, or the one in progress
    batch: int  # batches of that epoch already done
    step: int  # optimiser steps so far
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    best_val: float
    best_epoch: int
    best_model: dict[str, Tensor]
    history: list[dict[str, float]]
    sums: dict[str, Tensor]  # the epoch in progress: its running loss, norm, clip, skip and step sums
    data_rng: dict[str, Any]  # the window-order generator as it was when that epoch began
    torch_rng: Tensor  # dropout's randomness
    cuda_rng: list[Tensor] = field(default_factory=list)
    carried: list[tuple[Tensor, ...]] | None = None  # a stream's state between chunks (char LM)
    probes: list[dict[str, Any]] = field(default_factory=list)  # the gradient probe's records so far

    def payload(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "TrainState":
        return cls(**payload)


def train(
    model: nn.Module,
    data: Data,
    cfg: TrainConfig,
    *,
    truncation: int = 0,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    log: Log = lambda metrics, step: None,
    on_epoch_end: Callable[[int, float], None] = lambda epoch, val_loss: None,
    progress: Progress = lambda epoch, batch, n_batches, loss, val: None,
    resume: TrainState | None = None,
    save: Callable[[TrainState], None] = lambda state: None,
    stop_requested: Callable[[], bool] = lambda: False,
    probe: Probe | None = None,
    on_probe: Callable[[ProbeRecord], None] = lambda record: None,
) -> TrainResult:
    """Train with early stopping on the validation loss; the model ends with its best weights.

    A batch makes one optimiser step, except a batch of many-to-many sequences (copy) with
    ``truncation`` = k: it is cut into chunks of k steps, one step each (``chunks``).

    ``save`` receives a TrainState at every epoch's end and before an interruption;
    ``resume`` continues from one. ``stop_requested`` is polled after every batch: when it
    says yes, the state is saved and Interrupted raised. A NaN/inf loss or gradient norm
    raises NonFiniteError on its step (or, with ``cfg.on_nonfinite="skip"``, skips the
    update and counts it). On the steps ``probe`` says are due, the forward runs through the
    probe (same outputs and gradients) and ``on_probe`` gets the step's ProbeRecord.
    """
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.clip if cfg.clip > 0 else math.inf
    rng = np.random.default_rng(seed)  # window order; the model's init was seeded by the caller
    n_batches = data.n_batches("train", cfg.batch_size)
    if cfg.steps_per_epoch:
        n_batches = min(n_batches, cfg.steps_per_epoch)

    best_val, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    step, first_epoch, done = 0, 1, 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        best_val, best_epoch, best_state = resume.best_val, resume.best_epoch, resume.best_model
        history, step, first_epoch, done = list(resume.history), resume.step, resume.epoch, resume.batch
        rng.bit_generator.state = resume.data_rng
        torch.set_rng_state(resume.torch_rng)
        if resume.cuda_rng:
            torch.cuda.set_rng_state_all(resume.cuda_rng)
        if probe is not None:  # so the run's gradient artifacts cover it from its first step
            probe.records = [ProbeRecord.from_payload(p) for p in resume.probes]

    def snapshot(epoch: int, batch: int, sums: dict[str, Tensor], data_rng: dict[str, Any],
                 carried: list[State] | None = None) -> TrainState:
        return TrainState(
            epoch=epoch, batch=batch, step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
            best_val=best_val, best_epoch=best_epoch, best_model=best_state, history=history, sums=sums,
            data_rng=data_rng, torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            carried=[tuple(t.cpu() for t in layer) for layer in carried] if carried else None,
            probes=[r.payload() for r in probe.records] if probe is not None else [],
        )

    task = data.task
    # Truncated BPTT has three shapes. A window (many-to-one) truncates inside its forward
    # (forward_truncated); a stream's chunks are already the truncation, its state carried
    # across batches; a many-to-many sequence (copy) is cut into chunks of ``truncation`` steps,
    # one optimiser step each, its state carried across the chunks of one batch only.
    chunk = truncation if task.many_to_many and not task.stateful_stream else 0
    carry = task.stateful_stream or chunk > 0

    epoch = first_epoch
    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        epoch_rng = copy.deepcopy(rng.bit_generator.state)  # where this epoch's window order comes from
        # Sums stay on the device: a .item() per step would be a host-device sync point.
        sums = {k: torch.zeros((), device=device) for k in ("loss", "norm", "clipped", "skipped", "steps")}
        state = None  # a stream's carried state: every pass starts the streams afresh
        if resume is not None and epoch == resume.epoch:  # (an epoch-end checkpoint has no sums)
            sums.update({k: v.to(device) for k, v in resume.sums.items()})
            if resume.sums and "steps" not in resume.sums:  # saved before batches could make several steps
                sums["steps"] += resume.batch
            state = [tuple(t.to(device) for t in layer) for layer in resume.carried] if resume.carried else None
        for batch, (xb, yb) in enumerate(data.batches("train", cfg.batch_size, rng, pin=device.type == "cuda")):
            if batch == n_batches:
                break
            if batch < done:  # resuming mid-epoch: same order, skip what was done
                continue
            for x, y in chunks(xb.to(device), yb.to(device), chunk):  # one chunk unless a sequence is cut
                probed = probe is not None and probe.due(step + 1)
                if probed:
                    out, state = probe.forward(model, x, state, carry, truncation)
                else:
                    out, state = forward(model, x, state, carry, truncation)
                loss = task_loss(out, y, task)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if probed:  # before clipping, which rescales the gradients in place
                    on_probe(probe.record(model, step + 1, max_norm))
                norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # the norm before clipping
                step += 1
                sums["steps"] += 1
                # One check covers both: a NaN/inf loss makes the gradient norm NaN too. Caught
                # before optimizer.step(), so the weights stay the last good ones.
                if not torch.isfinite(norm):
                    if cfg.on_nonfinite == "fail":
                        raise NonFiniteError("loss" if not torch.isfinite(loss) else "gradient norm", step, epoch)
                    sums["skipped"] += 1
                else:
                    optimizer.step()
                    sums["loss"] += loss.detach()
                    sums["norm"] += norm
                    sums["clipped"] += norm > max_norm
            if not task.stateful_stream:
                state = None  # these sequences end here: the next batch starts from a zero state
            if batch % 20 == 0:
                progress(epoch, batch + 1, n_batches, loss.item(), best_val if best_epoch else None)
            # Polled per batch, not per chunk: a checkpoint never falls inside a cut sequence, so
            # a resumed run starts its next batch from a zero state, as an uninterrupted one does.
            if stop_requested():
                save(snapshot(epoch, batch + 1, sums, epoch_rng, state))
                raise Interrupted(f"stopped at step {step} (epoch {epoch}, batch {batch + 1}/{n_batches})")
        done = 0

        val_loss = evaluate(model, data, "val", cfg.eval_batch_size, device)
        good = max(sums["steps"].item() - sums["skipped"].item(), 1)  # optimiser steps that updated
        metrics = {
            "train_loss": sums["loss"].item() / good,
            "val_loss": val_loss,
            "grad_norm": sums["norm"].item() / good,
            "clip_rate": sums["clipped"].item() / good,
            "nonfinite_skips": sums["skipped"].item(),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        log(metrics, epoch)
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress(epoch, n_batches, n_batches, metrics["train_loss"], best_val)
        stop = bool(cfg.patience and epoch - best_epoch >= cfg.patience)
        save(snapshot(cfg.epochs + 1 if stop else epoch + 1, 0, {}, copy.deepcopy(rng.bit_generator.state)))
        on_epoch_end(epoch, val_loss)
        if stop:
            break

    model.load_state_dict(best_state)
    return TrainResult(best_val, best_epoch, len(history), step, history)


def fit_ridge(
    model: nn.Module, data: Data, cfg: TrainConfig, ridge: float, *,
    device: torch.device = torch.device("cpu"), log: Log = lambda metrics, step: None,
) -> TrainResult:
    """Training without gradients, for a frozen recurrence with a closed-form readout (an echo
    state network): one pass over the training split solves the head by ridge regression.
    Classification regresses one-hot targets (the class with the largest output wins)."""
    model.to(device)
    task = data.task

    def examples() -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in data.batches("train", cfg.batch_size):
            y = y.to(device)
            if task.kind == "classification":
                y = F.one_hot(y.long(), task.n_outputs).to(torch.float32)
            yield x.to(device), y

    started = time.perf_counter()
    fit_readout(model, examples(), ridge)
    val_loss = evaluate(model, data, "val", cfg.eval_batch_size, device)
    metrics = {"val_loss": val_loss, "epoch_seconds": time.perf_counter() - started}
    log(metrics, 1)
    return TrainResult(val_loss, 1, 1, 0, [metrics])
