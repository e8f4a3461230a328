"""Input codes as every backend receives them, and plans for codes outside the input format.

A backend plans each layer's product for the codes it can receive (the input format for
layer 0). Codes from outside the format (a user's own array, a test) must still give the exact
answer: ``FallbackPlans`` keeps a few plans proven for the range actually seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hwq.errors import DataError

from .products import code_range

NATIVE_INPUTS = (np.uint8, np.int8, np.uint16, np.int16, np.int64, np.float32, np.float64)  # others go via int64
MAX_FALLBACKS = 8  # plans kept for input ranges beyond the format


def as_codes(x_q, n_features: int, target: str) -> np.ndarray:
    """``x_q`` as a C-contiguous (N, n_features) array in a dtype the kernels take natively."""
    x_q = np.asarray(x_q)
    if x_q.ndim != 2 or x_q.shape[1] != n_features:
        raise DataError(f"{target} expects codes of shape (N, {n_features}), got {x_q.shape}")
    return np.ascontiguousarray(x_q, x_q.dtype if x_q.dtype.type in NATIVE_INPUTS else np.int64)


def owned(values, dtype=np.int64, shape=None) -> np.ndarray:
    """A fresh writable C-contiguous copy: every kernel argument has one Numba type, so each
    kernel compiles once per dtype combination rather than once per read-only flag too."""
    values = np.asarray(values, dtype)
    return np.array(values if shape is None else np.broadcast_to(values, shape), dtype, order="C")


def seen_range(x_q: np.ndarray, qmin: int, qmax: int) -> tuple[int, int]:
    """The code range to plan for: what arrived, widened to the input format."""
    lo, hi = (int(v) for v in code_range(x_q)) if x_q.size else (qmin, qmax)
    return min(lo, qmin), max(hi, qmax)


class FallbackPlans:
    """Plans for input ranges beyond the format, built by ``make(lo, hi)`` on first use."""

    def __init__(self, make: Callable[[int, int], Any]):
        self.make, self.plans = make, {}

    def for_range(self, lo: int, hi: int):
        if (lo, hi) not in self.plans:
            if len(self.plans) >= MAX_FALLBACKS:
                self.plans.clear()
            self.plans[(lo, hi)] = self.make(lo, hi)
        return self.plans[(lo, hi)]
