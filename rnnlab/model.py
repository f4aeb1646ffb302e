"""StackedRNN: cells x depth, dropout between layers, and a linear head (seed 000).

    x (B, T, I) -> layer 1 -> dropout -> layer 2 -> ... -> layer L -> h^L_T -> Linear -> ŷ (B, O)
                                                          many-to-many: h^L_t -> Linear -> ŷ (B, T, O)

Layer l reads the outputs of layer l-1; every layer has its own cell, shared across time.
States start at zero unless the caller carries them (truncated BPTT hands them chunk to chunk).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnlab.cells import CELLS, Cell, State, step_scan


class StackedRNN(nn.Module):
    """A stack of ``depth`` recurrent layers of one cell type plus a linear head on the top
    layer's last output (many-to-one: forecast the next step, classify a sequence), or on its
    output at every step (``many_to_many``: a label per step, a character language model).

    >>> model = StackedRNN("lstm", input_size=8, hidden_size=64, depth=4)
    >>> y_hat, state = model(x)                  # x (B, T, 8) -> y_hat (B, 1)
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
        **cell_options: Any,
    ) -> None:
        super().__init__()
        self.many_to_many = many_to_many
        make = CELLS[cell] if isinstance(cell, str) else cell
        self.layers = nn.ModuleList(
            make(input_size if layer == 0 else hidden_size, hidden_size, **cell_options)
            for layer in range(depth)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, output_size)

    def init_state(self, batch: int, like: Tensor) -> list[State]:
        return [cell.init_state(batch, like) for cell in self.layers]

    def forward(
        self, x: Tensor, state: list[State] | None = None, step_path: bool = False
    ) -> tuple[Tensor, list[State]]:
        """x (B, T, I) -> (ŷ (B, O) or (B, T, O) if many_to_many, every layer's last state).

        ``step_path=True`` runs every layer through its step loop instead of a fused kernel:
        the same function, slower, with every h_t a node of the autograd graph.
        """
        if state is None:
            state = self.init_state(x.size(0), x)
        new_state = []
        for layer, cell in enumerate(self.layers):
            if layer > 0:
                x = self.dropout(x)
            x, layer_state = step_scan(cell, x, state[layer]) if step_path else cell.scan(x, state[layer])
            new_state.append(layer_state)
        return self.head(x if self.many_to_many else x[:, -1]), new_state


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (frozen ones, such as a folded redundant bias, do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
