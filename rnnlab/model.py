"""StackedRNN: cells x depth x direction, dropout between layers, and a linear head.

    x (B, T, I) -> layer 1 -> dropout -> layer 2 -> ... -> layer L -> h^L_T -> Linear -> ŷ (B, O)
                                                          many-to-many: h^L_t -> Linear -> ŷ (B, T, O)

Layer l reads the outputs of layer l-1; every layer has its own cell, shared across time.
States start at zero unless the caller carries them (truncated BPTT hands them chunk to chunk).

Bidirectional: each layer also runs a second cell backward in time, and the two outputs are
concatenated (2h wide), so the next layer reads 2h:

    forward cell   h→_1 ──► h→_2 ──► … ──► h→_T ─┐
    backward cell  h←_1 ◄── h←_2 ◄── … ◄── h←_T  ├─ [h→_t, h←_t] per step; the head reads [h→_T, h←_1]
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from rnnlab.cells import CELLS, Cell, State, step_scan

# How one layer is scanned: (cell, x (B, T, I), state, layer index, direction 0/1) -> (outputs, state)
Scan = Callable[[Cell, Tensor, State, int, int], tuple[Tensor, State]]


class StackedRNN(nn.Module):
    """A stack of ``depth`` recurrent layers of one cell type plus a linear head on the top
    layer's last output (many-to-one: forecast the next step, classify a sequence), or on its
    output at every step (``many_to_many``: a label per step, a character language model).

    >>> model = StackedRNN("lstm", input_size=8, hidden_size=64, depth=4)
    >>> y_hat, state = model(x)                  # x (B, T, 8) -> y_hat (B, 1)

    ``bidirectional``: carried state is the forward direction's only. The backward direction
    starts from zeros at the end of every call, because the steps after a chunk are not known
    yet; so with truncated BPTT a bidirectional layer sees the future only within each chunk.
    A many-to-many model here predicts every step causally, so it cannot be bidirectional.
    """

    def __init__(
        self,
        cell: str | type[Cell],
        input_size: int,
        hidden_size: int,
        depth: int = 1,
        output_size: int = 1,
        dropout: float = 0.0,
        many_to_many: bool = False,
        bidirectional: bool = False,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        if bidirectional and many_to_many:
            raise ValueError(
                "bidirectional=true on a task that predicts every step causally would see the future "
                "(allowed: bidirectional=false, or a many-to-one task)"
            )
        if isinstance(cell, str) and cell not in CELLS:
            raise ValueError(f"cell.name={cell!r} is not a cell (allowed: {', '.join(CELLS)})")
        self.many_to_many = many_to_many
        make = CELLS[cell] if isinstance(cell, str) else cell
        width = 2 * hidden_size if bidirectional else hidden_size  # what a layer outputs
        sizes = [input_size] + [width] * (depth - 1)
        self.layers = nn.ModuleList(make(size, hidden_size, **cell_options) for size in sizes)
        self.backward_layers = (
            nn.ModuleList(make(size, hidden_size, **cell_options) for size in sizes) if bidirectional else None
        )
        # Last, so the layers below start as in any stack: a top layer initialised its own way
        # (IndRNN's u_init_top) draws its numbers here, and other cells draw none.
        for top in [self.layers[-1], *(self.backward_layers[-1:] if self.backward_layers is not None else [])]:
            top.init_top_layer()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, output_size)

    def init_state(self, batch: int, like: Tensor) -> list[State]:
        return [cell.init_state(batch, like) for cell in self.layers]

    def features(
        self, x: Tensor, state: list[State] | None = None, step_path: bool = False, run: Scan | None = None
    ) -> tuple[Tensor, list[State]]:
        """What the head reads: (B, width) many-to-one or (B, T, width) many-to-many, and the
        (forward) state of every layer. ``run(cell, x, state, layer, direction)`` scans one
        layer in place of ``cell.scan`` (the gradient probe passes its own, which taps every
        layer: rnnlab.probe.Probe.scan)."""
        if state is None:
            state = self.init_state(x.size(0), x)
        if run is None:
            run = (lambda cell, x, s, *_: step_scan(cell, x, s)) if step_path else (lambda cell, x, s, *_: cell.scan(x, s))
        backward_layers = self.backward_layers or [None] * len(self.layers)
        new_state = []
        for layer, (cell, back) in enumerate(zip(self.layers, backward_layers)):
            if layer > 0:
                x = self.dropout(x)
            out, layer_state = run(cell, x, state[layer], layer, 0)
            new_state.append(layer_state)
            if back is not None:  # the same recurrence on the reversed sequence, re-reversed
                out_back, _ = run(back, x.flip(1), back.init_state(x.size(0), x), layer, 1)
                out = torch.cat([out, out_back.flip(1)], 2)
            x = out
        if self.many_to_many:
            return x, new_state
        last = x[:, -1]
        if self.backward_layers is not None:  # the backward direction's final state is its output at t = 0
            H = last.size(1) // 2
            last = torch.cat([last[:, :H], x[:, 0, H:]], 1)
        return last, new_state

    def forward(
        self, x: Tensor, state: list[State] | None = None, step_path: bool = False, run: Scan | None = None
    ) -> tuple[Tensor, list[State]]:
        """x (B, T, I) -> (ŷ (B, O) or (B, T, O) if many_to_many, every layer's last state).

        ``step_path=True`` runs every layer through its step loop instead of its fast scan:
        the same function, slower, with every h_t a node of the autograd graph, so autograd
        can differentiate it twice (a gradient penalty); the loop cells' hand-written
        backwards cannot. ``run``: a scan hook, as for ``features``.
        """
        features, state = self.features(x, state, step_path, run)
        return self.head(features), state


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (frozen ones, such as a folded redundant bias, do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def fit_readout(model: StackedRNN, batches: Iterable[tuple[Tensor, Tensor]], ridge: float) -> None:
    """Set the head to the ridge-regression solution on the features it reads (an ESN's
    closed-form readout; any frozen stack works):

        [W b] = argmin Σ ‖W φ(x) + b - y‖² + ridge ‖W‖²     (the bias is not penalised)

    solved in float64 from the normal equations accumulated batch by batch, so memory is
    (width + 1)^2 whatever the data size. ``batches`` yields (x (B, T, I), y (B, O) or (B,)).
    """
    gram = rhs = None
    for x, y in batches:
        phi, _ = model.features(x)
        phi = phi.reshape(-1, phi.size(-1)).double()  # (N, width); many-to-many: every step a row
        a = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64, device=phi.device)], 1)
        y = y.reshape(len(phi), -1).double()
        gram = a.T @ a if gram is None else gram + a.T @ a
        rhs = a.T @ y if rhs is None else rhs + a.T @ y
    if gram is None:
        raise ValueError("fit_readout: no batches")
    penalty = torch.full((gram.size(0),), ridge, dtype=torch.float64, device=gram.device)
    penalty[-1] = 0.0
    solution = torch.linalg.solve(gram + torch.diag(penalty), rhs)  # (width + 1, O)
    model.head.weight.copy_(solution[:-1].T)
    model.head.bias.copy_(solution[-1])
