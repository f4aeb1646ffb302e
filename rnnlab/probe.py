"""The gradient probe: ||dL/dh^l_t|| per layer and time step, weight-gradient norms per
parameter group and gate, the global norm before and after clipping, and the recurrent
matrices' spectral radius and largest singular value (Pascanu et al. 2013). Plain torch;
returns arrays.

What is measured (docs/maths.md): the *total* derivative of the loss with respect to each
layer's hidden state h^l_t, on every path, both up through the layers above and back through
time. For each sample the L2 norm over the h units; then the mean over the batch.

How, exactly, even for fused kernels. Retaining the gradient of a fused layer's output
sequence gives only the part that flows up through the next layer: the part that flows back
through time stays inside the kernel. So on a probed step the training forward scans every
layer through ``Probe.scan`` (the scan hook StackedRNN.features takes), which hands the
layer's ``scan`` a *tap*: a (T, B, H) buffer its backward fills with the total dL/dh_t
(rnnlab/cells.py). The hand-written backwards form that sum at every step anyway, and a fused
cell runs its hand-written twin (the same function, tested equal) for that one step. Every
step is exact, for one copy per step; ``resolution`` k keeps every k-th step, counted back
from the window's last (the others are NaN: not kept). The probed step is the training step
itself (no extra forward or backward) and truncated BPTT is training's own
(rnnlab/train.py): steps before the truncation window get no gradient and read 0.

Weights are grouped as each cell declares them (``Cell.weight_groups``): input, recurrent,
bias, peephole, gate_recurrent, and "other" for any parameter a cell does not declare; keys
name the gate, "l1.recurrent.f" (layer 1's forget-gate rows of W_hh).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnlab.cells import Cell, State, Tap


@dataclass
class ProbeRecord:
    step: int
    dh: np.ndarray  # (layers, directions, T) mean over the batch of ||dL/dh^l_t||; NaN: not measured
    weight_norms: dict[str, float]  # "l0.recurrent", "l0.recurrent.f", "l0b.input.i", ... -> ||dL/dW||
    grad_norm: float  # global, before clipping
    grad_norm_clipped: float  # after
    clipped: bool
    spectral_radius: np.ndarray  # (layers,) of the recurrent matrix (max over gate blocks); NaN: none, or not this step
    max_singular: np.ndarray  # (layers,)

    def payload(self) -> dict[str, Any]:
        """Tensors and plain values only, so a checkpoint holding it loads with weights_only."""
        return {
            k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in vars(self).items()
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "ProbeRecord":
        return cls(**{k: v.numpy() if torch.is_tensor(v) else v for k, v in payload.items()})


@dataclass
class Probe:
    """Decides which steps are probed, taps their forward (``scan``) and turns them into
    ProbeRecords (kept in ``records``).

        probe = Probe(every=10)
        out, state = rnnlab.train.forward(model, x, state, carry, truncation, run=probe.scan)
        loss_of(out, y).backward()
        record = probe.record(model, step, max_norm, length=x.size(1))   # before clipping
    """

    every: int  # probe every ``every`` optimiser steps; 0 = never
    resolution: int = 1  # keep ||dL/dh_t|| at every ``resolution``-th step back from the last (1: all)
    # Spectra on probed steps that are multiples of this (NaN on the others). They are the one
    # costly part of a probe: a batched eig + svd of every gate block, ~15 ms for 4 x 64 on one
    # CPU thread, more than all the rest; and they describe weights, which move slowly.
    spectra_every: int = 1
    records: list[ProbeRecord] = field(default_factory=list)
    # (layer, direction) -> the tap of the forward in flight: dL/dh, (window, B, H)
    _taps: dict[tuple[int, int], Tensor] = field(default_factory=dict, init=False, repr=False)
    # (layer, direction) -> <C_t, dL/dW_hh>_F per step t of that forward, (window,) float64, in
    # the cell's time (a backward direction's reversed); NaN where the cell cannot say (bptt.Tap)
    _lags: dict[tuple[int, int], Tensor] = field(default_factory=dict, init=False, repr=False)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def scan(self, cell: Cell, x: Tensor, state: State, layer: int, direction: int) -> tuple[Tensor, State]:
        """The scan hook of a probed forward (rnnlab.model.Scan): one layer's scan, tapped."""
        tap = Tap(x.new_zeros(x.size(1), x.size(0), cell.hidden_size),
                  x.new_full((x.size(1),), math.nan, dtype=torch.float64))
        self._taps[layer, direction], self._lags[layer, direction] = tap
        return cell.scan(x, state, tap)

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
        record = ProbeRecord(
            step=step, dh=self._dh(model, length), weight_norms=weight_norms(model), grad_norm=grad_norm,
            grad_norm_clipped=min(grad_norm, max_norm), clipped=grad_norm > max_norm,
            spectral_radius=radius, max_singular=singular,
        )
        self.records.append(record)
        self._taps = {}
        return record

    def _dh(self, model: nn.Module, length: int | None) -> np.ndarray:
        """(layers, directions, T) of ||dL/dh_t|| from the taps: 0 before the window, NaN where not kept."""
        window = next(iter(self._taps.values())).size(0)
        T = window if length is None else length
        offset = T - window  # the steps before the truncation window: no gradient reaches them
        directions = 2 if getattr(model, "backward_layers", None) is not None else 1
        dh = np.full((len(model.layers), directions, T), np.nan)
        dh[:, :, :offset] = 0.0
        kept = np.arange(window - 1, -1, -self.resolution)  # every k-th step back from the last
        for (layer, direction), tap in self._taps.items():
            norms = tap.double().norm(dim=-1).mean(1).cpu().numpy()  # (window,), in the cell's time
            norms = norms if direction == 0 else norms[::-1]  # the backward cell ran reversed
            dh[layer, direction, offset + kept] = norms[kept]
        return dh


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
    """Per layer: the spectral radius and largest singular value of its recurrent matrix (the
    largest over its gate blocks; for a vector recurrence, max |u|). NaN where a cell declares
    none (a Transformer).

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

def summary_metrics(record: ProbeRecord) -> dict[str, float]:
    """A few stable keys per layer that chart well across runs: the norm at the first and at
    the last step of the window, the vanishing factor log10(first/last) (negative: the
    gradient shrinks going back in time), recurrent and input weight-gradient norms, the
    recurrent one per gate (``grad_w/l1/recurrent/f``), and the recurrent matrix's spectral
    radius. Everything else goes to the npz artifact."""
    out = {"probe/grad_norm": record.grad_norm, "probe/clipped": float(record.clipped)}
    for layer in range(record.dh.shape[0]):
        measured = record.dh[layer, 0][np.isfinite(record.dh[layer, 0]) & (record.dh[layer, 0] > 0)]
        if len(measured):
            first, last = measured[0], measured[-1]
            out[f"grad_h_first/l{layer}"] = float(first)
            out[f"grad_h_last/l{layer}"] = float(last)
            out[f"vanishing/l{layer}"] = float(np.log10(first / last))
        for group in ("input", "recurrent"):
            if f"l{layer}.{group}" in record.weight_norms:
                out[f"grad_w_{group}/l{layer}"] = record.weight_norms[f"l{layer}.{group}"]
        per_gate = f"l{layer}.recurrent."
        for key, value in record.weight_norms.items():
            if key.startswith(per_gate):
                out[f"grad_w/l{layer}/recurrent/{key[len(per_gate):]}"] = value
        if np.isfinite(record.spectral_radius[layer]):
            out[f"spectral_radius/l{layer}"] = float(record.spectral_radius[layer])
    return out


def dh_matrix(records: list[ProbeRecord]) -> np.ndarray:
    """Every probe's ||dL/dh|| as one (probe, layer, direction, time) array. A shorter window
    (a stream's or a chunked sequence's last chunk) is padded with NaN, "not measured"."""
    if not records:
        return np.zeros((0, 0, 0, 0))
    T = max(r.dh.shape[-1] for r in records)
    return np.stack([np.pad(r.dh, [(0, 0), (0, 0), (0, T - r.dh.shape[-1])], constant_values=np.nan) for r in records])


def save_records(records: list[ProbeRecord], path: str | os.PathLike[str]) -> None:
    """Every probe of a run in one compressed file: the (probe, layer, direction, time)
    matrix of ||dL/dh||, and per probe the step, norms, clipping, spectra and group norms."""
    keys = sorted({k for r in records for k in r.weight_norms})
    np.savez_compressed(
        path,
        steps=np.array([r.step for r in records]),
        dh=dh_matrix(records),
        grad_norm=np.array([r.grad_norm for r in records]),
        grad_norm_clipped=np.array([r.grad_norm_clipped for r in records]),
        clipped=np.array([r.clipped for r in records]),
        spectral_radius=np.stack([r.spectral_radius for r in records]) if records else np.zeros((0, 0)),
        max_singular=np.stack([r.max_singular for r in records]) if records else np.zeros((0, 0)),
        weight_norm_keys=np.array(keys),
        weight_norms=np.array([[r.weight_norms.get(k, np.nan) for k in keys] for r in records]),
    )


def load_records(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
