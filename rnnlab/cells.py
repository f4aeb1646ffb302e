"""Recurrent cells: one time step each, behind one interface.

Every cell is an ``nn.Module`` with

    forward(x_t, state) -> (h_t, state)     one step; x_t (B, I), h_t (B, H), state a tuple of tensors
    init_state(batch, like) -> state         zeros, on the device and dtype of ``like``
    scan(x, state, tap=None) -> (outputs, state)   a whole (B, T, I) sequence; outputs (B, T, H)
    weight_groups() -> [Weight]              its weights by role, and the gate of every row block
    readout                                  how the run fits it: "gradient" (train) or "ridge" (fit_ridge)

so that the stack, the training loop and the gradient probe never branch on the cell type.
``forward`` is the readable reference: the gate math (docs/maths.md) in plain view.
``scan`` runs the same function fast:

- rnn, lstm, gru: PyTorch's fused kernels (cuDNN on a GPU) over the same parameters;
- peephole, cifg, lstm_variant, gru_classic, indrnn: one autograd function per layer whose
  backward through time is written by hand (rnnlab/bptt.py), tested against ``step_scan``;
- esn: the step loop (its reservoir is frozen, so there is no backward to speed up);
- transformer: masked attention over the whole sequence at once.

``step_scan`` (the step loop over ``forward``) computes the same function for every cell, with
every h_t a node of the autograd graph.

``tap``: a ``Tap`` (rnnlab/bptt.py), or None. When given, the backward pass writes into
``tap.dh`` (T, B, H) the total derivative dL/dh_t of every step, on every path (up through the
layers above and back through time): what the gradient probe measures. The hand-written
backwards hold it in hand, so a tapped fused cell runs its hand-written twin (bptt.Elman,
bptt.GRU, and for lstm bptt.GatedLSTM with the gates reordered: the same function) instead of
the kernel, whose time path is hidden; the step loop reads it with a hook on each h_t; a
transformer's output has no time path.

``tap.w_lag`` (T,) float64, if given, gets each step's term of the recurrent weight's gradient
projected on the total, <C_t, dL/dW_hh>_F (bptt's docstring): from the hand-written backwards
only, for the tensor the recurrence multiplies by (IndRNN's applied u, not the trained v).
The step loop (esn, a Cell without a scan of its own) and the transformer (no W_hh) leave it
NaN: not measured.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rnnlab import bptt
from rnnlab.bptt import Tap

State = tuple[Tensor, ...]


def step_scan(cell: "Cell", x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
    """Run ``cell`` one step at a time over x (B, T, I): the reference path for every cell."""
    outputs = []
    # unbind, not x[:, t]: each select's backward would allocate the whole of x (O(T^2)).
    for x_t in x.unbind(1):
        h_t, state = cell(x_t, state)
        outputs.append(h_t)
    if tap is not None:
        if tap.w_lag is not None:  # per-step terms of dW_hh are not separable here: not measured
            tap.w_lag.fill_(math.nan)
        # A hook on a non-leaf tensor gets its gradient summed over every use: here the
        # output (to the layer above) and the next step's state, i.e. the total dL/dh_t.
        for h_t, into in zip(outputs, tap.dh.unbind(0)):
            if h_t.requires_grad:  # not in a frozen reservoir
                h_t.register_hook(functools.partial(_write, into))
    return torch.stack(outputs, 1), state


def _write(into: Tensor, grad: Tensor) -> None:
    """A gradient hook that copies the gradient out (returning None leaves it unchanged)."""
    into.copy_(grad)


def _choice(key: str, value: object, allowed: tuple) -> None:
    """The one-line error for an option outside its Literal (the config checks it too; this
    guards Python callers)."""
    if value not in allowed:
        raise ValueError(f"cell.{key}={value!r} is not allowed (allowed: {', '.join(map(str, allowed))})")


class Weight(NamedTuple):
    """One weight tensor a cell declares, for the gradient probe (rnnlab/probe.py).

    group: its role, one of ``GROUPS``. gates: the names of its row blocks along dim 0, in the
    order the cell stacks them (its forward's ``chunk``), () when it is not split into gates.
    applied: what the recurrence multiplies by when a parametrisation maps the trained tensor
    to it (IndRNN's bounded u = u_max tanh(v)); None when that is ``tensor`` itself.
    """

    group: str
    tensor: Tensor
    gates: tuple[str, ...] = ()
    applied: Tensor | None = None


# input: W_ih (W_in); recurrent: W_hh, or IndRNN's vector u; bias; peephole: the diagonal p's;
# gate_recurrent: FGR's matrix from the last step's gates to this step's. The probe sums any
# trainable parameter a cell does not declare (a Transformer's) into "other".
GROUPS = ("input", "recurrent", "bias", "peephole", "gate_recurrent")


class Cell(nn.Module):
    """What every cell shares: its sizes, zero initial state, and the step loop as ``scan``.

    A cell declares its weights with ``weight_groups()`` (the probe reads norms and spectra
    from it, never from attribute names), and how it is fitted with ``readout``: "gradient",
    the training loop (rnnlab.train.train); "ridge", a closed-form readout with nothing in the
    recurrence trained (rnnlab.train.fit_ridge; an echo state network). The run picks one from
    ``model.layers[0].readout``.
    """

    n_states = 1  # how many (B, H) tensors the state holds: (h,) or (h, c)
    readout: str = "gradient"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def init_state(self, batch: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch, self.hidden_size) for _ in range(self.n_states))

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        return step_scan(self, x, state, tap)

    def weight_groups(self) -> list[Weight]:
        """Every weight by role (``GROUPS``), with the gate of each row block."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its weights (Cell.weight_groups)")

    def init_top_layer(self) -> None:
        """Called by StackedRNN on its top layer (each direction) once the stack is built: a
        cell whose top layer starts differently re-initialises here (IndRNN's u_init_top).
        Most cells do nothing, and draw no random numbers."""

    def project_(self) -> None:
        """Called after every optimiser step (rnnlab.train.make_optimizer's hook): weights
        that must stay in a set go back into it (IndRNN's bound=clip). Most cells do nothing."""


# ------------------------------------------------------------------------------ initialisation

RecurrentInit = Literal["default", "orthogonal"]


def init_recurrent(weight: Tensor, how: str) -> None:
    """Re-initialise each gate's square (H, H) block of a stacked recurrent matrix (G*H, H).

    default: PyTorch's U(-1/sqrt(H), 1/sqrt(H)), left as it is. orthogonal: every block an
    orthogonal matrix (Saxe et al. 2014), so h_{t-1} -> W h_{t-1} preserves norms at init.
    identity: W = I, the IRNN of Le et al. 2015 (with relu and zero bias, h carries over unchanged).
    """
    with torch.no_grad():
        for block in weight.split(weight.size(1), 0):
            if how == "orthogonal":
                nn.init.orthogonal_(block)
            elif how == "identity":
                block.copy_(torch.eye(weight.size(1)))


def init_forget_bias(b_i: Tensor | None, b_f: Tensor | None, forget_bias: float, chrono: int) -> None:
    """Bias the cell towards remembering (f near 1) at the start of training.

    forget_bias: b_f = forget_bias (1: Jozefowicz et al. 2015, Keras' default).
    chrono > 0: chrono init (Tallec & Ollivier 2018), b_f = log(U(1, chrono - 1)), b_i = -b_f,
    so the cell's memory time scales spread up to ``chrono`` steps.
    Either bias may be absent (a variant without that gate); a coupled cell (f = 1 - i) passes
    its input bias negated as ``b_f``, since 1 - σ(a) = σ(-a).
    """
    if not math.isfinite(forget_bias):
        raise ValueError(f"cell.forget_bias={forget_bias!r}: must be a finite number")
    if chrono < 0 or chrono == 1:
        raise ValueError(f"cell.chrono={chrono}: allowed 0 (off) or the longest dependency in steps (>= 2)")
    with torch.no_grad():
        like = b_f if b_f is not None else b_i
        if chrono:
            value = torch.log(torch.empty_like(like).uniform_(1, max(chrono - 1, 1)))
        else:
            value = torch.full_like(like, forget_bias)
        if b_f is not None:
            b_f.copy_(value)
        if b_i is not None and chrono:
            b_i.copy_(-value)


def _pytorch_default_(params: list[Tensor], hidden_size: int) -> None:
    """torch.nn.RNN/LSTM/GRU's initialisation: every weight and bias U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1 / math.sqrt(hidden_size)
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)


# ------------------------------------------------------------------------------- fused cells


class _Fused(Cell):
    """A cell whose parameters live in a one-layer torch.nn.RNN/LSTM/GRU, run fused by ``scan``.

    The spec's rnn and lstm have one bias per gate; the fused kernels add two (b_ih + b_hh).
    The redundant b_hh is frozen at zero (``fold_bias``) so the trainable parameter count and
    the function are the spec's; gru keeps both, since its b_hn sits inside r * (W_hn h + b_hn).
    """

    GATES: tuple[str, ...] = ()  # the kernel's gate order along dim 0 (rnn: no gates)

    def __init__(self, fused: nn.RNNBase, fold_bias: bool, recurrent_init: str) -> None:
        super().__init__(fused.input_size, fused.hidden_size)
        self.fused = fused
        if fold_bias:
            with torch.no_grad():
                fused.bias_hh_l0.zero_()
            fused.bias_hh_l0.requires_grad_(False)
        init_recurrent(fused.weight_hh_l0, recurrent_init)

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

    def weight_groups(self) -> list[Weight]:
        biases = [self.bias_ih] + ([self.bias_hh] if self.bias_hh.requires_grad else [])  # not a folded one
        return [
            Weight("input", self.weight_ih, self.GATES),
            Weight("recurrent", self.weight_hh, self.GATES),
            *(Weight("bias", b, self.GATES) for b in biases),
        ]

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        if tap is not None:  # the kernel hides the path through time: the subclasses run their twin
            return step_scan(self, x, state, tap)
        hx = tuple(s.unsqueeze(0) for s in state)  # fused kernels want (layers, B, H)
        outputs, hn = self.fused(x, hx if len(hx) > 1 else hx[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        return outputs, tuple(s.squeeze(0) for s in hn)


class RNN(_Fused):
    """Elman RNN: h_t = f(W_xh x_t + W_hh h_{t-1} + b_h), f = tanh or relu.

    ``recurrent_init=identity`` with relu is the IRNN (Le et al. 2015): W_hh = I, b_h = 0.
    ``recurrent_gain`` scales W_hh after its init: with orthogonal or identity the spectral
    radius is the gain, and above 1 a tanh RNN's gradients can explode (Pascanu et al. 2013:
    a largest singular value above 1 is necessary for it)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        recurrent_init: Literal["default", "orthogonal", "identity"] = "default",
        recurrent_gain: float = 1.0,
    ) -> None:
        _choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        _choice("recurrent_init", recurrent_init, ("default", "orthogonal", "identity"))
        if not (math.isfinite(recurrent_gain) and recurrent_gain > 0):
            raise ValueError(f"cell.recurrent_gain={recurrent_gain!r} is out of range (allowed: a finite number > 0)")
        fused = nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True)
        super().__init__(fused, fold_bias=True, recurrent_init=recurrent_init)
        if recurrent_init == "identity":
            with torch.no_grad():
                self.bias_ih.zero_()
        if recurrent_gain != 1.0:
            with torch.no_grad():
                self.weight_hh.mul_(recurrent_gain)
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        h = self.activation(F.linear(x_t, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh))
        return h, (h,)

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        if tap is None:
            return super().scan(x, state)
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias_ih + self.bias_hh)  # (T, B, H)
        hs = bptt.Elman.apply(xp, state[0], self.weight_hh, self.activation is torch.relu, tap)
        return hs.transpose(0, 1), (hs[-1],)


class LSTM(_Fused):
    """LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000): input,
    forget, output gates and a cell state c."""

    n_states = 2
    GATES = ("i", "f", "g", "o")  # PyTorch's order

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 1.0,
        chrono: int = 0,
        recurrent_init: RecurrentInit = "default",
    ) -> None:
        _choice("recurrent_init", recurrent_init, ("default", "orthogonal"))
        super().__init__(nn.LSTM(input_size, hidden_size, batch_first=True), True, recurrent_init)
        b_i, b_f, _, _ = self.bias_ih.split(hidden_size)  # PyTorch's gate order: i, f, g, o
        init_forget_bias(b_i, b_f, forget_bias, chrono)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        gates = F.linear(x_t, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        if tap is None:
            return super().scan(x, state)
        # The same LSTM through the hand-written backward, which has every dL/dh_t in hand
        # (2-3x cheaper than the step loop). It stacks gates i, f, o | g; PyTorch i, f, g, o.
        H = self.hidden_size
        order = torch.cat([torch.arange(2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)]).to(x.device)
        return _gated_scan(
            x, state, self.weight_ih[order], (self.bias_ih + self.bias_hh)[order], self.weight_hh[order],
            None, None, (frozenset({"NP"}), ("i", "f", "o"), 2), tap,
        )


class GRU(_Fused):
    """GRU in the fused-kernel convention (PyTorch, cuDNN, Keras reset_after=True).

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z likewise,
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}.
    Not the GRU of Cho et al. 2014, which applies r before the product (that is ``GRUClassic``).
    """

    GATES = ("r", "z", "n")

    def __init__(self, input_size: int, hidden_size: int, recurrent_init: RecurrentInit = "default") -> None:
        _choice("recurrent_init", recurrent_init, ("default", "orthogonal"))
        super().__init__(nn.GRU(input_size, hidden_size, batch_first=True), False, recurrent_init)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        x_r, x_z, x_n = F.linear(x_t, self.weight_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        if tap is None:
            return super().scan(x, state)
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias_ih)  # (T, B, 3H)
        hs = bptt.GRU.apply(xp, state[0], self.weight_hh, self.bias_hh, tap)
        return hs.transpose(0, 1), (hs[-1],)


# ------------------------------------------------------------------------------- loop cells


class _GatedLSTM(Cell):
    """The LSTM family of Greff et al. 2017 behind flags; ``Peephole``, ``CIFG`` and
    ``LSTMVariant`` choose the flags. Gates are stacked in the order i, f, o, g (only those the
    variant has), so the sigmoid gates are one contiguous block for the fast path.

        i = σ(W_i x + R_i h + p_i ⊙ c_{t-1} + b_i)       NIG: i = 1
        f = σ(W_f x + R_f h + p_f ⊙ c_{t-1} + b_f)       NFG: f = 1;   CIFG: f = 1 - i
        g = tanh(W_g x + R_g h + b_g)                    NIAF: g = its pre-activation
        c = f ⊙ c_{t-1} + i ⊙ g
        o = σ(W_o x + R_o h + p_o ⊙ c_t + b_o)           NOG: o = 1;   peek at c_{t-1}: output_reads
        h = o ⊙ tanh(c)                                  NOAF: h = o ⊙ c
    NP: no peepholes p. FGR: the sigmoid gates also read the previous step's sigmoid gate
    activations through a full matrix, so the state carries them: (h, c, i, f, o).
    """

    FLAGS = ("NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        flags: frozenset[str],
        output_reads: str,
        forget_bias: float,
        chrono: int,
        recurrent_init: str,
    ) -> None:
        super().__init__(input_size, hidden_size)
        _choice("recurrent_init", recurrent_init, ("default", "orthogonal"))
        _choice("output_reads", output_reads, ("c_t", "c_prev"))
        self.flags = flags
        self.sigmoid_gates = [g for g, off in (("i", "NIG"), ("f", "NFG"), ("o", "NOG")) if off not in flags]
        if "CIFG" in flags:
            self.sigmoid_gates.remove("f")
        self.gates = self.sigmoid_gates + ["g"]
        # The sigmoid gates computed before c_t (reading c_{t-1}): i, f, and o if it peeks at c_{t-1}.
        self.n_early = sum(g != "o" or output_reads == "c_prev" for g in self.sigmoid_gates)
        H, G, S = hidden_size, len(self.gates), len(self.sigmoid_gates)
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H))
        self.bias = nn.Parameter(torch.empty(G * H))
        params = [self.weight_ih, self.weight_hh, self.bias]
        self.peephole = None if "NP" in flags else nn.Parameter(torch.empty(S, H))  # p_i, p_f, p_o
        self.weight_ss = nn.Parameter(torch.empty(S * H, S * H)) if "FGR" in flags else None
        params += [p for p in (self.peephole, self.weight_ss) if p is not None]
        _pytorch_default_(params, H)
        init_recurrent(self.weight_hh, recurrent_init)
        b = dict(zip(self.gates, self.bias.split(H)))
        b_f = b["i"] if "CIFG" in flags else b.get("f")  # CIFG: f = 1 - σ(a_i) = σ(-a_i)
        init_forget_bias(None if "CIFG" in flags else b.get("i"), b_f, forget_bias, chrono)
        if "CIFG" in flags:
            with torch.no_grad():
                b["i"].neg_()
        self.n_states = 2 + (S if "FGR" in flags else 0)

    def weight_groups(self) -> list[Weight]:
        gates, sigmoid = tuple(self.gates), tuple(self.sigmoid_gates)
        groups = [Weight("input", self.weight_ih, gates), Weight("recurrent", self.weight_hh, gates),
                  Weight("bias", self.bias, gates)]
        if self.peephole is not None:  # (S, H): row k is gate k's p
            groups.append(Weight("peephole", self.peephole, sigmoid))
        if self.weight_ss is not None:  # rows: the gate that reads; columns: last step's gates
            groups.append(Weight("gate_recurrent", self.weight_ss, sigmoid))
        return groups

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h, c_prev, *s_prev = state  # s_prev: last step's sigmoid gate activations (FGR only)
        a = F.linear(x_t, self.weight_ih, self.bias) + F.linear(h, self.weight_hh)
        if s_prev:
            a = a + F.pad(F.linear(torch.cat(s_prev, 1), self.weight_ss), (0, self.hidden_size))
        pre = dict(zip(self.gates, a.chunk(len(self.gates), 1)))
        peep = dict(zip(self.sigmoid_gates, self.peephole)) if self.peephole is not None else {}
        early = self.sigmoid_gates[: self.n_early]

        def gate(name: str, c_seen: Tensor) -> Tensor | None:  # None: the gate is 1 (absent)
            if name not in pre:
                return None
            return torch.sigmoid(pre[name] + peep[name] * c_seen if name in peep else pre[name])

        i = gate("i", c_prev)
        f = 1 - i if "CIFG" in self.flags else gate("f", c_prev)
        g = pre["g"] if "NIAF" in self.flags else torch.tanh(pre["g"])
        c = (c_prev if f is None else f * c_prev) + (g if i is None else i * g)
        o = gate("o", c_prev if "o" in early else c)
        act = c if "NOAF" in self.flags else torch.tanh(c)
        h = act if o is None else o * act
        s = {"i": i, "f": f, "o": o}
        return h, (h, c, *[s[name] for name in self.sigmoid_gates]) if s_prev else (h, c)

    def init_state(self, batch: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch, self.hidden_size) for _ in range(self.n_states))

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        return _gated_scan(
            x, state, self.weight_ih, self.bias, self.weight_hh, self.peephole, self.weight_ss,
            (self.flags, tuple(self.sigmoid_gates), self.n_early), tap,
        )


def _gated_scan(
    x: Tensor, state: State, weight_ih: Tensor, bias: Tensor, weight_hh: Tensor,
    peephole: Tensor | None, weight_ss: Tensor | None, cfg: tuple, tap: Tap | None,
) -> tuple[Tensor, State]:
    """An LSTM-family layer over x (B, T, I) through bptt.GatedLSTM (cfg: flags, sigmoid gate
    names, how many read c_{t-1})."""
    h0, c0, *s0 = state
    hs, c, s = bptt.GatedLSTM.apply(
        x.transpose(0, 1), h0, c0, torch.cat(s0, 1) if s0 else None, weight_ih, bias, weight_hh,
        peephole, weight_ss, cfg, tap,
    )
    state = (hs[-1], c, *(s.chunk(len(cfg[1]), 1) if s0 else ()))
    return hs.transpose(0, 1), state


class Peephole(_GatedLSTM):
    """LSTM whose gates read the cell state through diagonal weights p (Gers & Schmidhuber 2000).
    The output gate reads the new c_t; ``output_reads=c_prev`` reads c_{t-1}, as some LSTM
    diagrams draw it. Greff et al.'s vanilla LSTM."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_reads: Literal["c_t", "c_prev"] = "c_t",
        forget_bias: float = 1.0,
        chrono: int = 0,
        recurrent_init: RecurrentInit = "default",
    ) -> None:
        super().__init__(
            input_size, hidden_size, flags=frozenset(), output_reads=output_reads,
            forget_bias=forget_bias, chrono=chrono, recurrent_init=recurrent_init,
        )


class CIFG(_GatedLSTM):
    """Coupled input and forget gates, f = 1 - i (Greff et al. 2017's CIFG), without
    peepholes (``lstm_variant`` with variant=CIFG keeps them)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 1.0,
        chrono: int = 0,
        recurrent_init: RecurrentInit = "default",
    ) -> None:
        super().__init__(
            input_size, hidden_size, flags=frozenset({"CIFG", "NP"}), output_reads="c_t",
            forget_bias=forget_bias, chrono=chrono, recurrent_init=recurrent_init,
        )


Variant = Literal["vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR"]


class LSTMVariant(_GatedLSTM):
    """The eight variants of Greff et al. 2017, each one change to their vanilla (peephole) LSTM:
    NIG no input gate, NFG no forget gate, NOG no output gate, NIAF no input activation,
    NOAF no output activation, NP no peepholes, CIFG coupled gates (with peepholes, unlike
    ``cifg``), FGR full gate recurrence."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        variant: Variant = "vanilla",
        forget_bias: float = 1.0,
        chrono: int = 0,
        recurrent_init: RecurrentInit = "default",
    ) -> None:
        _choice("variant", variant, ("vanilla", *_GatedLSTM.FLAGS))
        super().__init__(
            input_size, hidden_size, flags=frozenset({variant} - {"vanilla"}), output_reads="c_t",
            forget_bias=forget_bias, chrono=chrono, recurrent_init=recurrent_init,
        )
        self.variant = variant


class GRUClassic(Cell):
    """The GRU of Cho et al. 2014: the reset gate acts before the recurrent product.

    r = σ(W_r[h, x] + b_r), z = σ(W_z[h, x] + b_z), h̃ = tanh(W_h[r ⊙ h, x] + b_h),
    h_t = (1 - z) ⊙ h_{t-1} + z ⊙ h̃.   One bias per gate; gates stacked r, z, h̃."""

    def __init__(self, input_size: int, hidden_size: int, recurrent_init: RecurrentInit = "default") -> None:
        super().__init__(input_size, hidden_size)
        _choice("recurrent_init", recurrent_init, ("default", "orthogonal"))
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(3 * hidden_size))
        _pytorch_default_([self.weight_ih, self.weight_hh, self.bias], hidden_size)
        init_recurrent(self.weight_hh, recurrent_init)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        x_r, x_z, x_h = F.linear(x_t, self.weight_ih, self.bias).chunk(3, 1)
        w_r, w_z, w_h = self.weight_hh.chunk(3, 0)
        r = torch.sigmoid(x_r + F.linear(h, w_r))
        z = torch.sigmoid(x_z + F.linear(h, w_z))
        candidate = torch.tanh(x_h + F.linear(r * h, w_h))
        h = (1 - z) * h + z * candidate
        return h, (h,)

    def weight_groups(self) -> list[Weight]:
        gates = ("r", "z", "h")  # h: the candidate h̃
        return [Weight("input", self.weight_ih, gates), Weight("recurrent", self.weight_hh, gates),
                Weight("bias", self.bias, gates)]

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias)  # (T, B, 3H)
        hs = bptt.GRUClassic.apply(xp, state[0], self.weight_hh, tap)
        return hs.transpose(0, 1), (hs[-1],)


class _Bound(nn.Module):
    """u = u_max tanh(v): |u| < u_max for every value of the trained v, so the bound holds
    after every optimiser step by construction (Li et al. clip after each step instead)."""

    def __init__(self, u_max: float) -> None:
        super().__init__()
        self.u_max = u_max

    def forward(self, v: Tensor) -> Tensor:
        return self.u_max * torch.tanh(v)

    def right_inverse(self, u: Tensor) -> Tensor:
        return torch.atanh((u / self.u_max).clamp(-0.999, 0.999))


class IndRNN(Cell):
    """IndRNN (Li et al. 2018): h_t = relu(W x_t + u ⊙ h_{t-1} + b), u a vector: each unit
    has its own recurrent weight.

    ``u_max`` bounds |u| (Li et al. use 2^(1/T) for T steps: a T-step product of u stays
    below 2), held by ``bound``: "tanh", u = u_max tanh(v) with v trained, inside the bound by
    construction but slow to learn near it (the slope of tanh at 0.999 u_max is 0.002, and an
    init closer than that is clamped to it); "clip", Li et al.'s own: u trained directly and
    clipped to [-u_max, u_max] after every optimiser step (``project_``, which the optimiser
    of rnnlab.train.make_optimizer calls). ``u_init`` = [low, high]: u ~ U(low, high), default
    U(0, 1) as Li et al. (U(0, u_max) for u_max < 1). ``u_init_top``: the same for the top
    layer of a stack only (StackedRNN calls ``init_top_layer``), Li et al.'s long-T recipe of
    a top layer started near 1, e.g. [2^(-1/T), 2^(1/T)] with bound=clip."""

    def __init__(
        self, input_size: int, hidden_size: int, u_max: float | None = None, bound: Literal["tanh", "clip"] = "tanh",
        u_init: list[float] | None = None, u_init_top: list[float] | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size)
        if u_max is not None and not u_max > 0:
            raise ValueError(f"cell.u_max={u_max!r} must be > 0 (or null: unbounded)")
        _choice("bound", bound, ("tanh", "clip"))
        self.u_max, self.bound = u_max, bound
        low, high = _u_range("u_init", u_init, u_max) or (0.0, min(1.0, u_max or 1.0))
        self.u_init_top = _u_range("u_init_top", u_init_top, u_max)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        _pytorch_default_([self.weight_ih, self.bias], hidden_size)
        self.u = nn.Parameter(low + (high - low) * torch.rand(hidden_size))
        if u_max is not None and bound == "tanh":
            parametrize.register_parametrization(self, "u", _Bound(u_max))

    def init_top_layer(self) -> None:
        if self.u_init_top is None:
            return
        low, high = self.u_init_top
        u = low + (high - low) * torch.rand(self.hidden_size, device=self.bias.device)
        with torch.no_grad():
            if parametrize.is_parametrized(self, "u"):
                self.u = u  # through _Bound.right_inverse: v = atanh(u / u_max)
            else:
                self.u.copy_(u)

    def project_(self) -> None:
        if self.u_max is not None and self.bound == "clip":
            with torch.no_grad():
                self.u.clamp_(-self.u_max, self.u_max)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        h = torch.relu(F.linear(x_t, self.weight_ih, self.bias) + self.u * h)
        return h, (h,)

    def weight_groups(self) -> list[Weight]:
        if parametrize.is_parametrized(self, "u"):  # the trained tensor is v; forward applies u = u_max tanh(v)
            u = Weight("recurrent", self.parametrizations.u.original, applied=self.u)
        else:
            u = Weight("recurrent", self.u)
        return [Weight("input", self.weight_ih), u, Weight("bias", self.bias)]

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias)  # (T, B, H)
        hs = bptt.IndRNN.apply(xp, state[0], self.u, tap)
        return hs.transpose(0, 1), (hs[-1],)


def _u_range(key: str, value: list[float] | None, u_max: float | None) -> tuple[float, float] | None:
    """IndRNN's [low, high] for the uniform init of u, checked: low <= high, inside the bound."""
    if value is None:
        return None
    inside = u_max is None or (len(value) == 2 and -u_max <= value[0] and value[1] <= u_max)
    if len(value) != 2 or not value[0] <= value[1] or not inside:
        within = f", within [-u_max, u_max] = [{-u_max:g}, {u_max:g}]" if u_max is not None else ""
        raise ValueError(f"cell.{key}={list(value)} is not allowed (allowed: [low, high] with low <= high{within})")
    return float(value[0]), float(value[1])


class ESN(Cell):
    """Echo state network (Jaeger 2001): a random, frozen, sparse reservoir
    h_t = (1 - a) h_{t-1} + a tanh(W_in x_t + W h_{t-1} + b), W scaled to spectral radius ρ.

    Nothing here trains: W_in, W and b are buffers. Only the model's head (the readout) learns,
    by closed-form ridge regression (``readout=ridge``: rnnlab.model.fit_readout, with
    ``ridge`` as its penalty) or by gradient descent (``readout=gradient``: the normal loop)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        spectral_radius: float = 0.9,
        density: float = 0.1,
        leak: float = 1.0,
        input_scale: float = 1.0,
        readout: Literal["ridge", "gradient"] = "ridge",
        ridge: float = 1e-6,
    ) -> None:
        super().__init__(input_size, hidden_size)
        for key, value, ok, allowed in [
            ("spectral_radius", spectral_radius, spectral_radius > 0, "> 0 (< 1 for the echo-state property)"),
            ("density", density, 0 < density <= 1, "in (0, 1]"),
            ("leak", leak, 0 < leak <= 1, "in (0, 1]"),
            ("input_scale", input_scale, input_scale > 0, "> 0"),
            ("ridge", ridge, ridge >= 0, ">= 0"),
        ]:
            if not ok:
                raise ValueError(f"cell.{key}={value!r} is out of range (allowed: {allowed})")
        _choice("readout", readout, ("ridge", "gradient"))
        self.leak, self.readout, self.ridge = leak, readout, ridge
        self.register_buffer("weight_ih", torch.empty(hidden_size, input_size).uniform_(-input_scale, input_scale))
        self.register_buffer("bias", torch.empty(hidden_size).uniform_(-input_scale, input_scale))
        self.register_buffer("weight_hh", _reservoir(hidden_size, density, spectral_radius))

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        new = torch.tanh(F.linear(x_t, self.weight_ih, self.bias) + F.linear(h, self.weight_hh))
        h = (1 - self.leak) * h + self.leak * new
        return h, (h,)

    def weight_groups(self) -> list[Weight]:
        # Frozen buffers, declared so that the probe's spectra see the reservoir; no gradients.
        return [Weight("input", self.weight_ih), Weight("recurrent", self.weight_hh), Weight("bias", self.bias)]


def _reservoir(size: int, density: float, radius: float) -> Tensor:
    """A sparse random (size, size) matrix with a fraction ``density`` of non-zeros, scaled to
    spectral radius ``radius``. A very sparse small matrix can be nilpotent (all eigenvalues 0,
    nothing to scale): draw again."""
    if torch.empty(0).is_meta:  # built on the meta device to check the options (rnnlab.run.prepare): no values
        return torch.empty(size, size)
    for _ in range(100):
        w = torch.empty(size, size, dtype=torch.float64).uniform_(-1, 1)
        w *= torch.rand(size, size, dtype=torch.float64) < density
        current = torch.linalg.eigvals(w).abs().max()
        if current > 1e-6:
            return (w * (radius / current)).to(torch.get_default_dtype())
    raise ValueError(f"cell.density={density}: too sparse for hidden_size={size} (no non-zero eigenvalue)")


class Transformer(Cell):
    """One pre-norm causal Transformer block (Vaswani et al. 2017), the attention baseline
    beside the recurrent cells: x + Attention(LN x), then + MLP(LN x). Stacked ``depth`` times
    by StackedRNN.

    Position enters as ALiBi (Press et al. 2022): head k's score for key j from query t is
    lowered by slope_k (t - j). It needs no parameters, works at every layer and at any length,
    and carries over chunk boundaries. The state is the cache of past keys and values
    (B, P, H) each, so truncated BPTT can carry a detached cache like a recurrent state;
    ``forward(x_t, state)`` is one step of the same function.

    ``window``: a query at t attends to itself and the ``window`` steps before it
    (t - window <= j <= t), and the cache keeps the last ``window`` keys and values (P <= window),
    so a state carried chunk after chunk (a char_lm epoch) stays that size. Distances are
    relative, so ALiBi is the same with the older keys dropped. The default, 1024, covers every
    default task's sequence whole (none is longer than 120 steps); beyond it the slowest head
    (slope 2^-8, whatever ``heads``) has discounted a key by e^-4 ≈ 2%. Set it to at least the
    sequence length for a task whose dependencies span the whole sequence (copy with data.length
    above 1000).
    """

    n_states = 2

    def __init__(
        self, input_size: int, hidden_size: int, heads: int = 4, mlp_ratio: int = 4, window: int = 1024
    ) -> None:
        super().__init__(input_size, hidden_size)
        if heads < 1 or hidden_size % heads:
            raise ValueError(f"cell.heads={heads}: must divide hidden_size={hidden_size}")
        if mlp_ratio < 1:
            raise ValueError(f"cell.mlp_ratio={mlp_ratio} is out of range (allowed: >= 1)")
        if window < 1:
            raise ValueError(f"cell.window={window} is out of range (allowed: >= 1)")
        self.heads, self.window = heads, window
        # Layer 1 reads the features (or a bidirectional stack's 2h): project to the width first.
        self.embed = nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
        self.norm1, self.norm2 = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size), nn.GELU(), nn.Linear(mlp_ratio * hidden_size, hidden_size)
        )
        self.register_buffer("slopes", 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads), persistent=False)

    def init_state(self, batch: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch, 0, self.hidden_size) for _ in range(2))  # no past yet

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        out, state = self.scan(x_t.unsqueeze(1), state)
        return out[:, 0], state

    def scan(self, x: Tensor, state: State, tap: Tap | None = None) -> tuple[Tensor, State]:
        B, T, H = x.size(0), x.size(1), self.hidden_size
        x = self.embed(x)  # (B, T, H)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, 2)
        k, v = torch.cat([state[0], k], 1), torch.cat([state[1], v], 1)  # (B, P + T, H)
        P = k.size(1) - T
        query_at = torch.arange(P, P + T, device=x.device)[:, None]
        key_at = torch.arange(P + T, device=x.device)[None, :]
        distance = (query_at - key_at).to(x.dtype)  # (T, P + T)
        bias = -self.slopes.to(x.dtype)[:, None, None] * distance  # (heads, T, P + T)
        # Causal (no key from the future) and windowed (none older than ``window`` steps).
        bias = bias.masked_fill((distance < 0) | (distance > self.window), float("-inf"))
        split = lambda t: t.view(B, -1, self.heads, H // self.heads).transpose(1, 2)  # (B, heads, ·, H/heads)
        att = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, H))
        x = x + self.mlp(self.norm2(x))
        if tap is not None and tap.w_lag is not None:
            tap.w_lag.fill_(math.nan)  # no recurrent weight
        if tap is not None and x.requires_grad:  # no path through time from h_t: its gradient is all from above
            x.register_hook(functools.partial(_write, tap.dh.transpose(0, 1)))
        return x, (k[:, -self.window :], v[:, -self.window :])  # the keys a later query can still see

    def weight_groups(self) -> list[Weight]:
        # No recurrent weight (the cache holds values, not a recurrence) and no gate stacking:
        # the probe sums every parameter into "other".
        return []


CELLS: dict[str, type[Cell]] = {
    "rnn": RNN,
    "lstm": LSTM,
    "gru": GRU,
    "gru_classic": GRUClassic,
    "peephole": Peephole,
    "cifg": CIFG,
    "lstm_variant": LSTMVariant,
    "indrnn": IndRNN,
    "esn": ESN,
    "transformer": Transformer,
}
