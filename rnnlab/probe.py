"""The gradient probe: ||dL/dh^l_t|| per layer and time step (exact over any range, with its
spread across the batch and its fitted decay rate), weight-gradient norms per parameter group
and gate, the global norm before and after clipping, and the recurrent weight matrices'
spectral radius and largest singular value. Plain torch; returns arrays.

What is measured (docs/maths.md): the *total* derivative of the loss with respect to each
layer's hidden state h^l_t, on every path, both up through the layers above and back through
time. For each sample the L2 norm over the h units; then the batch mean, and the 10th and 90th
percentiles across the batch.

How, exactly, even for fused kernels. Retaining the gradient of a fused layer's output
sequence gives only the part that flows up through the next layer: the part that flows back
through time stays inside the kernel. So on a probed step the training forward scans every
layer through ``Probe.scan`` (the scan hook StackedRNN.features takes), which hands the
layer's ``scan`` a *tap*: a (T, B, H) buffer its backward fills with the total dL/dh_t
(rnnlab/cells.py). The hand-written backwards form that sum at every step anyway, and a fused
cell runs its hand-written twin (the same function, tested equal) for that one step. The
probed step is the training step itself (no extra forward or backward) and truncated BPTT is
training's own (rnnlab/train.py).

Exact over any range. The taps hold the training's own float32 gradient, which underflows
(to 0) after ~38 decades of vanishing and overflows (to inf) after ~38 of exploding: a tanh
RNN over a few hundred steps gets there. Where any kept step of a tap falls below 2^-100 or is
not finite, the probe recomputes that step's taps in float64 from the same inputs and the same
gradient arriving from the head, with the head's gradient scaled by a power of two (exact) so
that the largest norm sits near float64's top: about 600 decades fit. What still does not fit
is NaN and counted (``unrepresentable``): never a silent floor. Norms are kept as log10, so
"no gradient reaches here" (the steps before a truncation window: -inf) is distinct from
"tiny" (a finite log, however negative). ``float32_underflow`` says that the training's own
float32 gradient lost those steps: a fact about the run, not about the measurement.

Which steps: ``every`` optimiser steps and the steps listed in ``at``, where the step of a
probe is the number of updates made before it: the probe at step 0 measures the initial
weights, on the first batch, before the first update.

Weights are grouped as each cell declares them (``Cell.weight_groups``): input, recurrent,
bias, peephole, gate_recurrent, and "other" for any parameter a cell does not declare; keys
name the gate, "l1.recurrent.f" (layer 1's forget-gate rows of W_hh).
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnlab.cells import Cell, State, Tap

# A float32 tap whose per-sample norm falls below this has lost digits (float32's normal range
# ends at 2^-126 per element) or soon will: the step's norms are recomputed in float64.
TINY = 2.0**-100
# float64 holds norms up to ~2^1023: the recompute scales the head's gradient so that the
# largest norm lands at 2^SCALE_TOP, leaving ~1023 + 1074 binary decades (~630 decimal) below it.
SCALE_TOP = 1000
_LOG10_2 = math.log10(2.0)


Key = tuple[int, int]  # (layer, direction)


@dataclass
class ProbeRecord:
    step: int  # optimiser updates made before this probe (0: the initial weights)
    # (layers, directions, T): log10 of the batch mean of ||dL/dh^l_t||; -inf where no gradient
    # reaches (before the truncation window); NaN where not kept, or not representable.
    log_dh: np.ndarray
    log_dh_p10: np.ndarray  # the 10th and 90th percentiles across the batch of log10 ||dL/dh^l_t||
    log_dh_p90: np.ndarray
    weight_norms: dict[str, float]  # "l0.recurrent", "l0.recurrent.f", "l0b.input.i", ... -> ||dL/dW||
    grad_norm: float  # global, before clipping
    grad_norm_clipped: float  # after
    clipped: bool
    spectral_radius: np.ndarray  # (layers,) of W_hh (max over its gate blocks); NaN: none, or not this step
    max_singular: np.ndarray  # (layers,) of W_hh, likewise
    # (layers, directions, T): step t's share of ||dL/dW_hh||^2, <C_t, dW_hh> / ||dW_hh||^2 where
    # C_t is step t's term of dW_hh (the shares sum to 1); NaN: not measured (no hand-written backward).
    w_share: np.ndarray
    float32_underflow: bool = False  # the training's float32 taps lost kept steps; log_dh are float64 recomputes
    unrepresentable: int = 0  # kept (layer, direction, step)s that fit no float64 range, even scaled: NaN
    # The state Jacobian J_t = d state_t / d state_{t-1} along the probed batch's trajectory
    # (rnnlab/jacobians.py), on probes that are multiples of jacobian_every; None on the others.
    jacobian_log10_sigma: np.ndarray | None = None  # (layers, samples, T) log10 of J_t's largest singular value
    jacobian_log10_product: np.ndarray | None = None  # (layers, samples) log10 ||J_T ... J_1||_2
    lyapunov: np.ndarray | None = None  # (layers, k) top Lyapunov exponents (ln per step); None: not this probe

    @property
    def dh(self) -> np.ndarray:
        """||dL/dh|| itself (batch mean): 0 before the truncation window, NaN where not kept.
        Underflows to 0 below ~1e-308 in float64: read ``log_dh`` for the exact value."""
        return np.power(10.0, self.log_dh)

    def payload(self) -> dict[str, Any]:
        """Tensors and plain values only, so a checkpoint holding it loads with weights_only."""
        return {
            k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in vars(self).items()
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "ProbeRecord":
        values = {k: v.numpy() if torch.is_tensor(v) else v for k, v in payload.items()}
        if "dh" in values:  # a checkpoint from before log-norms: linear norms, no spread, no shares
            with np.errstate(divide="ignore"):
                values["log_dh"] = np.log10(values.pop("dh"))
            values["log_dh_p10"] = values["log_dh_p90"] = np.full_like(values["log_dh"], np.nan)
            values["w_share"] = np.full_like(values["log_dh"], np.nan)
        return cls(**values)


@dataclass
class Probe:
    """Decides which steps are probed, taps their forward (``scan``) and turns them into
    ProbeRecords (kept in ``records``).

        probe = Probe(every=10, at=(0, 5))
        if probe.due(step):                           # step: updates made so far
            out, state = rnnlab.train.forward(model, x, state, carry, truncation, run=probe.scan)
            loss_of(out, y).backward()
            record = probe.record(model, step, max_norm, length=x.size(1))   # before clipping
    """

    every: int  # probe every ``every`` optimiser steps (from step 0); 0 = only at ``at``
    resolution: int = 1  # keep ||dL/dh_t|| at every ``resolution``-th step back from the last (1: all)
    # Spectra on probed steps that are multiples of this (NaN on the others). A batched eig + svd
    # of every gate block costs ~15 ms for 4 x 64 on one CPU thread, more than all the rest of a
    # probe, and it describes weights, which move slowly.
    spectra_every: int = 1
    at: tuple[int, ...] = ()  # more steps to probe, e.g. (0, 100, 1000)
    # The state Jacobian along the first ``jacobian_samples`` samples' trajectories (0: off), on
    # probed steps that are multiples of ``jacobian_every``: ~4 training steps' time for the
    # default 4 x 64 LSTM (rnnlab/jacobians.py), so sparse by default.
    jacobian_samples: int = 0
    jacobian_every: int = 1
    # The top ``lyapunov_k`` Lyapunov exponents at every probe (0: off; a run computes them at
    # its end by default), driven by the probed batch's windows joined into at most
    # ``lyapunov_steps`` steps, the first ``lyapunov_warmup`` discarded.
    lyapunov_k: int = 0
    lyapunov_steps: int = 1000
    lyapunov_warmup: int = 100
    records: list[ProbeRecord] = field(default_factory=list)
    # (layer, direction) -> what the forward in flight handed that layer's scan: the tap dL/dh
    # (window, B, H), the input and initial state (for a float64 recompute), and the gradient
    # arriving at its outputs from above (cell time), set by a hook during backward.
    _taps: dict[Key, Tensor] = field(default_factory=dict, init=False, repr=False)
    _inputs: dict[Key, tuple[Tensor, State]] = field(default_factory=dict, init=False, repr=False)
    _above: dict[Key, Tensor] = field(default_factory=dict, init=False, repr=False)
    # (layer, direction) -> <C_t, dL/dW_hh>_F per step t of that forward, (window,) float64, in
    # the cell's time (a backward direction's reversed); NaN where the cell cannot say (bptt.Tap)
    _lags: dict[Key, Tensor] = field(default_factory=dict, init=False, repr=False)

    def due(self, step: int) -> bool:
        """Whether the step after ``step`` updates is probed."""
        return (self.every > 0 and step % self.every == 0) or step in self.at

    def scan(self, cell: Cell, x: Tensor, state: State, layer: int, direction: int) -> tuple[Tensor, State]:
        """The scan hook of a probed forward (rnnlab.model.Scan): one layer's scan, tapped."""
        key = (layer, direction)
        tap = Tap(x.new_zeros(x.size(1), x.size(0), cell.hidden_size),
                  x.new_full((x.size(1),), math.nan, dtype=torch.float64))
        self._taps[key], self._lags[key] = tap
        self._inputs[key] = (x, state)
        out, state = cell.scan(x, state, tap)
        if out.requires_grad:
            out.register_hook(lambda grad: self._above.__setitem__(key, grad))
        return out, state

    def record(self, model: nn.Module, step: int, max_norm: float, length: int | None = None) -> ProbeRecord:
        """After backward and before clipping (clipping rescales the weight gradients in
        place): collect everything for this step. ``length``: the steps the forward read, of
        which the taps cover the last (truncated BPTT's window; the steps before it got no
        gradient); None when the taps cover them all."""
        if not self._taps:
            raise RuntimeError("Probe.record: no tapped forward since the last record (pass run=probe.scan to it)")
        layers = len(model.layers)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads)).item() if grads else 0.0
        if step % self.spectra_every == 0:
            radius, singular = spectra(model)
        else:
            radius = singular = np.full(layers, np.nan)
        log_dh, p10, p90, underflow, lost = self._log_norms(model, length)
        record = ProbeRecord(
            step=step, log_dh=log_dh, log_dh_p10=p10, log_dh_p90=p90, weight_norms=weight_norms(model),
            grad_norm=grad_norm, grad_norm_clipped=min(grad_norm, max_norm), clipped=grad_norm > max_norm,
            spectral_radius=radius, max_singular=singular, w_share=self._shares(log_dh.shape),
            float32_underflow=underflow, unrepresentable=lost,
        )
        if self.jacobian_samples and step % self.jacobian_every == 0:
            record.jacobian_log10_sigma, record.jacobian_log10_product = self._jacobian(model, log_dh.shape[-1])
        if self.lyapunov_k:
            record.lyapunov = lyapunov(model, self._inputs[0, 0][0].detach(), self.lyapunov_k,
                                       self.lyapunov_steps, self.lyapunov_warmup)
        self.records.append(record)
        self._taps, self._inputs, self._above, self._lags = {}, {}, {}, {}
        return record

    def _log_norms(self, model: nn.Module, length: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, int]:
        """(layers, directions, T) log10 batch means and 10th/90th percentiles of ||dL/dh_t||
        from the taps (recomputed in float64 where float32 lost them), the underflow flag and
        the count of kept steps no float64 scaling could represent."""
        window = next(iter(self._taps.values())).size(0)
        T = window if length is None else length
        offset = T - window  # the steps before the truncation window: no gradient reaches them
        norms = {key: tap.double().norm(dim=-1).cpu().numpy() for key, tap in self._taps.items()}  # (window, B)
        underflow = any(_lost(n, TINY, 2.0**-60).any() for n in norms.values())
        if underflow:
            norms, shift = self._float64_norms(model, norms)
            lost = {key: _lost(n, 2.0**-1000, 2.0**-960) for key, n in norms.items()}
        else:
            shift, lost = 0, {}
        kept = np.arange(window - 1, -1, -self.resolution)  # every k-th step back from the last
        shape = (len(model.layers), 2 if _bidirectional(model) else 1, T)
        mean, p10, p90 = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        for a in (mean, p10, p90):
            a[:, :, :offset] = -np.inf
        unrepresentable = 0
        for key, n in norms.items():
            with np.errstate(divide="ignore"):
                log = np.log10(n) - shift * _LOG10_2  # an exact zero: -inf, no gradient reaches it
            if key in lost:
                log[lost[key]] = np.nan
            log = self._natural(key, log)[kept]  # (kept, B)
            unrepresentable += int(np.isnan(log).any(1).sum())
            at = offset + kept
            mean[key[0], key[1], at] = _log10_mean(log)
            p10[key[0], key[1], at], p90[key[0], key[1], at] = np.percentile(log, [10, 90], axis=1, method="nearest")
        return mean, p10, p90, underflow, unrepresentable

    def _natural(self, key: Key, per_step: np.ndarray) -> np.ndarray:
        """A (window, ...) per-step quantity in the data's time order (a backward cell ran reversed)."""
        return per_step if key[1] == 0 else per_step[::-1]

    def _float64_norms(self, model: nn.Module, float32: dict[Key, np.ndarray]) -> tuple[dict[Key, np.ndarray], int]:
        """Per-sample ||dL/dh_t|| (window, B) of every tapped layer recomputed in float64 (cell
        time), scaled by 2^shift, and the shift: the head's gradient is scaled by a power of
        two (exact) so that the largest norm sits at 2^SCALE_TOP. The float32 taps' largest
        norm sets the shift when none overflowed (what underflows is never the largest); an
        overflow needs a first pass at shift 0 to find it."""
        if any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules()):
            # The training forward's masks are not kept, so a replay would differ: NaN, counted.
            return {key: np.full(tap.shape[:2], np.inf) for key, tap in self._taps.items()}, 0
        norms, shift = float32, 0
        if not all(np.isfinite(n).all() for n in norms.values()):
            norms = self._replay(model, shift)
        positive = [n[np.isfinite(n) & (n > 0)] for n in norms.values()]
        top = max((float(p.max()) for p in positive if p.size), default=math.nan)
        if math.isfinite(top):
            shift = SCALE_TOP - math.ceil(math.log2(top))
        if norms is float32 or shift != 0:
            norms = self._replay(model, shift)
        return norms, shift

    def _replay(self, model: nn.Module, shift: int) -> dict[Key, np.ndarray]:
        """The probed forward and backward again, layer by layer from the top, in float64: each
        layer from its recorded input and initial state, its outputs' gradient the head's
        (top layer, scaled by 2^shift) or the layer above's input gradient."""
        layers = len(model.layers)
        cells = {(l, 0): cell for l, cell in enumerate(model.layers)}
        cells.update({(l, 1): cell for l, cell in enumerate(getattr(model, "backward_layers", None) or [])})
        above = {key: self._above[key].double() * math.ldexp(1.0, shift) if key in self._above
                 else torch.zeros(self._inputs[key][0].shape[:2] + (cells[key].hidden_size,), dtype=torch.float64)
                 for key in cells if key[0] == layers - 1}
        logs = {}
        for layer in reversed(range(layers)):
            grad_in = None  # dL/dx of this layer's input, in the data's time order
            for direction in (0, 1) if (layer, 1) in cells else (0,):
                key = (layer, direction)
                x, state = self._inputs[key]
                x = x.detach().double().requires_grad_()
                cell = copy.deepcopy(cells[key]).double()
                tap = x.new_zeros(x.size(1), x.size(0), cell.hidden_size)
                out, _ = cell.scan(x, tuple(s.detach().double() for s in state), Tap(tap))
                torch.autograd.backward(out, above[key])
                biggest = tap.abs().amax(-1, keepdim=True)  # the squares of 2^1000 would overflow
                logs[key] = (biggest[..., 0] * (tap / torch.where(biggest > 0, biggest, 1.0)).norm(dim=-1)).numpy()
                g = x.grad if direction == 0 else x.grad.flip(1)
                grad_in = g if grad_in is None else grad_in + g
            if layer > 0:  # the layer below's outputs are this layer's input: [forward | backward]
                H = cells[layer - 1, 0].hidden_size
                above[layer - 1, 0] = grad_in[..., :H]
                if (layer - 1, 1) in cells:
                    above[layer - 1, 1] = grad_in[..., H:].flip(1)
        return logs

    def _jacobian(self, model: nn.Module, T: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """log10 σ_1(J_t) (layers, samples, T; NaN before a truncation window) and log10 of the
        window product's norm (layers, samples), along the probed batch's own trajectory from
        the window's initial states; None where the Jacobian is not defined (a Transformer)."""
        from rnnlab import jacobians

        if jacobians.unsupported(model) is not None:
            return None, None
        x = self._inputs[0, 0][0].detach()
        state = [self._inputs[layer, 0][1] for layer in range(len(model.layers))]
        norms = jacobians.jacobian_norms(model, x, min(self.jacobian_samples, x.size(0)), x.dtype, state)  # training precision
        with np.errstate(divide="ignore"):
            sigma = np.log10(norms.top_singular)
        before = np.full((*sigma.shape[:2], T - sigma.shape[-1]), np.nan)
        return np.concatenate([before, sigma], -1), norms.log10_product

    def _shares(self, shape: tuple[int, ...]) -> np.ndarray:
        """(layers, directions, T) per-step shares of ||dL/dW_hh||^2 from the backwards' lag
        sums (<C_t, dW_hh>); 0 before the truncation window; NaN where a cell measures none."""
        shares = np.full(shape, np.nan)
        for key, lag in self._lags.items():
            lag = self._natural(key, lag.double().cpu().numpy())
            total = lag.sum()  # ||dW_hh||^2; NaN when the cell measures no lags
            if total > 0:
                shares[key[0], key[1]] = np.concatenate([np.zeros(shape[-1] - len(lag)), lag / total])
        return shares


def lyapunov(model: nn.Module, x: Tensor, k: int, steps: int, warmup: int) -> np.ndarray | None:
    """(layers, k) top Lyapunov exponents (ln per step) of every layer driven by the windows of
    x (B, T, I) joined end to end, at most ``steps`` of them (fewer when the batch holds fewer:
    then the warm-up is at most half); None where the Jacobian is not defined (a Transformer)."""
    from rnnlab import jacobians

    if jacobians.unsupported(model) is not None:
        return None
    n = min(steps, x.size(0) * x.size(1))
    return jacobians.lyapunov_exponents(model, jacobians.long_input(x, n), k, min(warmup, n // 2))


def _bidirectional(model: nn.Module) -> bool:
    return getattr(model, "backward_layers", None) is not None


def _lost(norms: np.ndarray, tiny: float, healthy: float) -> np.ndarray:
    """Which per-sample norms (window, B; cell time, the loss at the end) the arithmetic lost:
    not finite, below ``tiny``, or an exact zero that underflow made. A zero whose first
    nonzero step toward the loss is at least ``healthy`` is exact (a Transformer's output with
    no path through time; a truncated chain): no value falls that far in one step by decaying."""
    window = len(norms)
    index = np.where(norms != 0, np.arange(window)[:, None], window)
    following = np.minimum.accumulate(index[::-1], axis=0)[::-1]  # the first nonzero step at or after t
    padded = np.vstack([norms, np.full((1, norms.shape[1]), np.inf)])
    next_value = np.take_along_axis(padded, following, axis=0)
    exact_zero = (norms == 0) & (next_value >= healthy)
    return ~np.isfinite(norms) | ((norms < tiny) & ~exact_zero)


def _log10_mean(log: np.ndarray) -> np.ndarray:
    """log10 of the mean over axis 1 of 10^log, without leaving the log domain (the values
    span hundreds of decades): log-sum-exp in base 10."""
    top = np.max(log, axis=1, keepdims=True)
    finite_top = np.where(np.isfinite(top), top, 0.0)  # all -inf (no gradient anywhere): stays -inf
    with np.errstate(divide="ignore"):
        return top[:, 0] + np.where(np.isfinite(top[:, 0]), np.log10(np.mean(np.power(10.0, log - finite_top), axis=1)), 0.0)


def _named_cells(model: nn.Module) -> Iterator[tuple[str, Cell]]:
    """("l0", cell), ..., then a bidirectional stack's backward cells as ("l0b", cell), ..."""
    for index, cell in enumerate(model.layers):
        yield f"l{index}", cell
    for index, cell in enumerate(getattr(model, "backward_layers", None) or []):
        yield f"l{index}b", cell


def _gradients(cell: Cell) -> Iterator[tuple[str, Tensor, tuple[str, ...]]]:
    """(group, gradient, gate names) of every weight of ``cell`` that has a gradient: those it
    declares, then any other trainable parameter as group "other"."""
    declared = cell.weight_groups()
    for w in declared:
        if w.tensor.grad is not None:
            yield w.group, w.tensor.grad, w.gates
    seen = {id(w.tensor) for w in declared}
    for p in cell.parameters():
        if p.grad is not None and id(p) not in seen:
            yield "other", p.grad, ()


@torch.no_grad()
def weight_norms(model: nn.Module) -> dict[str, float]:
    """||dL/dW|| per layer and group ("l0.recurrent"), and per gate where the cell names the
    row blocks of a stacked weight ("l0.recurrent.f")."""
    keys: list[list[str]] = []  # per entry of `squares`: the keys its square adds to
    squares: list[Tensor] = []
    for layer, cell in _named_cells(model):
        for group, grad, gates in _gradients(cell):
            squares.append(grad.double().reshape(len(gates) or 1, -1).pow(2).sum(1))  # one reduction per tensor
            key = f"{layer}.{group}"
            keys += [[key, f"{key}.{gate}"] for gate in gates] or [[key]]
    sums: dict[str, float] = {}
    for adds_to, value in zip(keys, torch.cat(squares).tolist() if squares else []):  # one sync
        for key in adds_to:
            sums[key] = sums.get(key, 0.0) + value
    return {k: math.sqrt(v) for k, v in sums.items()}


@torch.no_grad()
def spectra(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: the spectral radius and largest singular value of its recurrent weight matrix
    W_hh (the largest over its gate blocks; for a vector recurrence, max |u|). NaN where a cell
    declares none (a Transformer). These describe the weights only: for a tanh RNN they bound
    the state Jacobian diag(tanh') W_hh from above (Pascanu et al. 2013), but a gated cell's
    gate blocks are the Jacobian of no map; the Jacobian itself is rnnlab/jacobians.py's.

    Every square block of every layer goes to LAPACK in one batched call for each quantity,
    in the weights' own precision: on a probed step this is most of the probe's own cost."""
    radius = np.full(len(model.layers), np.nan)
    singular = np.full(len(model.layers), np.nan)
    blocks, owner = [], []
    for index, cell in enumerate(model.layers):
        for w in cell.weight_groups():
            if w.group != "recurrent":
                continue
            W = w.tensor if w.applied is None else w.applied
            if W.dim() == 1:  # IndRNN: diagonal recurrence
                radius[index] = singular[index] = W.abs().max().item()
                continue
            for block in W.chunk(len(w.gates) or 1):  # one (H, H) block per gate
                blocks.append(block)
                owner.append(index)
    if blocks:
        stacked = torch.stack(blocks).detach().cpu()
        rho = torch.linalg.eigvals(stacked).abs().amax(-1).tolist()
        sigma = torch.linalg.svdvals(stacked)[:, 0].tolist()
        for index, r, s in zip(owner, rho, sigma):
            radius[index] = max(r, np.nan_to_num(radius[index], nan=-1.0))
            singular[index] = max(s, np.nan_to_num(singular[index], nan=-1.0))
    return radius, singular


# ----------------------------------------------------------------- what gets logged, and how

def decay_fit(log_dh: np.ndarray) -> tuple[float, float]:
    """The least-squares slope of log10 ||dL/dh_t|| against the distance from the window's
    last step (the loss's, for a many-to-one task), and its R^2, over the measured steps of
    one (T,) row: the decay rate in decades per step a paper quotes (negative: vanishing;
    log10 of a linear recurrence's factor a). NaN below three measured steps."""
    distance = np.arange(len(log_dh))[::-1].astype(float)
    keep = np.isfinite(log_dh)
    if keep.sum() < 3:
        return math.nan, math.nan
    d, v = distance[keep], log_dh[keep]
    d_c, v_c = d - d.mean(), v - v.mean()
    slope = float((d_c * v_c).sum() / (d_c**2).sum())
    residual = float(((v_c - slope * d_c) ** 2).sum())
    total = float((v_c**2).sum())
    return slope, 1.0 - residual / total if total > 0 else 1.0  # a flat line fits exactly


def summary_metrics(record: ProbeRecord) -> dict[str, float]:
    """A few stable keys per layer that chart well across runs, all of decaying quantities in
    log10: the norm at the first and last step of the window, the vanishing factor (their
    difference: negative, the gradient shrinks going back in time), the fitted decay rate and
    its R^2, recurrent and input weight-gradient norms, the recurrent one per gate
    (``grad_w/l1/recurrent/f``), W_hh's spectral radius, the mean lag of W_hh's gradient, and
    the state Jacobian's and Lyapunov exponents where measured. Everything else goes to the
    npz artifact."""
    out = {
        "probe/grad_norm": record.grad_norm, "probe/clipped": float(record.clipped),
        "probe/float32_underflow": float(record.float32_underflow), "probe/unrepresentable": float(record.unrepresentable),
    }
    for layer in range(record.log_dh.shape[0]):
        row = record.log_dh[layer, 0]
        measured = row[np.isfinite(row)]
        if len(measured):
            out[f"log10_grad_h_first/l{layer}"] = float(measured[0])
            out[f"log10_grad_h_last/l{layer}"] = float(measured[-1])
            out[f"vanishing/l{layer}"] = float(measured[0] - measured[-1])
        rate, r2 = decay_fit(row)
        if math.isfinite(rate):
            out[f"decay_rate/l{layer}"], out[f"decay_r2/l{layer}"] = rate, r2
        for group in ("input", "recurrent"):
            if f"l{layer}.{group}" in record.weight_norms:
                out[f"grad_w_{group}/l{layer}"] = record.weight_norms[f"l{layer}.{group}"]
        per_gate = f"l{layer}.recurrent."
        for key, value in record.weight_norms.items():
            if key.startswith(per_gate):
                out[f"grad_w/l{layer}/recurrent/{key[len(per_gate):]}"] = value
        if np.isfinite(record.spectral_radius[layer]):
            out[f"w_hh_spectral_radius/l{layer}"] = float(record.spectral_radius[layer])
            out[f"w_hh_max_singular/l{layer}"] = float(record.max_singular[layer])
        shares = record.w_share[layer, 0]
        if np.isfinite(shares).all():
            out[f"w_hh_mean_lag/l{layer}"] = float((shares * np.arange(len(shares))[::-1]).sum())
        if record.jacobian_log10_sigma is not None:
            out[f"jacobian_log10_sigma/l{layer}"] = float(np.nanmean(record.jacobian_log10_sigma[layer]))
            out[f"jacobian_log10_product/l{layer}"] = float(np.nanmean(record.jacobian_log10_product[layer]))
        if record.lyapunov is not None:
            for k, exponent in enumerate(record.lyapunov[layer], 1):
                out[f"lyapunov/l{layer}/{k}"] = float(exponent)
    return out


def _stack(records: list[ProbeRecord], name: str) -> np.ndarray:
    """One (probe, ...) array of a per-record array field; a shorter window (a stream's or a
    chunked sequence's last chunk) padded with NaN, "not measured"; absent fields NaN."""
    arrays = [getattr(r, name) for r in records]
    present = [a for a in arrays if a is not None]
    if not present:
        return np.zeros((len(records), 0))
    shape = np.max([a.shape for a in present], axis=0)
    out = np.full((len(records), *shape), np.nan)
    for i, a in enumerate(arrays):
        if a is not None:
            out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def log_dh_matrix(records: list[ProbeRecord]) -> np.ndarray:
    """Every probe's log10 ||dL/dh|| as one (probe, layer, direction, time) array."""
    return _stack(records, "log_dh") if records else np.zeros((0, 0, 0, 0))


_ARRAYS = ("log_dh", "log_dh_p10", "log_dh_p90", "w_share", "spectral_radius", "max_singular",
           "jacobian_log10_sigma", "jacobian_log10_product", "lyapunov")


def save_records(records: list[ProbeRecord], path: str | os.PathLike[str], lyapunov_end: np.ndarray | None = None) -> None:
    """Every probe of a run in one compressed file: per probe the step, the (layer, direction,
    time) log10 norms with their batch percentiles and the W_hh lag shares, the global norms,
    clipping, the flags, the spectra, the Jacobian and Lyapunov arrays (NaN on probes that did
    not measure them) and the group norms; ``lyapunov_end``, the trained model's exponents
    (layers, k), when the run computed them at its end. ``dh`` is 10^log_dh, for older readers."""
    keys = sorted({k for r in records for k in r.weight_norms})
    arrays = {name: _stack(records, name) for name in _ARRAYS}
    np.savez_compressed(
        path,
        steps=np.array([r.step for r in records]),
        dh=np.power(10.0, arrays["log_dh"]),
        **arrays,
        grad_norm=np.array([r.grad_norm for r in records]),
        grad_norm_clipped=np.array([r.grad_norm_clipped for r in records]),
        clipped=np.array([r.clipped for r in records]),
        float32_underflow=np.array([r.float32_underflow for r in records]),
        unrepresentable=np.array([r.unrepresentable for r in records]),
        lyapunov_end=lyapunov_end if lyapunov_end is not None else np.zeros((0, 0)),
        weight_norm_keys=np.array(keys),
        weight_norms=np.array([[r.weight_norms.get(k, np.nan) for k in keys] for r in records]),
    )


def load_records(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
