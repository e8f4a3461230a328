"""Exact q-bit weights by axon duplication with typed digits (shared/specs/truenorth.md 7b).

Every input is copied onto ``m_g`` axons of type ``g``; all neurons share the table
``(v_0, .., v_3)``; the crossbar bits of neuron ``j`` for input ``i`` switch on ``a_g <= m_g``
copies of type ``g`` with ``sum_g a_g v_g = W_ji``. Only tables using at most 3 types are used
here: the 4th type carries the gate of the count-domain emitters (``mapping.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError


@dataclass(frozen=True)
class DigitTable:
    """``values[g]``: the weight of type ``g``; ``copies[g]``: axons of type ``g`` per input."""

    values: tuple[int, ...]
    copies: tuple[int, ...]

    @property
    def k(self) -> int:
        return sum(self.copies)

    @property
    def types(self) -> np.ndarray:
        """Axon types of one input's ``k`` copies."""
        return np.repeat(np.arange(len(self.values)), self.copies).astype(np.int8)

    def digits(self, w: int) -> np.ndarray:
        """0/1 for each of the ``k`` copies: the bits that make weight ``w``."""
        for combo in itertools.product(*(range(m + 1) for m in self.copies)):
            if sum(a * v for a, v in zip(combo, self.values)) == w:
                return np.concatenate([[1] * a + [0] * (m - a) for a, m in zip(combo, self.copies)]).astype(bool)
        raise LimitError(f"weight {w} is not a sum of the digits {self.values}")


TABLES = [  # (lo, hi) -> table, smallest k first (spec 7b)
    ((0, 1), DigitTable((1,), (1,))),
    ((-1, 0), DigitTable((-1,), (1,))),
    ((-1, 1), DigitTable((-1, 1), (1, 1))),
    ((-2, 1), DigitTable((1, -2), (1, 1))),
    ((-4, 3), DigitTable((1, 2, -4), (1, 1, 1))),
]


def table_for(weight: np.ndarray) -> DigitTable:
    lo, hi = int(weight.min(initial=0)), int(weight.max(initial=0))
    for (a, b), table in TABLES:
        if a <= lo and hi <= b:
            return table
    raise LimitError(f"weights in [{lo}, {hi}] need more than 3 axon types per input",
                     hint="the truenorth mapping is exact for weights in [-4, 3] (up to 3-bit codes); "
                          "quantize with --bits 3 or fewer")
