"""Numba kernels of the sim target: the integer semantics of hwq/reference.py, fused and
parallel over the batch. Products run in float BLAS only where a bound proves them exact."""

from __future__ import annotations

import numba as nb
import numpy as np

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 2**53

MODES = {"identity": 0, "step": 1, "relu": 2, "sigmoid": 3}


@nb.njit(parallel=True, cache=True)
def finish_layer(acc, bias, mult, shift, mode, act_max, lut, lut_half, out):
    """Bias, requantization and activation of one layer, written into ``out`` (float32 codes
    for the next product, or int64 scores for the output layer)."""
    n, m = acc.shape
    for i in nb.prange(n):
        for j in range(m):
            a = np.int64(acc[i, j]) + bias[j]
            if mode == 0:
                out[i, j] = a
            elif mode == 1:
                out[i, j] = 1 if a > 0 else 0
            else:
                s = shift[j]
                z = a * mult[j]
                if s > 0:
                    z = (z + (np.int64(1) << (s - 1))) >> s
                if mode == 2:
                    out[i, j] = min(max(z, 0), act_max)
                else:
                    k = min(max(z, -lut_half), lut_half - 1)
                    out[i, j] = lut[k + lut_half]


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
