"""Recurrent cells: one time step each, behind one interface.

Every cell is an ``nn.Module`` with

    forward(x_t, state) -> (h_t, state)     one step; x_t (B, I), h_t (B, H), state a tuple of (B, H)
    init_state(batch, like) -> state         zeros, on the device and dtype of ``like``
    scan(x, state) -> (outputs, state)       a whole (B, T, I) sequence; outputs (B, T, H)

so that the stack, the training loop and the gradient probe never branch on the cell type.
``scan`` defaults to the step loop; the standard cells (rnn, lstm, gru) override it with
PyTorch's fused kernels (cuDNN on a GPU) over the *same* parameters, so the step path stays
available as an exact, readable reference (``step_scan``).

The equations are ../shared/spec/CELLS.md's. Parameters use PyTorch's layout (gates stacked
along dim 0 of one matrix, in PyTorch's gate order) so the fused kernels can read them directly.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


def step_scan(cell: "Cell", x: Tensor, state: State) -> tuple[Tensor, State]:
    """Run ``cell`` one step at a time over x (B, T, I): the reference path for every cell."""
    outputs = []
    # unbind, not x[:, t]: each select's backward would allocate the whole of x (O(T^2)).
    for x_t in x.unbind(1):
        h_t, state = cell(x_t, state)
        outputs.append(h_t)
    return torch.stack(outputs, 1), state


class Cell(nn.Module):
    """What every cell shares: its sizes, zero initial state, and the step loop as ``scan``."""

    n_states = 1  # how many (B, H) tensors the state holds: (h,) or (h, c)

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def init_state(self, batch: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch, self.hidden_size) for _ in range(self.n_states))

    def scan(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return step_scan(self, x, state)


class _Fused(Cell):
    """A cell whose parameters live in a one-layer torch.nn.RNN/LSTM/GRU, run fused by ``scan``.

    The spec's rnn and lstm have one bias per gate; the fused kernels add two (b_ih + b_hh).
    The redundant b_hh is frozen at zero (``fold_bias``) so the trainable parameter count and
    the function are the spec's; gru keeps both, since its b_hn sits inside r * (W_hn h + b_hn).
    """

    def __init__(self, fused: nn.RNNBase, fold_bias: bool) -> None:
        super().__init__(fused.input_size, fused.hidden_size)
        self.fused = fused
        if fold_bias:
            with torch.no_grad():
                fused.bias_hh_l0.zero_()
            fused.bias_hh_l0.requires_grad_(False)

    # Readable names for the step equations; the tensors are the fused module's own.
    @property
    def weight_ih(self) -> Tensor:
        return self.fused.weight_ih_l0

    @property
    def weight_hh(self) -> Tensor:
        return self.fused.weight_hh_l0

    @property
    def bias_ih(self) -> Tensor:
        return self.fused.bias_ih_l0

    @property
    def bias_hh(self) -> Tensor:
        return self.fused.bias_hh_l0

    def scan(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        hx = tuple(s.unsqueeze(0) for s in state)  # fused kernels want (layers, B, H)
        outputs, hn = self.fused(x, hx if len(hx) > 1 else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return outputs, tuple(s.squeeze(0) for s in hn)


class RNN(_Fused):
    """Elman RNN: h_t = f(W_xh x_t + W_hh h_{t-1} + b_h), f = tanh or relu."""

    def __init__(
        self, input_size: int, hidden_size: int, nonlinearity: Literal["tanh", "relu"] = "tanh"
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"cell.nonlinearity={nonlinearity!r}: allowed tanh, relu")
        super().__init__(
            nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True),
            fold_bias=True,
        )
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        h = self.activation(F.linear(x_t, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh))
        return h, (h,)


class LSTM(_Fused):
    """LSTM (seeds 000-002): input, forget, output gates and a cell state c."""

    n_states = 2

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__(nn.LSTM(input_size, hidden_size, batch_first=True), fold_bias=True)
        if not math.isfinite(forget_bias):
            raise ValueError(f"cell.forget_bias={forget_bias!r}: must be a finite number")
        # Forget-gate bias 1 (Jozefowicz et al. 2015; Keras' default): remember by default.
        with torch.no_grad():
            self.bias_ih[hidden_size : 2 * hidden_size].fill_(forget_bias)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        gates = F.linear(x_t, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh)
        i, f, g, o = gates.chunk(4, 1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class GRU(_Fused):
    """GRU in the fused-kernel convention (PyTorch, cuDNN, Keras reset_after=True).

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z likewise,
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}.
    Not seed 002's GRU, which applies r before the product (a different function).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(nn.GRU(input_size, hidden_size, batch_first=True), fold_bias=False)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        x_r, x_z, x_n = F.linear(x_t, self.weight_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)


CELLS: dict[str, type[Cell]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
