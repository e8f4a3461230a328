"""Numba kernels of the Loihi emulator: the per-sample closed form of what the Lava process
graph computes (see ``spec.py`` for the step-by-step version and docs/loihi.md).

``variant`` selects a deliberately wrong arithmetic that only the tests use, to show that the
Lava comparison catches it: 1 = right shifts truncate toward zero instead of flooring,
2 = the LIF fires on ``v >= theta``, 3 = the LIF current does not wrap at 24 bits.
"""

from __future__ import annotations

import numba as nb
import numpy as np

KIND_CODES = {"lif": 0, "relu": 1, "identity": 2}
VARIANTS = {"exact": 0, "trunc": 1, "ge": 2, "nowrap": 3}
U_WRAP = 2**23
V_MAX = 2**23 - 1


@nb.njit(cache=True)
def _input(ys, exps, i, j, variant):
    """``a = sum_s shift(y_s, E_s)`` for one neuron of one sample."""
    a = np.int64(0)
    for s in range(ys.shape[0]):
        y = np.int64(ys[s, i, j])
        e = exps[s]
        if e >= 0:
            a += y << e
        elif variant == 1 and y < 0:
            a -= (-y) >> (-e)
        else:
            a += y >> (-e)
    return a


@nb.njit(cache=True)
def _lif(a, b, theta, variant):
    """LIFReset for one step from rest: ``u = wrap24(a * 2^6)``, ``v = sat24(u + b)``."""
    u = a << 6
    if variant != 3:
        if u > U_WRAP:
            u -= 2 * U_WRAP
        elif u <= -U_WRAP:
            u += 2 * U_WRAP
    v = min(max(u + b, -V_MAX), V_MAX)
    if variant == 2:
        return 1 if v >= theta else 0
    return 1 if v > theta else 0


@nb.njit(parallel=True, cache=True)
def finish_layer(ys, exps, kind, bias, theta, variant, out, pre):
    """Neuron outputs of one layer from the per-group sums ``ys`` (K, N, n). ``pre`` (N, n)
    receives ``a`` when it has rows (for trace)."""
    n_rows, n = ys.shape[1], ys.shape[2]
    keep = pre.shape[0] > 0
    for i in nb.prange(n_rows):
        for j in range(n):
            a = _input(ys, exps, i, j, variant)
            if keep:
                pre[i, j] = a
            if kind == 0:
                out[i, j] = _lif(a, bias[j], theta, variant)
            elif kind == 1:
                out[i, j] = max(a + bias[j], 0)
            else:
                out[i, j] = a + bias[j]


@nb.njit(parallel=True, cache=True)
def int_matmul(h, w_t):
    """Exact int64 product for groups whose bound rules out float BLAS."""
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
