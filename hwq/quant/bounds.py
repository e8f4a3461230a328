"""The numbers that prove an integer computation exact, in one place.

* A float type holds every integer up to ``2^p`` (p = 24 for float32, 53 for float64), so a
  product ``h @ W.T`` computed in float BLAS is exact, in any summation order, when every
  partial sum is below that: ``max_row sum|W| * max|h| < 2^p``.
* ``vpdpbusd`` sums u8 x s8 products in int32 lanes: exact when ``255 * max_row sum|W| < 2^31``.
* Requantization shifts stay in ``0..62`` so that ``2^(S-1)`` and ``x >> S`` are defined in int64.
* Every int64 intermediate stays below ``2^63`` (``INT64_LIMIT``).
Bounds are computed in Python integers (``row_sum_bound``), never in numpy int64, so that the
proof itself cannot wrap around. docs/integer-semantics.md states the rules.
"""

from __future__ import annotations

import numpy as np

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 2**53
INT32_EXACT = 2**31
INT64_LIMIT = 2**63
MAX_SHIFT = 62  # docs/integer-semantics.md section 4


def row_sum_bound(weight: np.ndarray) -> int:
    """``max_i sum_j |W[i, j]|`` as a Python integer (exact for any int64 weights)."""
    w = np.asarray(weight)
    if w.size == 0:
        return 0
    return max(sum(abs(int(v)) for v in row) for row in w.reshape(w.shape[0], -1))


def accumulator_bound(weight: np.ndarray, bias: np.ndarray, peak: int) -> int:
    """``max_i (sum_j |W[i, j]| * peak + |b_i|)``: the largest |acc| for inputs of magnitude
    at most ``peak``, in Python integers."""
    w = np.asarray(weight)
    b = np.asarray(bias).reshape(-1)
    if w.shape[0] == 0:
        return 0
    return max(sum(abs(int(v)) for v in row) * int(peak) + abs(int(b[i]))
               for i, row in enumerate(w.reshape(w.shape[0], -1)))
