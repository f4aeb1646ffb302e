"""rnnlab: a research framework for studying recurrent neural networks.

    from rnnlab import StackedRNN, CELLS

Both are imported on first use (module ``__getattr__``), so ``import rnnlab`` and
``python -m rnnlab --help`` stay free of torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["CELLS", "StackedRNN"]


def __getattr__(name: str) -> Any:
    if name == "StackedRNN":
        from rnnlab.model import StackedRNN

        return StackedRNN
    if name == "CELLS":
        from rnnlab.cells import CELLS

        return CELLS
    raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")
