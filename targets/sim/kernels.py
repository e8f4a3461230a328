"""Numba kernels of the sim target: the integer semantics of hwq/reference.py, fused and
parallel over the batch. Products run in float BLAS only where a bound proves them exact."""

from __future__ import annotations

import numba as nb
import numpy as np

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 2**53

MODES = {"identity": 0, "step": 1, "relu": 2, "sigmoid": 3}


@nb.njit(cache=True, nogil=True)
def finish_rows(acc, r0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, o0):
    """Rows ``r0 .. r0+rows`` of a product ``acc`` (any dtype, integer-valued): ``acc + base``
    (``base`` = bias, minus any input offset) into ``acc_out`` and the activated codes into
    ``out``, rows ``o0 ..``; either output may have 0 rows to skip it. This is
    ``hwq.reference.activate`` with ``half = 2^(shift-1)`` (0 when ``shift == 0``), so the
    requantization ``(acc * mult + half) >> shift`` has no branch; one loop per mode, so each
    vectorizes."""
    m = base.shape[0]
    if acc_out.shape[0] > 0:
        for r in range(rows):
            for j in range(m):
                acc_out[o0 + r, j] = np.int64(acc[r0 + r, j]) + base[j]
    if out.shape[0] == 0:
        return
    for r in range(rows):
        if mode == 0:
            for j in range(m):
                out[o0 + r, j] = np.int64(acc[r0 + r, j]) + base[j]
        elif mode == 1:
            for j in range(m):
                out[o0 + r, j] = np.int64(np.int64(acc[r0 + r, j]) + base[j] > 0)
        elif mode == 2:
            for j in range(m):
                z = ((np.int64(acc[r0 + r, j]) + base[j]) * mult[j] + half[j]) >> shift[j]
                out[o0 + r, j] = min(max(z, np.int64(0)), act_max)
        else:
            for j in range(m):
                z = ((np.int64(acc[r0 + r, j]) + base[j]) * mult[j] + half[j]) >> shift[j]
                out[o0 + r, j] = lut[min(max(z, -lut_half), lut_half - 1) + lut_half]


ROWS_PER_TASK = 64


@nb.njit(parallel=True, cache=True)
def finish_layer(acc, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out):
    """``finish_rows`` over a whole BLAS or int64 product, in parallel."""
    n = acc.shape[0]
    for t in nb.prange((n + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        i0 = t * ROWS_PER_TASK
        finish_rows(acc, i0, min(ROWS_PER_TASK, n - i0), base, mult, half, shift, mode, act_max,
                    lut, lut_half, acc_out, out, i0)


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
