"""Numba kernels of the sim target: the integer semantics of hwq/quant/reference.py, fused and
parallel over the batch (``finish_layer`` after a BLAS or int64 product, ``vnni_layer`` on the
shared exact int8 product of ``targets/common/vnni.py``, ``avx2_layer`` on the exact int16
product of ``targets/common/avx2.py``)."""

from __future__ import annotations

import numba as nb
import numpy as np

from ..common import avx2, vnni

MODES = {"identity": 0, "step": 1, "relu": 2, "clip": 2, "sigmoid": 3, "sign": 4}  # by Kind.family


def epilogue(layer) -> tuple[int, int, np.ndarray]:
    """``(mode, act_max, lut)`` of a layer for ``finish_rows``: the clamping kinds (relu, clip)
    run mode 2, ``clip(z, lut[0], act_max)`` with their code range; sigmoid its LUT."""
    kind = layer.activation_kind
    mode = MODES[kind.family]
    if mode == 2:
        lo, hi = kind.code_range(layer.act_bits, layer.lut, 0)
        return mode, hi, np.array([lo], np.int64)
    return mode, 0, layer.lut if layer.lut is not None else np.zeros(1, np.int64)
NO_BYTES = np.zeros((0, 2), np.uint8)


@nb.njit(cache=True, nogil=True)
def finish_rows(acc, r0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, o0):
    """Rows ``r0 .. r0+rows`` of a product ``acc`` (any dtype, integer-valued): ``acc + base``
    (``base`` = bias, minus any input offset) into ``acc_out`` and the activated codes into
    ``out``, rows ``o0 ..``; either output may have 0 rows to skip it. This is
    ``hwq.quant.reference.activate`` with ``half = 2^(shift-1)`` (0 when ``shift == 0``), so the
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
        elif mode == 2:  # relu and clip: clip(z, lut[0], act_max)
            act_min = lut[0]
            for j in range(m):
                z = ((np.int64(acc[r0 + r, j]) + base[j]) * mult[j] + half[j]) >> shift[j]
                out[o0 + r, j] = min(max(z, act_min), act_max)
        elif mode == 4:
            for j in range(m):
                out[o0 + r, j] = np.int64(1) if np.int64(acc[r0 + r, j]) + base[j] >= 0 else np.int64(-1)
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
        finish_rows(
            acc, i0, min(ROWS_PER_TASK, n - i0), base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, i0
        )


@nb.njit(cache=True, nogil=True)
def vnni_blocks(counter, h, lo, hi, offset, wpk, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out):
    """The blocks of ``layer`` that this thread claims from ``counter`` (dynamic scheduling:
    a thread the OS runs late takes fewer blocks); returns the out-of-range count."""
    n = h.shape[0]
    a = np.zeros((vnni.BLOCK, wpk.shape[0] * 4), np.uint8)
    c = np.empty((vnni.BLOCK, wpk.shape[1] // 4), np.int32)
    count = 0
    nblocks = (n + vnni.BLOCK - 1) // vnni.BLOCK
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * vnni.BLOCK
        rows = min(vnni.BLOCK, n - i0)
        count += vnni.pack_rows(h, i0, rows, lo, hi, offset, a)
        vnni.product(a, wpk, c, rows)
        finish_rows(c, 0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, i0)


@nb.njit(cache=True, nogil=True)
def vnni_planes_blocks(counter, h, hb, flip, planes, lo, hi, offset, wpk, base, mult, half, shift, mode, act_max,
                       lut, lut_half, acc_out, out):
    """``vnni_blocks`` for 16-bit codes and/or wide weights: the codes as ``planes`` byte
    planes (1: ``vnni.pack_rows``; 2: ``vnni.split_planes`` from the byte view ``hb`` when it
    has rows, else ``vnni.pack_planes``), the weights as the byte digits ``wpk[d]``, and
    ``acc = sum_d 256^d (P_lo,d + 256 P_hi,d) + base``. Returns the out-of-range count."""
    raw = hb.shape[0] > 0
    n, m = h.shape[0], base.shape[0]
    k4, cols = wpk.shape[1] * 4, wpk.shape[2] // 4
    a_lo = np.zeros((vnni.BLOCK, k4), np.uint8)
    a_hi = np.zeros((vnni.BLOCK, k4), np.uint8)
    c_lo = np.empty((vnni.BLOCK, cols), np.int32)
    c_hi = np.empty((vnni.BLOCK, cols), np.int32)
    c = np.empty((vnni.BLOCK, m), np.int64)
    count = 0
    nblocks = (n + vnni.BLOCK - 1) // vnni.BLOCK
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * vnni.BLOCK
        rows = min(vnni.BLOCK, n - i0)
        if planes == 1:
            count += vnni.pack_rows(h, i0, rows, lo, hi, offset, a_lo)
        elif raw:
            vnni.split_planes(hb, i0, rows, flip, a_lo, a_hi)
        else:
            count += vnni.pack_planes(h, i0, rows, lo, hi, offset, a_lo, a_hi)
        for d in range(wpk.shape[0]):
            vnni.product(a_lo, wpk[d], c_lo, rows)
            if planes == 2:
                vnni.product(a_hi, wpk[d], c_hi, rows)
            for r in range(rows):
                for j in range(m):
                    v = np.int64(c_lo[r, j])
                    if planes == 2:
                        v += np.int64(c_hi[r, j]) << 8
                    v <<= 8 * d
                    c[r, j] = v if d == 0 else c[r, j] + v
        finish_rows(c, 0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, i0)


def vnni_layer(h, lo, hi, offset, wpk, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out,
               planes: int = 0) -> int:
    """One layer on input codes ``h`` (N, K) of any numeric dtype: ``acc = h @ W.T + bias``
    into ``acc_out`` (int64) and the activated codes into ``out``; either may have 0 rows to
    skip it; ``base = bias - offset * sum_i W[:, i]`` undoes the u8 offset. Returns how many
    codes fell outside ``[lo, hi]`` (their rows are then wrong and the caller must use an exact
    fallback). ``planes`` 0: 8-bit codes, int8 weights ``wpk`` (``vnni_blocks``); 1 or 2: the
    codes as that many byte planes and ``wpk`` a stack of packed weight digits
    (``vnni_planes_blocks``)."""
    if planes:
        hb, flip = (vnni.byte_view(h, lo, hi) if planes == 2 else None) or (NO_BYTES, 0)
        return vnni.run_blocks(vnni_planes_blocks, h.shape[0], h, hb, np.uint8(flip), planes, lo, hi, offset,
                               wpk, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out)
    return vnni.run_blocks(
        vnni_blocks,
        h.shape[0],
        h,
        lo,
        hi,
        offset,
        wpk,
        base,
        mult,
        half,
        shift,
        mode,
        act_max,
        lut,
        lut_half,
        acc_out,
        out,
    )


@nb.njit(cache=True, nogil=True)
def avx2_blocks(counter, h, in_place, lo, hi, offset, wpk, base, mult, half, shift, mode, act_max, lut, lut_half,
                acc_out, out):
    """``vnni_blocks`` on the AVX2 product: codes + ``offset`` packed into int16, the int32
    block product ``avx2.product_rows``, then the epilogue; whole blocks of 16-bit codes that
    ``avx2.in_place16`` allows (``in_place`` 1 or 2) are read where they lie. Returns the
    out-of-range count."""
    n = h.shape[0]
    a = np.zeros((avx2.BLOCK, wpk.shape[0] * 2), np.int16)
    c = np.empty((avx2.BLOCK, wpk.shape[1] // 2), np.int32)
    count = 0
    nblocks = (n + avx2.BLOCK - 1) // avx2.BLOCK
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * avx2.BLOCK
        rows = min(avx2.BLOCK, n - i0)
        if in_place and rows == avx2.BLOCK:
            avx2.product_rows(h, i0, wpk, c, rows, in_place == 2)
        else:
            count += avx2.pack_rows(h, i0, rows, lo, hi, offset, a)
            avx2.product_rows(a, 0, wpk, c, rows, False)
        finish_rows(c, 0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, i0)


def avx2_layer(h, lo, hi, offset, wpk, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out) -> int:
    """``vnni_layer`` (8-bit codes, ``planes`` 0) on the AVX2 int16 product: ``wpk`` is
    ``avx2.pack_weights(W)`` and ``base = bias - offset * sum_i W[:, i]``. Returns how many
    codes fell outside ``[lo, hi]``."""
    in_place = avx2.in_place16(h, lo, hi, offset)
    return vnni.run_blocks(avx2_blocks, h.shape[0], h, in_place, lo, hi, offset, wpk, base, mult, half, shift, mode,
                           act_max, lut, lut_half, acc_out, out)


@nb.njit(cache=True, nogil=True)
def avx2_u8_blocks(counter, h, in_place, lo, hi, offset, wpk8, groups, base, mult, half, shift, mode, act_max,
                   lut, lut_half, acc_out, out):
    """``avx2_blocks`` on the ``vpmaddubsw`` product (``avx2.product8``, 8-bit codes): whole
    blocks of codes that ``in_place`` (``avx2.in_place8``) are read where they lie, the others
    packed as u8 ``code + offset``; ``groups`` of four inputs are summed in int16 between
    widenings (``avx2.u8_groups``). Returns the out-of-range count."""
    n = h.shape[0]
    a = np.zeros((avx2.BLOCK, wpk8.shape[0] * 4), np.uint8)
    c = np.empty((avx2.BLOCK, wpk8.shape[1] // 4), np.int32)
    count = 0
    nblocks = (n + avx2.BLOCK - 1) // avx2.BLOCK
    while True:
        blk = vnni.claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * avx2.BLOCK
        rows = min(avx2.BLOCK, n - i0)
        if in_place and rows == avx2.BLOCK:
            avx2.product8(h, i0, wpk8, groups, c, rows)
        else:
            count += vnni.pack_rows(h, i0, rows, lo, hi, offset, a)
            avx2.product8(a, 0, wpk8, groups, c, rows)
        finish_rows(c, 0, rows, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out, i0)


def avx2_u8_layer(h, lo, hi, wpk8, groups, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out,
                  out) -> int:
    """``avx2_layer`` for 8-bit codes on the ``vpmaddubsw`` product: ``wpk8`` is
    ``avx2.pack_weights8(W)``, ``groups`` is ``avx2.u8_groups(W, lo, hi)`` and
    ``base = bias - avx2.u8_offset(lo, hi) * sum_i W[:, i]``. Returns how many codes fell
    outside ``[lo, hi]``."""
    return vnni.run_blocks(avx2_u8_blocks, h.shape[0], h, avx2.in_place8(h, lo, hi), lo, hi, avx2.u8_offset(lo, hi),
                           wpk8, groups, base, mult, half, shift, mode, act_max, lut, lut_half, acc_out, out)
