"""Exact q-bit weights by axon duplication with typed digits (shared/specs/truenorth.md 7b).

Every input is copied onto ``m_g`` axons of type ``g``; all neurons share the table
``(v_0, .., v_3)``; the crossbar bits of neuron ``j`` for input ``i`` switch on ``a_g <= m_g``
copies of type ``g`` with ``sum_g a_g v_g = W_ji``. Only tables using at most 3 types are used
here: the 4th type carries the gate of the count-domain emitters, or the bias axons of the
one-tick (Eedn) layers (``mapping.py``). Ranges beyond [-4, 3] use the 3-type family
``(1, c, -e)`` with ``m0 >= c - 1`` copies of 1, ``m1`` copies of ``c`` and ``ceil(D / e)``
copies of ``-e`` (``D = -lo``, ``e = min(D, 255)``): the sums ``a0 + c a1`` cover
``0..m0 + c m1`` without gaps, so every weight in ``[lo, hi]`` is one of them, or
``ceil(-w / e)`` copies of ``-e`` plus one (``wide_table``, smallest ``k`` for the range).
The spec's 4-type tables (7b) need fewer axons but leave no type for the gate or the bias.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError


@dataclass(frozen=True)
class DigitTable:
    """``values[g]``: the weight of type ``g``; ``copies[g]``: axons of type ``g`` per input."""

    values: tuple[int, ...]
    copies: tuple[int, ...]
    wide: bool = False  # the (1, c, -D) family: digits by the greedy rule below

    @property
    def k(self) -> int:
        return sum(self.copies)

    @property
    def types(self) -> np.ndarray:
        """Axon types of one input's ``k`` copies."""
        return np.repeat(np.arange(len(self.values)), self.copies).astype(np.int8)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (frozen, few tables)
    def digits(self, w: int) -> np.ndarray:
        """0/1 for each of the ``k`` copies: the bits that make weight ``w``."""
        if self.wide:
            return self.wide_digits(w)
        for combo in itertools.product(*(range(m + 1) for m in self.copies)):
            if sum(a * v for a, v in zip(combo, self.values)) == w:
                return np.concatenate([[1] * a + [0] * (m - a) for a, m in zip(combo, self.copies)]).astype(bool)
        raise LimitError(f"weight {w} is not a sum of the digits {self.values}")

    def wide_digits(self, w: int) -> np.ndarray:
        """``w = a0 + c a1 (- D)``: take ``-D`` iff ``w < 0``, then as many ``c`` as fit."""
        pos = [(v, m) for v, m in zip(self.values, self.copies) if v > 0]
        neg = [v for v in self.values if v < 0]
        rest, bits = int(w), []
        n_neg = 0
        if rest < 0:
            if not neg:
                raise LimitError(f"weight {w} is not a sum of the digits {self.values}")
            n_neg = -(rest // -neg[0])  # ceil(-rest / e)
            rest -= n_neg * neg[0]
        count = {}
        for v, m in sorted(pos, reverse=True):
            count[v] = min(m, rest // v)
            rest -= count[v] * v
        if rest != 0:
            raise LimitError(f"weight {w} is not a sum of the digits {self.values}")
        for v, m in zip(self.values, self.copies):
            a = n_neg if v < 0 else count[v]
            bits += [1] * a + [0] * (m - a)
        return np.array(bits, bool)


TABLES = [  # (lo, hi) -> table, smallest k first (spec 7b)
    ((0, 1), DigitTable((1,), (1,))),
    ((-1, 0), DigitTable((-1,), (1,))),
    ((-1, 1), DigitTable((-1, 1), (1, 1))),
    ((-2, 1), DigitTable((1, -2), (1, 1))),
    ((-4, 3), DigitTable((1, 2, -4), (1, 1, 1))),
]


def wide_table(lo: int, hi: int) -> DigitTable:
    """The cheapest ``(1, c, -D)`` table covering ``[lo, hi]`` (``lo <= 0 <= hi``)."""
    d = -lo
    e = min(d, 255)  # a weight is at most 255: -D beyond that takes ceil(D / 255) copies
    p = max(hi, e - 1, 1)
    best = None
    for c in range(2, p + 2):
        for m1 in range(0, p // c + 2):
            m0 = max(c - 1, p - c * m1)
            if best is None or m0 + m1 < best[0]:
                best = (m0 + m1, c, m0, m1)
    _, c, m0, m1 = best
    values, copies = [1], [m0]
    if m1:
        values, copies = [1, c], [m0, m1]
    if d:
        values, copies = values + [-e], copies + [-(-d // e)]
    return DigitTable(tuple(values), tuple(copies), wide=True)


def table_for(weight: np.ndarray) -> DigitTable:
    lo, hi = int(weight.min(initial=0)), int(weight.max(initial=0))
    for (a, b), table in TABLES:
        if a <= lo and hi <= b:
            return table
    if hi > WIDE_MAX or -lo > WIDE_MAX:
        raise LimitError(f"weights in [{lo}, {hi}] are wider than the truenorth digit tables ({-WIDE_MAX}..{WIDE_MAX})",
                         hint="quantize with --bits 10 or fewer")
    return wide_table(lo, hi)


WIDE_MAX = 512
