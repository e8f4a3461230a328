"""Exact integer products ``h @ W.T`` for every backend: which arithmetic a bound proves exact,
the int64 loop where none does, and the range of a batch of codes.

For codes of magnitude at most ``peak`` and ``S = max_row sum|W_row|`` (Python integers,
``hwq.quant.bounds``): float32 BLAS when ``S * peak < 2^24``, float64 BLAS below ``2^53``
(every partial sum is then an integer the float type holds exactly, in any summation order),
the int64 Numba loop otherwise (exact while ``|acc| < 2^63``, which compile-time bounds check).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hwq.quant.bounds import F32_EXACT, F64_EXACT

DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}


def product_path(row_sum: int, peak: int) -> str:
    """``"float32"``, ``"float64"`` or ``"int64"``: the cheapest exact arithmetic for a product
    whose partial sums are at most ``row_sum * peak``."""
    products = int(row_sum) * int(peak)
    if products < F32_EXACT:
        return "float32"
    return "float64" if products < F64_EXACT else "int64"


@nb.njit(parallel=True, cache=True)
def int_matmul(h, w_t):
    """Exact int64 product for layers whose bound rules out float BLAS."""
    n, k = h.shape
    m = w_t.shape[1]
    out = np.zeros((n, m), dtype=np.int64)
    for i in nb.prange(n):
        for p in range(k):
            v = np.int64(h[i, p])
            if v != 0:
                for j in range(m):
                    out[i, j] += v * w_t[p, j]
    return out


@nb.njit(parallel=True, cache=True)
def code_range(h):
    """``(min, max)`` of the integer codes ``h`` (as int64; (0, 0) when empty)."""
    n = h.shape[0]
    lo = np.zeros(max(n, 1), np.int64)
    hi = np.zeros(max(n, 1), np.int64)
    for i in nb.prange(n):
        a = np.int64(h[i, 0]) if h.shape[1] else np.int64(0)
        b = a
        for p in range(h.shape[1]):
            q = np.int64(h[i, p])
            a = min(a, q)
            b = max(b, q)
        lo[i], hi[i] = a, b
    return lo.min(), hi.max()
