"""Numba kernels of the Loihi emulator: the per-sample closed form of what the Lava process
graph computes (see ``spec.py`` for the step-by-step version and docs/loihi.md).

The arithmetic rules live in three small inlined functions (``floor_shift``, ``wrap_current``,
``crosses``) that every kernel reaches through ``shifted`` and ``fire``; the tests build
deliberately wrong kernels by re-compiling these with one rule swapped (tests/test_loihi.py,
``wrong_kernels``) and show that the spec and Lava catch each.

``vnni_blocks`` runs a whole layer on AVX-512 VNNI where its groups and inputs fit 8 bits. It
reuses the shared exact int8 product (``targets/common/vnni.py``: block packing, the
``vpdpbusd`` register tiles and the threaded driver) and adds the Loihi epilogue.
``avx2_blocks`` does the same on the exact AVX2 int16 product (``targets/common/avx2.py``) where
no VNNI product runs.

``pool_layer`` runs a pooling (one window group per channel, one digit per channel and group)
straight on the spike or code maps: the exact window sum (``targets/common/pooling.window_sum``)
times each group's digit, shifted and summed, then the same neuron.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..common import avx2, pooling, vnni
from .limits import ACT_SHIFT, STATE_MAX, STATE_WRAP

NEURON_CODES = {"lif": 0, "relu": 1, "identity": 2}  # Loihi neuron model -> the ``neuron`` argument of the kernels


@nb.njit(cache=True, inline="always")
def floor_shift(v, k):
    """``floor(v / 2^k)`` for ``k > 0``: Loihi's right shift."""
    return v >> k


@nb.njit(cache=True, inline="always")
def wrap_current(u):
    """The LIF current ``u`` wrapped into ``(-2^23, 2^23]`` (24-bit state)."""
    if u > STATE_WRAP:
        return u - 2 * STATE_WRAP
    if u <= -STATE_WRAP:
        return u + 2 * STATE_WRAP
    return u


@nb.njit(cache=True, inline="always")
def crosses(v, theta):
    """Whether the LIF voltage ``v`` fires at threshold ``theta``."""
    return v > theta


@nb.njit(cache=True)
def add_shifted(y, e, a):
    """``a += shift(y, e)`` elementwise: ``y * 2^e``, or ``floor(y / 2^-e)`` for ``e < 0``.
    Serial loops with the exponent fixed per call vectorize well; they are memory-bound,
    so threads buy nothing next to the BLAS products."""
    n_rows, n = y.shape
    if e >= 0:
        m = np.int64(1) << e
        for i in range(n_rows):
            for j in range(n):
                a[i, j] += np.int64(y[i, j]) * m
    else:
        k = -e
        for i in range(n_rows):
            for j in range(n):
                a[i, j] += floor_shift(np.int64(y[i, j]), k)


@nb.njit(cache=True, inline="always")
def shifted(v, e):
    """``v * 2^e``, or ``floor(v / 2^-e)`` for ``e < 0``."""
    if e >= 0:
        return v << e
    return floor_shift(v, -e)


@nb.njit(cache=True, inline="always")
def fire(a, b, theta):
    """The LIFReset neuron: ``v = sat(wrap(a * 2^6) + b)``, a spike iff ``v > theta``."""
    v = min(max(wrap_current(a << ACT_SHIFT) + b, -STATE_MAX), STATE_MAX)
    return 1 if crosses(v, theta) else 0


@nb.njit(cache=True)
def fused(y, e, rest, neuron, bias, theta, out):
    """One layer's outputs straight from its last group's product ``y``: ``a = shift(y, e)``
    plus ``rest`` (the other groups' sum, or an empty array), then the neuron."""
    n_rows, n = y.shape
    more = rest.shape[0] > 0
    for i in range(n_rows):
        for j in range(n):
            a = shifted(np.int64(y[i, j]), e)
            if more:
                a += rest[i, j]
            if neuron == 0:
                out[i, j] = fire(a, bias[j], theta)
            elif neuron == 1:
                out[i, j] = max(a + bias[j], 0)
            else:
                out[i, j] = a + bias[j]


@nb.njit(cache=True, nogil=True)
def vnni_blocks(counter, h, hb, flip, planes, lo, hi, offset, wpk, corr, exps, neuron, bias, theta, a_out, out):
    """The blocks of one layer that this thread claims (``vnni.run_blocks``): pack the codes
    ``h`` (+ ``offset``) into u8 once (``planes`` 1), or as two byte planes (``planes`` 2:
    16-bit codes, ``vnni.split_planes`` from the byte view ``hb`` when it has rows, else
    ``vnni.pack_planes``), then per group ``g`` the exact int32 product(s) with the packed
    digits ``wpk[g]``, ``y = P_lo + 256 P_hi + corr[g]`` (``corr = -offset * row sums``: the
    exact ``D_g @ h``), ``a += shift(y, exps[g])``; then ``a`` into ``a_out`` (0 rows: skip)
    and the neuron into ``out``. Returns how many codes fell outside ``[lo, hi]``."""
    n = h.shape[0]
    groups, m = wpk.shape[0], bias.shape[0]
    block = vnni.BLOCK
    raw = hb.shape[0] > 0
    a = np.zeros((block, wpk.shape[1] * 4), np.uint8)
    a_hi = np.zeros((block if planes == 2 else 0, wpk.shape[1] * 4), np.uint8)
    c = np.empty((block, wpk.shape[2] // 4), np.int32)
    c_hi = np.empty((block if planes == 2 else 0, wpk.shape[2] // 4), np.int32)
    s = np.empty((block, m), np.int64)
    keep = a_out.shape[0] > 0
    count = 0
    nblocks = (n + block - 1) // block
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * block
        rows = min(block, n - i0)
        if planes == 1:
            count += vnni.pack_rows(h, i0, rows, lo, hi, offset, a)
        elif raw:
            vnni.split_planes(hb, i0, rows, flip, a, a_hi)
        else:
            count += vnni.pack_planes(h, i0, rows, lo, hi, offset, a, a_hi)
        for g in range(groups):
            vnni.product(a, wpk[g], c, rows)
            if planes == 2:
                vnni.product(a_hi, wpk[g], c_hi, rows)
            e = exps[g]
            first = g == 0
            for r in range(rows):
                for j in range(m):
                    p = np.int64(c[r, j])
                    if planes == 2:
                        p += np.int64(c_hi[r, j]) << 8
                    y = shifted(p + corr[g, j], e)
                    s[r, j] = y if first else s[r, j] + y
        for r in range(rows):
            if keep:
                for j in range(m):
                    a_out[i0 + r, j] = s[r, j]
            if neuron == 0:
                for j in range(m):
                    out[i0 + r, j] = fire(s[r, j], bias[j], theta)
            elif neuron == 1:
                for j in range(m):
                    out[i0 + r, j] = max(s[r, j] + bias[j], 0)
            else:
                for j in range(m):
                    out[i0 + r, j] = s[r, j] + bias[j]


@nb.njit(cache=True, nogil=True)
def avx2_blocks(counter, h, lo, hi, offset, wpk, corr, exps, neuron, bias, theta, a_out, out):
    """``vnni_blocks`` on the AVX2 int16 product: the codes ``h`` + ``offset`` packed into int16
    once (``avx2.pack_rows``), per group ``g`` ``y = avx2.product(codes, wpk[g]) + corr[g]``
    (the exact ``D_g @ h``), ``a += shift(y, exps[g])``, then ``a`` into ``a_out`` (0 rows:
    skip) and the neuron into ``out``. Returns how many codes fell outside ``[lo, hi]``."""
    n = h.shape[0]
    groups, m = wpk.shape[0], bias.shape[0]
    block = avx2.BLOCK
    a = np.zeros((block, wpk.shape[1] * 2), np.int16)
    c = np.empty((block, wpk.shape[2] // 2), np.int32)
    s = np.empty((block, m), np.int64)
    keep = a_out.shape[0] > 0
    count = 0
    nblocks = (n + block - 1) // block
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * block
        rows = min(block, n - i0)
        count += avx2.pack_rows(h, i0, rows, lo, hi, offset, a)
        for g in range(groups):
            avx2.product(a, wpk[g], c, rows)
            e = exps[g]
            first = g == 0
            for r in range(rows):
                for j in range(m):
                    y = shifted(np.int64(c[r, j]) + corr[g, j], e)
                    s[r, j] = y if first else s[r, j] + y
        for r in range(rows):
            if keep:
                for j in range(m):
                    a_out[i0 + r, j] = s[r, j]
            if neuron == 0:
                for j in range(m):
                    out[i0 + r, j] = fire(s[r, j], bias[j], theta)
            elif neuron == 1:
                for j in range(m):
                    out[i0 + r, j] = max(s[r, j] + bias[j], 0)
            else:
                for j in range(m):
                    out[i0 + r, j] = s[r, j] + bias[j]


@nb.njit(parallel=True, cache=True)
def pool_layer(h, channels, height, width, kh, kw, sh, sw, top, left, ho, wo, digits, exps, neuron, bias, theta,
               a_out, out):
    """A pooling layer on the maps ``h`` (N, C H W; any numeric dtype, read as int64): for channel
    ``c`` and output position ``p = y Wo + x``, the window sum ``s`` (rows ``y sh - top ..`` +kh,
    columns ``x sw - left ..`` +kw, clipped to the image: padding adds 0), ``a = sum_g shift(digits[g,
    c] s, exps[g])`` (the ones kernel's ``D_g @ h`` when every synapse of channel ``c`` in group ``g``
    holds ``digits[g, c]``), then ``a`` into ``a_out[:, c P + p]`` (0 rows: skip) and the neuron with
    ``bias[c]`` into ``out[:, c P + p]`` (Loihi's neuron order)."""
    n = h.shape[0]
    groups = digits.shape[0]
    positions = ho * wo
    keep = a_out.shape[0] > 0
    for task in nb.prange(n * channels):
        i, c = task // channels, task % channels
        src = c * height * width
        dst = c * positions
        b = bias[c]
        for y in range(ho):
            y0 = y * sh - top
            i0, i1 = max(y0, 0), min(y0 + kh, height)
            for x in range(wo):
                x0 = x * sw - left
                s = pooling.window_sum(h, i, src, width, i0, i1, max(x0, 0), min(x0 + kw, width))
                a = np.int64(0)
                for g in range(groups):
                    a += shifted(digits[g, c] * s, exps[g])
                o = dst + y * wo + x
                if keep:
                    a_out[i, o] = a
                if neuron == 0:
                    out[i, o] = fire(a, b, theta)
                elif neuron == 1:
                    out[i, o] = max(a + b, 0)
                else:
                    out[i, o] = a + b
