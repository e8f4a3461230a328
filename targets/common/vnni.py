"""Exact 8-bit products on AVX-512 VNNI: ``vpdpbusd`` (u8 x s8, four products summed into
each int32 lane), emitted from Numba through an LLVM intrinsic.

Where the product is exact and how weights are packed (``wpk[g, 4c + t] = W[c, 4g + t]``) is
pure numpy planning in ``vnni_layout.py`` (re-exported here: ``fits``, ``pack_weights``,
``digit_plan``, ...); the threaded driver that hands out blocks of rows is ``blocks.py``
(re-exported: ``BLOCK``, ``claim``, ``run_blocks``). This module is the code generation.

The kernel copies ``BLOCK`` input rows into a u8 block, then a register tile of ``R`` rows x
``V`` vectors of 16 outputs broadcasts four input bytes of a row and accumulates
``acc[r][v] += dot4(x[r, 4g:4g+4], W[16v:16v+16, 4g:4g+4])``. Bias, requantization and the
activation follow in the same pass (sim's ``kernels.vnni_layer``).

Reuse. The pieces are public so that other backends build their own fused layers on the same
exact product: ``pack_rows`` (codes into the u8 block, counting codes out of range) and
``product`` (the int32 block product); a block worker combines them with its own epilogue and
runs under ``run_blocks``. ``matmul`` is the plain exact product ``h @ W.T`` (int64). The loihi
emulator (``hwq_targets.loihi.kernels.vnni_blocks``) uses it for its 8-bit groups, as sim does.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from .blocks import BLOCK, claim, run_blocks  # noqa: F401  (re-exported for block workers)
from .vnni_layout import (  # noqa: F401  (re-exported: the planning callers ask vnni for)
    MAX_DIGITS,
    MAX_PRODUCTS,
    byte_view,
    digit_plan,
    fits,
    fits_planes,
    input_offset,
    int8_exact,
    pack_weights,
    plane_offset,
    weight_digits,
)

MAX_VECTORS = 7  # 16-output vectors per register tile
# rows per tile for V vectors (BLOCK is a multiple of each): R*V + V + 1 <= 32 zmm registers
ROWS = (0, 8, 8, 6, 4, 4, 3, 3)

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_V16 = ir.VectorType(_I32, 16)
_BYTE_PTR = ir.IntType(8).as_pointer()


FORCE_OFF = "HWQ_VNNI"  # HWQ_VNNI=0 (or off, false, no): plan as on a CPU without VNNI


def available() -> bool:
    """True when Numba compiles for this host, the host has AVX-512 VNNI, and the environment
    does not turn it off (``HWQ_VNNI=0``: every target then plans the products a CPU without
    VNNI runs, so that a VNNI machine can test that path as a whole suite)."""
    if os.environ.get(FORCE_OFF, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if nb.config.DISABLE_JIT or nb.config.CPU_NAME not in (None, "host") or nb.config.CPU_FEATURES:
        return False
    features = llvm_binding.get_host_cpu_features()
    return bool(features.get("avx512f")) and bool(features.get("avx512vnni"))


def _const(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _make_tile(rows: int, vectors: int):
    """``c[i0:i0+rows, 16 v0 : 16 (v0+vectors)] = a[i0:i0+rows] @ W.T`` over ``groups`` groups
    of four inputs (row strides in bytes: ``lda``, ``ldb``, ``ldc``)."""

    @intrinsic
    def tile(typingctx, a, b, c, i0, v0, groups, lda, ldb, ldc):
        i64 = types.int64
        sig = types.void(a, b, c, i64, i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            a_arr, b_arr, c_arr, i0, v0, groups, lda, ldb, ldc = args
            ptrs = [builder.bitcast(context.make_array(t)(context, builder, v).data, _BYTE_PTR)
                    for t, v in zip(signature.args[:3], (a_arr, b_arr, c_arr))]
            a_ptr, b_ptr, c_ptr = ptrs
            dot = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]),
                "llvm.x86.avx512.vpdpbusd.512")
            col0 = builder.mul(v0, _const(64))
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V16, None))
                     for _ in range(vectors)] for _ in range(rows)]
            a_rows = [builder.gep(a_ptr, [builder.mul(builder.add(i0, _const(r)), lda)])
                      for r in range(rows)]
            with cgutils.for_range(builder, groups) as loop:
                g = loop.index
                b_row = builder.add(builder.mul(g, ldb), col0)
                w = [builder.load(builder.bitcast(
                    builder.gep(b_ptr, [builder.add(b_row, _const(64 * v))]), _V16.as_pointer()),
                    align=1) for v in range(vectors)]
                for r in range(rows):
                    x4 = builder.load(builder.bitcast(
                        builder.gep(a_rows[r], [builder.mul(g, _const(4))]), _I32.as_pointer()),
                        align=1)
                    x = builder.insert_element(ir.Constant(_V16, None), x4, ir.Constant(_I32, 0))
                    x = builder.shuffle_vector(x, ir.Constant(_V16, None),
                                               ir.Constant(_V16, [0] * 16))
                    for v in range(vectors):
                        acc = builder.call(dot, [builder.load(accs[r][v]), x, w[v]])
                        builder.store(acc, accs[r][v])
            for r in range(rows):
                c_row = builder.mul(builder.add(i0, _const(r)), ldc)
                for v in range(vectors):
                    dst = builder.gep(c_ptr, [builder.add(c_row, builder.add(col0, _const(64 * v)))])
                    builder.store(builder.load(accs[r][v]), builder.bitcast(dst, _V16.as_pointer()),
                                  align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile1, _tile2, _tile3, _tile4, _tile5, _tile6, _tile7 = (
    _make_tile(ROWS[v], v) for v in range(1, MAX_VECTORS + 1))


@nb.njit(cache=True, nogil=True)
def product(a, wpk, c, rows):
    """``c[:rows] = a[:rows] @ W.T`` (int32) for a packed block ``a`` of BLOCK rows."""
    groups = wpk.shape[0]
    lda, ldb, ldc = a.shape[1], wpk.shape[1], c.shape[1] * 4
    nvec = wpk.shape[1] // 64
    v0 = 0
    while v0 < nvec:
        v = min(MAX_VECTORS, nvec - v0)
        for i in range(0, rows, ROWS[v]):
            if v == 7:
                _tile7(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            elif v == 6:
                _tile6(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            elif v == 5:
                _tile5(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            elif v == 4:
                _tile4(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            elif v == 3:
                _tile3(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            elif v == 2:
                _tile2(a, wpk, c, i, v0, groups, lda, ldb, ldc)
            else:
                _tile1(a, wpk, c, i, v0, groups, lda, ldb, ldc)
        v0 += v


@nb.njit(cache=True, nogil=True)
def pack_rows(h, i0, rows, lo, hi, offset, a):
    """Rows ``i0 .. i0+rows`` of the codes ``h`` (any numeric dtype) into the u8 block ``a``
    as ``code + offset``; returns how many codes fell outside ``[lo, hi]``."""
    k = h.shape[1]
    count = 0
    for r in range(rows):
        for p in range(k):
            q = np.int64(h[i0 + r, p])  # truncates, as the reference reads codes
            count += (q < lo) | (q > hi)
            a[r, p] = np.uint8(q + offset)
    return count


@nb.njit(cache=True, nogil=True)
def _product_blocks(counter, h, lo, hi, offset, wpk, base, acc_out):
    """Blocks of ``matmul``: ``acc_out = h @ W.T + base`` (int64), no epilogue."""
    n, m = h.shape[0], acc_out.shape[1]
    a = np.zeros((BLOCK, wpk.shape[0] * 4), np.uint8)
    c = np.empty((BLOCK, wpk.shape[1] // 4), np.int32)
    count = 0
    nblocks = (n + BLOCK - 1) // BLOCK
    while True:
        blk = claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * BLOCK
        rows = min(BLOCK, n - i0)
        count += pack_rows(h, i0, rows, lo, hi, offset, a)
        product(a, wpk, c, rows)
        for r in range(rows):
            for j in range(m):
                acc_out[i0 + r, j] = np.int64(c[r, j]) + base[j]


def matmul(h: np.ndarray, weight: np.ndarray, lo: int, hi: int,
           wpk: np.ndarray | None = None) -> np.ndarray | None:
    """The plain exact product ``h @ weight.T`` (int64) for codes ``h`` (N, K; any numeric
    dtype, integer-valued) that ``fits(weight, lo, hi)`` proves exact; ``wpk`` is
    ``pack_weights(weight)`` if already made. None when a code falls outside ``[lo, hi]``."""
    offset = input_offset(lo, hi)
    if not fits(weight, lo, hi):
        raise ValueError("vnni.matmul: weights or code range outside the exact int8 bound")
    wpk = pack_weights(weight) if wpk is None else wpk
    base = -offset * np.asarray(weight, np.int64).sum(axis=1)
    out = np.empty((h.shape[0], weight.shape[0]), np.int64)
    bad = run_blocks(_product_blocks, h.shape[0], np.ascontiguousarray(h), lo, hi, offset, wpk,
                     base, out)
    return None if bad else out


# ---------------------------------------------------------------- 16-bit codes: two byte planes
#
# A code ``x`` in 16 bits is stored as ``u = x + offset`` in ``[0, 65535]`` and split into
# ``u = 256 u_hi + u_lo`` with both bytes in ``[0, 255]``. Then
# ``sum_i x_i W_i = 256 sum_i u_hi,i W_i + sum_i u_lo,i W_i - offset sum_i W_i``: two u8 x s8
# products, each exact in int32 under the same bound as 8-bit codes (``255 * S < 2^31``),
# combined in int64. Twice the work of an 8-bit layer, none of the float BLAS conversions.


@nb.njit(cache=True, nogil=True)
def pack_planes(h, i0, rows, lo, hi, offset, a_lo, a_hi):
    """Rows ``i0 .. i0+rows`` of the codes ``h`` as ``u = code + offset`` split into the u8
    blocks ``a_lo`` (``u & 255``) and ``a_hi`` (``u >> 8``); returns how many codes fell
    outside ``[lo, hi]``."""
    k = h.shape[1]
    count = 0
    for r in range(rows):
        for p in range(k):
            q = np.int64(h[i0 + r, p])
            count += (q < lo) | (q > hi)
            u = q + offset
            a_lo[r, p] = np.uint8(u & 255)
            a_hi[r, p] = np.uint8((u >> 8) & 255)
    return count


@nb.njit(cache=True, nogil=True)
def split_planes(hb, i0, rows, flip, a_lo, a_hi):
    """``pack_planes`` for 16-bit codes whose range is the whole container, read as bytes:
    ``hb`` is the uint16 (``flip = 0``) or int16 (``flip = 0x80``: ``code + 32768`` is the
    bit pattern with its top bit flipped) array viewed as uint8 (N, 2K), little-endian. No
    code can fall outside, so nothing is counted."""
    k = hb.shape[1] // 2
    for r in range(rows):
        row, lo, hi = hb[i0 + r], a_lo[r], a_hi[r]
        for p in range(k):
            lo[p] = row[2 * p]
            hi[p] = row[2 * p + 1] ^ flip


