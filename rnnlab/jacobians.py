"""The state Jacobian of every layer along a real trajectory, and Lyapunov exponents.

A layer is a map from its state before a step to its state after it, driven by its input:

    s_t = F(s_{t-1}, x_t)          s = the whole state tuple, concatenated: (h,) or, for an
                                   LSTM, (h, c): n = 2H (FGR adds its gates: (2 + S) H)
    J_t = ∂s_t / ∂s_{t-1}          (n, n), at the (x_t, s_{t-1}) the layer actually visited

Layer l's x_t is layer l-1's output at t, held fixed: J_t is the layer's own recurrence, the
factor that backpropagation through time multiplies dL/ds_t by at every step,
dL/ds_{t-1} = J_t^T dL/ds_t (plus what arrives from above). So

- ``top_singular``: σ_1(J_t), the most one step can stretch a gradient (or a perturbation);
- ``log10_product``: log10 ||J_T ⋯ J_1||_2, the most the whole window can. It is a product of
  T matrices, so it is formed with each factor and each partial product rescaled to unit
  Frobenius norm and the logs of the scales summed in float64: exact over any number of
  decades (a^T with a = 0.5 at T = 1000 is 10^-301, below float32's floor by 263 decades).

J_t is computed for every step at once, torch.func.vmap over the recorded (x_t, s_{t-1}) of
torch.func.jacrev of the cell's own one-step ``forward``, so it is the Jacobian of the function
the cell computes, for every cell. W_hh is never taken for the Jacobian: the weight spectra
(rnnlab.probe.spectra) describe W_hh, whose gate blocks, for a gated cell, are the Jacobian of
no map.

Lyapunov exponents (the QR or Benettin method: Benettin et al. 1980; for RNNs, Engelken, Wolf
& Abbott 2020, "Lyapunov spectra of chaotic recurrent neural networks", and Vogt et al. 2022,
"On Lyapunov exponents for RNNs: understanding information propagation using dynamical systems
tools"): an orthonormal frame Q (n, k) is carried along the trajectory and re-orthonormalised
every step,

    J_t Q_{t-1} = Q_t R_t   (QR),      λ_i = 1/(N - warmup) Σ_{t ≥ warmup} ln |R_t[i, i]|

so λ_1 ≥ … ≥ λ_k are the top k average exponential rates (natural log per step) at which the
dynamics stretch k-dimensional volumes, and the QR keeps the columns from all collapsing onto
the top direction. λ_1 > 0: perturbations, and gradients, grow over long horizons (chaos,
exploding gradients); λ_1 < 0: they shrink (vanishing gradients, fading memory). The first
``warmup`` steps let Q align with the dynamics and are not averaged. The driving input is the
data's (``long_input``): the exponents of a driven system depend on its input.

A Transformer has no state of fixed size (its cache of keys and values grows), so no J_t:
``unsupported`` says so. A bidirectional stack: the forward-direction layers only (the backward
cells run on the reversed sequence, a separate map); their inputs are the concatenated outputs
of both directions below, as in the model. Dropout is not applied (evaluation semantics).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from rnnlab.cells import Cell, State

# Points per vmapped chunk of Jacobians: 2^20 / n^2 (64 for a 64-unit LSTM, n = 128), so that
# jacrev's (n, points, 4H) intermediates stay in cache: 64 points took 8 ms per 48 against 13
# for 16 and, in float64 over 1000 steps, 2.5x less time than 256 did.
_JACOBIAN_ENTRIES = 1 << 20


def unsupported(model: nn.Module) -> str | None:
    """Why the Jacobian through time is not defined for ``model``, in one line; None when it is
    (every forward-direction layer then has a state of fixed size)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return f"{type(model).__name__} is not a stack of cells (no .layers): no state Jacobian"
    for index, cell in enumerate(layers):
        state = cell.init_state(1, torch.empty(1, device="meta"))
        if any(s.dim() != 2 for s in state):
            shapes = ", ".join(str(tuple(s.shape)) for s in state)
            return (
                f"layer {index}: {type(cell).__name__}'s state ({shapes} for one sample) is not a fixed-size "
                "vector carried from step to step, so it has no state Jacobian or Lyapunov exponents"
            )
    return None


def _check_supported(model: nn.Module) -> None:
    reason = unsupported(model)
    if reason is not None:
        raise ValueError(reason)


def _in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model, or a copy in ``dtype`` if its weights are in another (the model itself is
    left as it is: it may be mid-training)."""
    if all(t.dtype == dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()):
        return model
    return copy.deepcopy(model).to(dtype)


@torch.no_grad()
def layer_inputs(model: nn.Module, x: Tensor, state: list[State] | None = None) -> list[tuple[Tensor, list[State]]]:
    """Per forward-direction layer: (its input sequence (B, T, I), the state before each of its
    T steps), from the step path in x's dtype, without dropout. ``state``: every layer's
    initial state (default zeros, as the model's)."""
    _check_supported(model)
    state = model.init_state(x.size(0), x) if state is None else state
    backward_layers = getattr(model, "backward_layers", None) or [None] * len(model.layers)
    out = []
    for cell, back, s in zip(model.layers, backward_layers, state):
        before, hs = [], []
        for x_t in x.unbind(1):
            before.append(s)
            h, s = cell(x_t, s)
            hs.append(h)
        out.append((x, before))
        y = torch.stack(hs, 1)
        if back is not None:  # the layer above reads both directions, as in StackedRNN.features
            y_back, _ = back.scan(x.flip(1), back.init_state(x.size(0), x))
            y = torch.cat([y, y_back.flip(1)], 2)
        x = y
    return out


def step_jacobians(cell: Cell, inputs: Tensor, states: list[State]) -> Tensor:
    """J_t = ∂s_t/∂s_{t-1} of ``cell`` at every recorded point: inputs (B, T, I) and the T
    states before each step (layer_inputs) -> (B, T, n, n), n the concatenated state's size."""
    sizes = [s.size(-1) for s in states[0]]
    flat = torch.stack([torch.cat(s, -1) for s in states], 1)  # (B, T, n)
    B, T, n = flat.shape

    def step(s: Tensor, x_t: Tensor) -> Tensor:  # one point: s (n,), x_t (I,) -> s_t (n,)
        _, new = cell(x_t[None], tuple(part[None] for part in s.split(sizes)))
        return torch.cat(new, 1)[0]

    with torch.no_grad():  # the transforms differentiate inside; nothing else needs a graph
        jac = vmap(jacrev(step), chunk_size=max(1, _JACOBIAN_ENTRIES // (n * n)))
        return jac(flat.reshape(B * T, n), inputs.reshape(B * T, -1)).view(B, T, n, n)


def state_jacobians(
    model: nn.Module, x: Tensor, dtype: torch.dtype = torch.float64, state: list[State] | None = None
) -> list[Tensor]:
    """Every forward-direction layer's J_t along the trajectory of x (B, T, I) from ``state``
    (every layer's; default zeros): a list of (B, T, n, n), computed in ``dtype``."""
    model = _in_dtype(model, dtype)
    if state is not None:
        state = [tuple(s.detach().to(dtype) for s in layer) for layer in state]
    runs = layer_inputs(model, x.to(dtype), state)
    return [step_jacobians(cell, inputs, states) for cell, (inputs, states) in zip(model.layers, runs)]


def top_singular_values(jacobians: Tensor) -> Tensor:
    """σ_1 of every matrix of (…, n, n), float64 (…): the square root of the largest
    eigenvalue of M M^T, M = J / ||J||_F (so the Gram cannot overflow), times ||J||_F.

    Why not the SVD: LAPACK's eigenvalues of a symmetric matrix took 0.4 ms per 128 x 128 LSTM
    Jacobian here against 0.8 for its singular values, and this is most of jacobian_norms'
    cost (Lanczos was no cheaper: 32 steps to reach 2e-7, 0.25 ms). The largest eigenvalue's error is eps ||M M^T||, so σ_1 keeps full precision (the
    small singular values would not: they are not used)."""
    scale = torch.linalg.matrix_norm(jacobians, keepdim=True)  # Frobenius, (…, 1, 1)
    m = jacobians / scale.clamp_min(torch.finfo(jacobians.dtype).tiny)
    top = torch.linalg.eigvalsh(m @ m.mT)[..., -1].clamp_min(0).double().sqrt()
    return top * scale[..., 0, 0].double()


def log10_product_norm(jacobians: Tensor) -> Tensor:
    """log10 ||J_T ⋯ J_1||_2 of (…, T, n, n) (time on dim -3, J_1 first), float64 (…).

    Pairwise, as a tree: log2(T) batched products instead of T - 1 sequential ones. Before each
    level every matrix is divided by its Frobenius norm and the norm's log kept, so nothing
    under- or overflows; a zero factor gives -inf (nothing passes), never NaN."""
    m = jacobians
    logs = torch.zeros(m.shape[:-3], dtype=torch.float64, device=m.device)
    while True:
        scale = torch.linalg.matrix_norm(m, keepdim=True)  # Frobenius, (…, T, 1, 1)
        logs = logs + torch.log10(scale.double()).sum((-3, -2, -1))
        m = m / scale.clamp_min(torch.finfo(m.dtype).tiny)
        if m.size(-3) == 1:
            return logs + torch.log10(torch.linalg.matrix_norm(m[..., 0, :, :], ord=2).double())
        odd = m[..., -1:, :, :] if m.size(-3) % 2 else None  # the latest factor waits a level
        even = m[..., : m.size(-3) - (odd is not None), :, :]
        m = even[..., 1::2, :, :] @ even[..., 0::2, :, :]  # later @ earlier
        if odd is not None:
            m = torch.cat([m, odd], -3)


@dataclass
class JacobianNorms:
    """Per forward-direction layer and sample, along the probed batch's trajectory."""

    top_singular: np.ndarray  # (layers, samples, T): σ_1(J_t)
    log10_product: np.ndarray  # (layers, samples): log10 ||J_T ⋯ J_1||_2


def jacobian_norms(
    model: nn.Module, x: Tensor, samples: int = 1, dtype: torch.dtype = torch.float32, state: list[State] | None = None
) -> JacobianNorms:
    """σ_1(J_t) at every step and log10 of the window product's norm, for the trajectories of
    the first ``samples`` rows of x (B, T, I) from ``state`` (every layer's initial state, as a
    truncation window or a carried stream starts; default zeros), computed in ``dtype``.

    Cost, for a 4 x 64 LSTM (n = 128) over 48 steps, samples=1, float32, one CPU thread:
    ~130 ms, 3.5-4x a training step of B = 64. The Jacobians are n vjps at each point (2x the
    sample-steps of the training backward when n = 2B), 27 ms; σ_1, one 128 x 128 eigenproblem
    per step, 80 ms; the product 16 ms; the trajectory 6 ms. Each grows with samples."""
    _check_supported(model)
    if not 1 <= samples <= x.size(0):
        raise ValueError(f"samples={samples} is out of range (allowed: 1 to the batch's {x.size(0)} rows)")
    top, product = [], []
    if state is not None:
        state = [tuple(s[:samples] for s in layer) for layer in state]
    for jac in state_jacobians(model, x[:samples], dtype, state):  # (samples, T, n, n)
        top.append(top_singular_values(jac).cpu().numpy())
        product.append(log10_product_norm(jac).cpu().numpy())
    return JacobianNorms(top_singular=np.stack(top), log10_product=np.stack(product))


def long_input(x: Tensor, steps: int) -> Tensor:
    """(1, steps, I): the batch's windows x (B, T, I) one after another in time, cut at
    ``steps`` (at most B * T).

    Why: Lyapunov exponents are averages over one long trajectory (hundreds to thousands of
    steps, more than a window), and a driven network's exponents depend on what drives it, so
    the drive should be the data's. Concatenated windows are the data's inputs; where one
    window ends and the next begins the input jumps, which the state carries across as it would
    a surprising input."""
    available = x.size(0) * x.size(1)
    if not 1 <= steps <= available:
        raise ValueError(
            f"steps={steps} is out of range (allowed: 1 to the batch's {x.size(0)} x {x.size(1)} = {available})"
        )
    return x.reshape(1, available, x.size(2))[:, :steps]


def lyapunov_exponents(model: nn.Module, x: Tensor, k: int, warmup: int) -> np.ndarray:
    """(layers, k): the top k Lyapunov exponents (natural log per step) of every
    forward-direction layer driven by x (1, N, I) (layer l by layer l-1's outputs), by the QR
    method, averaged over steps warmup .. N-1. Float64 throughout."""
    _check_supported(model)
    if x.dim() != 3 or x.size(0) != 1:
        raise ValueError(f"x has shape {tuple(x.shape)}: one long sequence (1, N, I) is allowed (see long_input)")
    N = x.size(1)
    n = sum(s.size(-1) for s in model.layers[0].init_state(1, torch.empty(1, device="meta")))  # every layer's
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is out of range (allowed: 1 to the state size {n})")
    if not 0 <= warmup < N:
        raise ValueError(f"warmup={warmup} is out of range (allowed: 0 to N - 1 = {N - 1}, N the steps of x)")
    model = _in_dtype(model, torch.float64)
    chunk = max(1, _JACOBIAN_ENTRIES // (n * n))  # steps of Jacobians held at once
    generator = torch.Generator().manual_seed(0)  # the start frame: any will do after warmup
    out = []
    for cell, (inputs, states) in zip(model.layers, layer_inputs(model, x.double())):
        q = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=generator).to(x.device)).Q
        total = torch.zeros(k, dtype=torch.float64, device=x.device)
        for start in range(0, N, chunk):
            jac = step_jacobians(cell, inputs[:, start : start + chunk], states[start : start + chunk])[0]
            for t, j_t in enumerate(jac.unbind(0), start):
                q, r = torch.linalg.qr(j_t @ q)
                if t >= warmup:
                    total += torch.log(r.diagonal().abs())
        out.append((total / (N - warmup)).cpu().numpy())
    return np.stack(out)
