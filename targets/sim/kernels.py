"""Numba kernels of the sim target: the integer semantics of hwq/reference.py, fused and
parallel over the batch. Products run in float BLAS only where a bound proves them exact."""

from __future__ import annotations

import numba as nb
import numpy as np

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 2**53

MODES = {"identity": 0, "step": 1, "relu": 2, "sigmoid": 3}


@nb.njit(inline="always")
def activate(a, mode, mult, shift, act_max, lut, lut_half):
    """The activation of accumulator ``a`` (int64): ``hwq.reference.activate`` for one value."""
    if mode == 0:
        return a
    if mode == 1:
        return np.int64(1) if a > 0 else np.int64(0)
    z = a * mult
    if shift > 0:
        z = (z + (np.int64(1) << (shift - 1))) >> shift
    if mode == 2:
        return min(max(z, np.int64(0)), act_max)
    return lut[min(max(z, -lut_half), lut_half - 1) + lut_half]


@nb.njit(parallel=True, cache=True)
def finish_layer(acc, bias, mult, shift, mode, act_max, lut, lut_half, acc_out, out):
    """Bias, requantization and activation of one layer after a BLAS or int64 product ``acc``:
    the accumulator into ``acc_out`` (int64) and the codes into ``out`` (the next product's
    dtype); either may have 0 rows to skip it."""
    n, m = acc.shape
    want_acc, want_out = acc_out.shape[0] > 0, out.shape[0] > 0
    for i in nb.prange(n):
        for j in range(m):
            a = np.int64(acc[i, j]) + bias[j]
            if want_acc:
                acc_out[i, j] = a
            if want_out:
                out[i, j] = activate(a, mode, mult[j], shift[j], act_max, lut, lut_half)


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
