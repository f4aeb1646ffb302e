"""train() and evaluate(): one loop, truncated BPTT visible in it.

Logging, progress and epoch-end hooks are plain callables passed in, so this module knows
nothing of MLflow, Optuna or Hydra. A pruning hook (Optuna) raises from ``on_epoch_end`` and
simply unwinds ``train``.

The data declares its task (``data.task``), and the loss and the metrics follow from it.
Regression: the mean squared error over the batch, *without* the ½ of the textbook
L = Σ_t ½(ŷ_t - y_t)² (docs/maths.md). The ½ only rescales gradients by 2, and the plain mean
is what the baselines, the reports and every other tool call "MSE". Classification: the
cross-entropy in nats, averaged over every prediction (every step for many-to-many tasks).
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import Cell, State
from rnnlab.model import Scan, fit_readout
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


def forward_truncated(model: nn.Module, x: Tensor, truncation: int, run: Scan | None = None) -> Tensor:
    """Forward a many-to-one window so that gradients reach back at most ``truncation`` steps.

        x:  | t = 1 ............ L-k | L-k+1 ........ L |  -> ŷ, loss
            |  burn-in: no graph     |  k steps: BPTT   |
                                 state ─┘ (carried, cut from the graph)

    The burn-in runs without autograd, so its outputs are the same as a full forward but no
    gradient flows into steps older than k; the loss sits at the last step only, so this is
    "forward k steps, backpropagate k steps" of truncated BPTT (docs/maths.md) with chunks
    aligned to the window's end. ``truncation`` = 0 (or >= L) is full BPTT. ``run``, a scan
    hook (the gradient probe's), scans the k steps only: the burn-in gets no gradient to see.
    """
    k = truncation
    if k == 0 or k >= x.size(1):
        return model(x, run=run)[0]
    with torch.no_grad():
        _, state = model(x[:, :-k])
    return model(x[:, -k:], state, run=run)[0]


def forward(
    model: nn.Module, x: Tensor, state: list[State] | None, carry: bool, truncation: int, run: Scan | None = None
) -> tuple[Tensor, list[State] | None]:
    """One forward of a batch or of a chunk of one. With ``carry`` (a stream, or a chunk of a
    many-to-many sequence) it continues from ``state``, the one the previous chunk ended with,
    and returns its own, still in the graph (the loop cuts it: ``detached``); ``truncation`` is
    then already the chunking. Otherwise it is a many-to-one window from a zero state,
    truncated by ``forward_truncated``. ``run``: a scan hook for every layer (rnnlab.model.Scan).
    """
    if not carry:
        return forward_truncated(model, x, truncation, run), None
    return model(x, state, run=run)


def detached(state: list[State] | None) -> list[State] | None:
    """The carried state's values, cut from the graph (word_language_model's repackage_hidden),
    so the next chunk's backward stops at its first step:

        chunk i-1 ──state──> chunk i ──state──> chunk i+1        (values carried)
                   ✂ grad               ✂ grad                   (graph cut)
    """
    return None if state is None else [tuple(t.detach() for t in layer) for layer in state]


def chunks(x: Tensor, y: Tensor, k: int) -> Iterator[tuple[Tensor, Tensor]]:
    """A batch of many-to-many sequences cut along time into chunks of ``k`` steps, the last
    one possibly shorter; ``k`` = 0 yields the batch whole. Each chunk gets its own forward,
    backward and optimiser step, the state carried from one to the next (truncated BPTT as
    docs/maths.md defines it), so a batch of length L makes ceil(L / k) optimiser steps:

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
    """The optimiser cfg names, over every trainable parameter; after each of its steps every
    cell puts constrained weights back in their set (``Cell.project_``: IndRNN's bound=clip)."""
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    cells = [m for m in model.modules() if isinstance(m, Cell)]

    def project(*_: Any) -> None:
        for cell in cells:
            cell.project_()

    optimizer.register_step_post_hook(project)
    return optimizer


def _optimizer(params: list[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        # Fused Adam: one kernel for the whole update instead of a few per parameter.
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "rmsprop":
        # Arjovsky et al. 2016 (the copy task): r <- 0.9 r + 0.1 g^2 (their code's decay, where
        # torch defaults to alpha 0.99), step lr g / (sqrt(r) + eps), eps torch's 1e-8, and no
        # momentum: train.momentum, whose default 0.9 is SGD's, would change the method.
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1e-8, weight_decay=cfg.weight_decay)
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


@dataclass
class _Run:
    """Where a run stands: what a TrainState holds beside the epoch in progress."""

    best_model: dict[str, Tensor]
    epoch: int = 1  # the epoch to run first
    batch: int = 0  # batches of it already done (a run resumed mid-epoch skips them)
    step: int = 0  # optimiser steps so far
    best_val: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_so_far(self) -> float | None:
        return self.best_val if self.best_epoch else None  # None until an epoch has ended


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
    ``truncation`` = k: it is cut into chunks of k steps, one step each (``chunks``). With
    ``cfg.steps`` = N the run makes exactly N steps (unless early stopping ends it first):
    epochs run until then, the last one cut short (``planned_epochs``), and ``cfg.epochs``
    is not read.

    ``save`` receives a TrainState at every epoch's end and before an interruption;
    ``resume`` continues from one. ``stop_requested`` is polled after every batch: when it
    says yes, the state is saved and Interrupted raised. A NaN/inf loss or gradient norm
    raises NonFiniteError on its step (or, with ``cfg.on_nonfinite="skip"``, skips the
    update and counts it). On the steps ``probe`` says are due, every layer is scanned through
    the probe's hook (``Probe.scan``: same outputs and gradients, every layer tapped) and
    ``on_probe`` gets the step's ProbeRecord.
    """
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    params = optimizer.param_groups[0]["params"]  # make_optimizer's one group: every trainable parameter
    max_norm = cfg.clip if cfg.clip > 0 else math.inf
    rng = np.random.default_rng(seed)  # window order; the model's init was seeded by the caller
    n_batches = batches_per_epoch(data, cfg)
    run = _restore(resume, model, optimizer, rng, probe)
    task = data.task
    # Truncated BPTT has three shapes. A window (many-to-one) truncates inside its forward
    # (forward_truncated); a stream's chunks are already the truncation, its state carried
    # across batches; a many-to-many sequence (copy) is cut into chunks of ``truncation`` steps,
    # one optimiser step each, its state carried across the chunks of one batch only.
    chunk = truncation if task.many_to_many and not task.stateful_stream else 0
    carry = task.stateful_stream or chunk > 0
    last_step = cfg.steps or math.inf  # train.steps: the run ends on that step, mid-epoch (or mid-batch) if need be

    for epoch in range(run.epoch, planned_epochs(data, cfg, truncation) + 1):
        model.train()
        started = time.perf_counter()
        epoch_rng = copy.deepcopy(rng.bit_generator.state)  # where this epoch's window order comes from
        sums, state = _epoch_start(resume, epoch, device)
        batches = enumerate(data.batches("train", cfg.batch_size, rng, pin=device.type == "cuda"))
        # At most n_batches; resuming mid-epoch, the same order with the batches done skipped.
        for batch, (xb, yb) in itertools.islice(batches, run.batch, n_batches):
            if run.step >= last_step:
                break
            for x, y in chunks(xb.to(device), yb.to(device), chunk):  # one chunk unless a sequence is cut
                if run.step >= last_step:
                    break
                state = detached(state)  # truncated BPTT: the state carries on, its graph is cut here
                probed = probe is not None and probe.due(run.step)  # step 0: the initial weights
                out, state = forward(model, x, state, carry, truncation, run=probe.scan if probed else None)
                loss = task_loss(out, y, task)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if probed:  # before clipping, which rescales the gradients in place
                    on_probe(probe.record(model, run.step, max_norm, length=x.size(1)))
                run.step += 1
                _clip_and_step(optimizer, params, loss, max_norm, sums, cfg.on_nonfinite, run.step, epoch)
            if not task.stateful_stream:
                state = None  # these sequences end here: the next batch starts from a zero state
            if batch % 20 == 0:
                progress(epoch, batch + 1, n_batches, loss.item(), run.best_so_far)
            # Polled per batch, not per chunk: a checkpoint never falls inside a cut sequence, so
            # a resumed run starts its next batch from a zero state, as an uninterrupted one does.
            if stop_requested():
                save(_snapshot(run, model, optimizer, probe, device, epoch, batch + 1, sums, epoch_rng, state))
                raise Interrupted(f"stopped at step {run.step} (epoch {epoch}, batch {batch + 1}/{n_batches})")
        run.batch = 0

        val_loss, stop = _close_epoch(run, model, data, cfg, optimizer, sums, started, epoch, device, log)
        progress(epoch, n_batches, n_batches, run.history[-1]["train_loss"], run.best_val)
        next_epoch = planned_epochs(data, cfg, truncation) + 1 if stop else epoch + 1
        save(_snapshot(run, model, optimizer, probe, device, next_epoch, 0, {}, copy.deepcopy(rng.bit_generator.state)))
        on_epoch_end(epoch, val_loss)
        if stop:
            break

    model.load_state_dict(run.best_model)
    return TrainResult(run.best_val, run.best_epoch, len(run.history), run.step, run.history)


def batches_per_epoch(data: Data, cfg: TrainConfig) -> int:
    """Training batches per epoch: a full pass, or train.steps_per_epoch if that is fewer."""
    return min(data.n_batches("train", cfg.batch_size), cfg.steps_per_epoch or math.inf)


def planned_epochs(data: Data, cfg: TrainConfig, truncation: int = 0) -> int:
    """How many epochs a run has: train.epochs, or with train.steps = N as many as make N
    optimiser steps (the last one cut short), counting ceil(L / k) steps for a batch of
    many-to-many sequences cut into chunks of k = ``truncation`` steps (``chunks``)."""
    if not cfg.steps:
        return cfg.epochs
    task = data.task
    per_batch = math.ceil(data.length / truncation) if truncation and task.many_to_many and not task.stateful_stream else 1
    return math.ceil(cfg.steps / (batches_per_epoch(data, cfg) * per_batch))


def _clip_and_step(
    optimizer: torch.optim.Optimizer, params: list[Tensor], loss: Tensor, max_norm: float,
    sums: dict[str, Tensor], on_nonfinite: str, step: int, epoch: int,
) -> None:
    """Clip the gradients, then update, unless they are not finite; add to the epoch's sums."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # the norm before clipping
    sums["steps"] += 1
    # One check covers both: a NaN/inf loss makes the gradient norm NaN too. Caught
    # before optimizer.step(), so the weights stay the last good ones.
    if not torch.isfinite(norm):
        if on_nonfinite == "fail":
            raise NonFiniteError("loss" if not torch.isfinite(loss) else "gradient norm", step, epoch)
        sums["skipped"] += 1
        return
    optimizer.step()
    sums["loss"] += loss.detach()
    sums["norm"] += norm
    sums["clipped"] += norm > max_norm


def _epoch_metrics(
    sums: dict[str, Tensor], val_loss: float, optimizer: torch.optim.Optimizer, started: float
) -> dict[str, float]:
    good = max(sums["steps"].item() - sums["skipped"].item(), 1)  # optimiser steps that updated
    return {
        "train_loss": sums["loss"].item() / good,
        "val_loss": val_loss,
        "grad_norm": sums["norm"].item() / good,
        "clip_rate": sums["clipped"].item() / good,
        "nonfinite_skips": sums["skipped"].item(),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------ resume and snapshot


def _restore(
    resume: TrainState | None, model: nn.Module, optimizer: torch.optim.Optimizer,
    rng: np.random.Generator, probe: Probe | None,
) -> _Run:
    """A fresh run, or one continued from ``resume``: weights, optimiser, both generators and
    the probe's records as they were."""
    if resume is None:
        return _Run(best_model=copy.deepcopy(model.state_dict()))
    model.load_state_dict(resume.model)
    optimizer.load_state_dict(resume.optimizer)
    rng.bit_generator.state = resume.data_rng
    torch.set_rng_state(resume.torch_rng)
    if resume.cuda_rng:
        torch.cuda.set_rng_state_all(resume.cuda_rng)
    if probe is not None:  # so the run's gradient artifacts cover it from its first step
        probe.records = [ProbeRecord.from_payload(p) for p in resume.probes]
    return _Run(
        best_model=resume.best_model, epoch=resume.epoch, batch=resume.batch, step=resume.step,
        best_val=resume.best_val, best_epoch=resume.best_epoch, history=list(resume.history),
    )


def _epoch_start(
    resume: TrainState | None, epoch: int, device: torch.device
) -> tuple[dict[str, Tensor], list[State] | None]:
    """The epoch's running sums and carried state: zeros and none, or, for the epoch a run
    was stopped in, what it had (an epoch-end checkpoint has no sums)."""
    # Sums stay on the device: a .item() per step would be a host-device sync point.
    sums = {k: torch.zeros((), device=device) for k in ("loss", "norm", "clipped", "skipped", "steps")}
    if resume is None or epoch != resume.epoch:
        return sums, None  # a stream's carried state: every pass starts the streams afresh
    sums.update({k: v.to(device) for k, v in resume.sums.items()})
    if resume.sums and "steps" not in resume.sums:  # saved before batches could make several steps
        sums["steps"] += resume.batch
    state = [tuple(t.to(device) for t in layer) for layer in resume.carried] if resume.carried else None
    return sums, state


def _close_epoch(
    run: _Run, model: nn.Module, data: Data, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
    sums: dict[str, float], started: float, epoch: int, device: torch.device, log: Log,
) -> tuple[float, bool]:
    """The epoch's validation loss, metrics (logged) and best weights; and whether early
    stopping ends the run here."""
    val_loss = evaluate(model, data, "val", cfg.eval_batch_size, device)
    # optimizer_steps: how many optimiser steps the epoch ended on (the step its metrics are logged at;
    # older runs logged them at step = epoch), for learning curves and steps-to-threshold in rnnlab.report.
    metrics = {**_epoch_metrics(sums, val_loss, optimizer, started), "optimizer_steps": float(run.step)}
    run.history.append(metrics)
    log(metrics, run.step)  # one step axis: the optimiser step, as the probe's metrics and the final ones
    if val_loss < run.best_val:
        run.best_val, run.best_epoch, run.best_model = val_loss, epoch, copy.deepcopy(model.state_dict())
    return val_loss, bool(cfg.patience and epoch - run.best_epoch >= cfg.patience)


def _snapshot(
    run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, probe: Probe | None, device: torch.device,
    epoch: int, batch: int, sums: dict[str, Tensor], data_rng: dict[str, Any], carried: list[State] | None = None,
) -> TrainState:
    return TrainState(
        epoch=epoch, batch=batch, step=run.step, model=model.state_dict(), optimizer=optimizer.state_dict(),
        best_val=run.best_val, best_epoch=run.best_epoch, best_model=run.best_model, history=run.history,
        sums=sums, data_rng=data_rng, torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        carried=[tuple(t.detach().cpu() for t in layer) for layer in carried] if carried else None,
        probes=[r.payload() for r in probe.records] if probe is not None else [],
    )


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
