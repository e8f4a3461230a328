"""Patch gathering for convolutions: the rows of the patch matrix, written straight into the
operand of an exact product (im2col into the packed block), for every backend.

A convolution over ``Window`` ``win`` (``hwq.ir.window``) is, per group ``g``, the dense product
``patch_g @ W_g.T`` where row ``n P + p`` of ``patch_g`` (``P = Ho Wo`` positions) is the patch of
output position ``p`` of sample ``n``: ``patch_g[n P + p, k] = h[n, idx[g, p, k]]``, or the code of
real zero where ``idx[g, p, k] == -1`` (padding; docs/integer-semantics.md section 8). ``idx`` is
``win.gather_index`` (the one statement of the geometry), kept here as int32.

A product stores codes as ``code + offset`` (AVX-512 VNNI: u8 with ``+0`` or ``+128``, or two byte
planes of ``code + offset`` in 16 bits; AVX2: int16 with ``+0`` or ``-32768``; float and int64
products: ``+0``), so padding is stored as ``0 + offset`` (``stored_zero``): 128, not byte 0, for
signed codes on VNNI. The epilogue's ``base = bias - offset sum_k W[:, k]`` then removes the offset
from padding and codes alike.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hwq.ir.window import Window

_INDEX_CACHE: dict[Window, np.ndarray] = {}


def gather_index(win: Window) -> np.ndarray:
    """``win.gather_index`` as a C-contiguous int32 array (groups, P, K) (-1: padding), made once per window."""
    idx = _INDEX_CACHE.get(win)
    if idx is None:
        full = win.gather_index
        if win.n_in >= 2**31:
            raise ValueError(f"a convolution input of {win.n_in} codes per sample is beyond int32 indexing")
        idx = np.ascontiguousarray(full, np.int32)
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        _INDEX_CACHE[win] = idx
    return idx


def stored_zero(offset: int) -> int:
    """How a product stores the code of real zero (padding): ``0 + offset``."""
    return int(offset)


@nb.njit(cache=True, nogil=True)
def pack_patch_rows(h, idx, row0, rows, lo, hi, offset, pad, a):
    """Rows ``row0 .. row0+rows`` of one group's patch matrix into the block ``a`` (any dtype:
    u8 for VNNI, int16 for AVX2, float or int64 for BLAS): ``a[r, k] = h[n, idx[p, k]] + offset``
    with ``(n, p) = divmod(row0 + r, P)``, ``pad`` where ``idx`` is -1. Codes are read as int64
    (truncating, as the reference reads them). Returns how many codes read fell outside ``[lo, hi]``."""
    positions, k = idx.shape
    count = 0
    n, p = row0 // positions, row0 % positions
    for r in range(rows):
        src = h[n]
        ix = idx[p]
        dst = a[r]
        for t in range(k):
            j = ix[t]
            if j < 0:
                dst[t] = pad
            else:
                q = np.int64(src[j])
                count += (q < lo) | (q > hi)
                dst[t] = q + offset
        p += 1
        if p == positions:
            p = 0
            n += 1
    return count


@nb.njit(cache=True, nogil=True)
def pack_patch_planes(h, idx, row0, rows, lo, hi, offset, pad, a_lo, a_hi):
    """``pack_patch_rows`` for 16-bit codes on two byte planes: ``u = code + offset`` (``pad`` for
    padding) split into ``a_lo = u & 255`` and ``a_hi = u >> 8``. Returns the out-of-range count."""
    positions, k = idx.shape
    count = 0
    n, p = row0 // positions, row0 % positions
    for r in range(rows):
        src = h[n]
        ix = idx[p]
        for t in range(k):
            j = ix[t]
            if j < 0:
                u = np.int64(pad)
            else:
                q = np.int64(src[j])
                count += (q < lo) | (q > hi)
                u = q + offset
            a_lo[r, t] = np.uint8(u & 255)
            a_hi[r, t] = np.uint8((u >> 8) & 255)
        p += 1
        if p == positions:
            p = 0
            n += 1
    return count


ROWS_PER_TASK = 256


@nb.njit(parallel=True, cache=True)
def gather_rows(h, idx, lo, hi, pad, out):
    """The whole patch matrix of one group, ``out`` (N P, K) in any dtype (padding: ``pad``), in
    parallel; returns the out-of-range count."""
    total = out.shape[0]
    tasks = (total + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    counts = np.zeros(max(tasks, 1), np.int64)
    for t in nb.prange(tasks):
        r0 = t * ROWS_PER_TASK
        counts[t] = pack_patch_rows(h, idx, r0, min(ROWS_PER_TASK, total - r0), lo, hi, 0, pad, out[r0:])
    return counts.sum()


def patches(win: Window, h: np.ndarray, dtype=np.int64, pad_code: int = 0) -> np.ndarray:
    """Every patch of the C-order maps ``h`` (N, C H W): ``(N, groups, P, K)`` in ``dtype``, padding
    read as ``pad_code`` (``hwq.quant.reference.patches``, made by the kernel above)."""
    idx = gather_index(win)
    h = np.ascontiguousarray(h)
    n = h.shape[0]
    out = np.empty((win.groups, n * win.positions, win.patch_len), dtype)
    for g in range(win.groups):
        gather_rows(h, idx[g], np.iinfo(np.int64).min, np.iinfo(np.int64).max, pad_code, out[g])
    return out.reshape(win.groups, n, win.positions, win.patch_len).transpose(1, 0, 2, 3)
