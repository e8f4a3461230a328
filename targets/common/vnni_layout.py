"""Where the AVX-512 VNNI product is exact, and how its operands are laid out: pure numpy,
no code generation (the kernels are ``vnni.py``; the threaded driver is ``blocks.py``).

8-bit codes: a layer qualifies when its input codes fit 8 bits (``[0, 255]``, or ``[-128, 127]``
stored as ``code + 128``), its weights fit int8, and ``255 * max_row sum|W| < 2^31``. Then
every int32 partial sum of ``vpdpbusd`` is exact; the offset is removed afterwards in int64
(``acc = sum((x + 128) * w) - 128 * sum(w)``).

Weights ``W`` (M, K) are packed once as ``wpk[g, 4c + t] = W[c, 4g + t]`` (K padded to a multiple
of 4, M to a multiple of 16, zeros in the padding): row ``g`` holds, for every output ``c``, the
four weights of input group ``g``, so one 64-byte load feeds 16 outputs.
"""

from __future__ import annotations

import numpy as np

from hwq.quant.bounds import INT32_EXACT


def pack_weights(weight: np.ndarray) -> np.ndarray:
    """``wpk[g, 4c + t] = W[c, 4g + t]`` with K padded to 4 and M to 16 (see module doc)."""
    m, k = weight.shape
    mp, kp = -(-m // 16) * 16, -(-k // 4) * 4
    padded = np.zeros((mp, kp), np.int8)
    padded[:m, :k] = weight
    return np.ascontiguousarray(padded.reshape(mp, kp // 4, 4).transpose(1, 0, 2).reshape(kp // 4, 4 * mp))


def input_offset(lo: int, hi: int) -> int | None:
    """How codes in ``[lo, hi]`` are stored in u8: +0, +128, or None when they do not fit."""
    if 0 <= lo and hi <= 255:
        return 0
    if -128 <= lo and hi <= 127:
        return 128
    return None


def fits(weight: np.ndarray, lo: int, hi: int) -> bool:
    """Whether ``vpdpbusd`` computes this layer exactly (see module doc for the bound)."""
    return input_offset(lo, hi) is not None and int8_exact(weight)


def int8_exact(weight: np.ndarray) -> bool:
    """int8 weights whose u8 x s8 row sums stay exact in int32: ``255 * S < 2^31``."""
    if weight.size == 0 or weight.min() < -128 or weight.max() > 127:
        return False
    return 255 * int(np.abs(weight).sum(axis=1).max()) < INT32_EXACT


# ---------------------------------------------------------------- 16-bit codes: two byte planes
#
# A code ``x`` in 16 bits is stored as ``u = x + offset`` in ``[0, 65535]`` and split into
# ``u = 256 u_hi + u_lo`` with both bytes in ``[0, 255]``. Then
# ``sum_i x_i W_i = 256 sum_i u_hi,i W_i + sum_i u_lo,i W_i - offset sum_i W_i``: two u8 x s8
# products, each exact in int32 under the same bound as 8-bit codes (``255 * S < 2^31``),
# combined in int64. Twice the work of an 8-bit layer, none of the float BLAS conversions.


def plane_offset(lo: int, hi: int) -> int | None:
    """How codes in ``[lo, hi]`` are stored in u16: +0, +32768, or None when they do not fit."""
    if 0 <= lo and hi <= 65535:
        return 0
    if -32768 <= lo and hi <= 32767:
        return 32768
    return None


def fits_planes(weight: np.ndarray, lo: int, hi: int) -> bool:
    """Whether two ``vpdpbusd`` byte planes compute this layer exactly (see above)."""
    return plane_offset(lo, hi) is not None and int8_exact(weight)


def byte_view(h: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int] | None:
    """``(h as uint8 bytes, flip)`` when ``split_planes`` applies to codes ``h`` planned for
    ``[lo, hi]``: a C-contiguous little-endian uint16 array for ``[0, 65535]``, or int16 for
    ``[-32768, 32767]``; else None."""
    if not h.flags.c_contiguous or h.dtype.byteorder == ">" or h.ndim != 2:
        return None
    if h.dtype == np.uint16 and (lo, hi) == (0, 65535):
        return h.view(np.uint8), 0
    if h.dtype == np.int16 and (lo, hi) == (-32768, 32767):
        return h.view(np.uint8), 0x80
    return None


# ---------------------------------------------------------------- wide weights: signed byte digits
#
# Weights beyond int8 are written in balanced base 256, ``W = sum_d 256^d D_d`` with every
# digit ``D_d`` in ``[-128, 127]``; each digit is one more ``vpdpbusd`` product (per byte plane
# of the codes), exact in int32 when ``255 * max_row sum|D_d| < 2^31``, combined in int64.

MAX_DIGITS = 3  # |W| < 2^23
MAX_PRODUCTS = 4  # planes x digits: beyond this float64 BLAS is about as fast


def weight_digits(weight: np.ndarray) -> list[np.ndarray] | None:
    """``[D_0, D_1, ...]`` with ``W = sum_d 256^d D_d`` and each ``D_d`` in ``[-128, 127]``;
    None beyond ``MAX_DIGITS`` digits."""
    rest = np.asarray(weight, np.int64)
    digits = []
    for _ in range(MAX_DIGITS):
        low = (rest + 128) % 256 - 128
        digits.append(low)
        rest = (rest - low) // 256
        if not rest.any():
            return digits
    return None


def digit_plan(weight: np.ndarray, lo: int, hi: int) -> tuple[int, list[np.ndarray]] | None:
    """``(planes, digits)`` for a layer on codes in ``[lo, hi]``: 1 plane for 8-bit codes, 2
    for 16-bit; the weights' byte digits; None when no such VNNI product is exact or it would
    take more than ``MAX_PRODUCTS`` products."""
    if weight.size == 0:
        return None
    planes = 1 if input_offset(lo, hi) is not None else 2 if plane_offset(lo, hi) is not None else 0
    digits = weight_digits(weight) if planes else None
    if digits is None or planes * len(digits) > MAX_PRODUCTS:
        return None
    if any(255 * int(np.abs(d).sum(axis=1).max()) >= INT32_EXACT for d in digits):
        return None
    return planes, digits
