"""Exact integer products on AVX2 (CPUs without AVX-512 VNNI): ``vpmaddwd`` (int16 x int16,
two adjacent products summed into each int32 lane), emitted from Numba through an LLVM
intrinsic, accumulated with ``vpaddd`` in int32.

A layer qualifies (``fits``) when its weights fit int16, its input codes fit int16 after an
offset (``[-32768, 32767]`` as they are, ``[0, 65535]`` stored as ``code - 32768``), and
``peak * max_row sum|W| < 2^31`` with ``peak`` the largest stored code magnitude
(``hwq.quant.bounds.pmaddwd_exact``). Every partial sum, a pair or any sum of pairs, is then a
sum of products ``|x w| <= peak |w|`` over part of one row, so it is below ``2^31`` in
magnitude and neither ``vpmaddwd`` nor ``vpaddd`` wraps. The offset is removed afterwards in
int64 (``acc = sum((x + o) w) - o sum(w)``). 8-bit codes (``peak`` 255 or 128) get the same
bound as AVX-512 VNNI; weights may be up to int16 in one product.

Layout. Weights ``W`` (M, K) are packed once as ``wpk[g, 2c + t] = W[c, 2g + t]`` (int16; K
padded to a multiple of 2, M to a multiple of 8, zeros in the padding): row ``g`` holds, for
every output ``c``, the two weights of input pair ``g``, so one 32-byte load feeds 8 outputs.
A block of ``BLOCK`` input rows is copied into int16 (``pack_rows``), then a register tile of
``R`` rows x ``V`` vectors of 8 outputs broadcasts one pair of codes of a row and accumulates
``acc[r][v] += pmaddwd(x[r, 2g:2g+2], W[8v:8v+8, 2g:2g+2])``.

Codes already in the stored form (int16 over its whole range, or uint16 over its whole range
read with the top bit flipped: ``in_place16``) are read where they lie, a whole block at a
time, with no copy. 8-bit codes with weights of about +-64 at most take the ``vpmaddubsw``
product further down (``product8``, ``u8_groups``): twice the products per instruction.

The threaded driver and block claiming are ``blocks.run_blocks`` and ``blocks.claim``, shared
with the VNNI kernels; sim's ``kernels.avx2_layer`` and the plain ``matmul`` here combine
``pack_rows`` and ``product`` with their epilogues, as the VNNI kernels do.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from hwq.ir.codes import container as _container
from hwq.quant.bounds import pmaddwd_exact

from .blocks import BLOCK, claim, run_blocks
from .vnni_layout import input_offset as vnni_input_offset
from .vnni_layout import int8_exact

MAX_VECTORS = 3  # 8-output vectors per register tile
ROWS = (0, 8, 6, 4)  # BLOCK is a multiple of each; rows per tile for V vectors: R*V + V + 1 <= 16 ymm registers

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_V8 = ir.VectorType(_I32, 8)
_V16 = ir.VectorType(ir.IntType(16), 16)
_BYTE_PTR = ir.IntType(8).as_pointer()
INT16_MAX = 2**15 - 1

FORCE_OFF = "HWQ_AVX2"  # HWQ_AVX2=0 (or off, false, no): plan as on a CPU without AVX2


def available() -> bool:
    """True when Numba compiles for this host, the host has AVX2, and the environment does not
    turn it off (``HWQ_AVX2=0``)."""
    if os.environ.get(FORCE_OFF, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if nb.config.DISABLE_JIT or nb.config.CPU_NAME not in (None, "host") or nb.config.CPU_FEATURES:
        return False
    return bool(llvm_binding.get_host_cpu_features().get("avx2"))


def _const(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def _make_tile(rows: int, vectors: int, flip: bool = False):
    """``c[ic:ic+rows, 8 v0 : 8 (v0+vectors)] = a[ia:ia+rows] @ W.T`` over ``pairs`` pairs of
    inputs (row strides in bytes: ``lda``, ``ldb``, ``ldc``); with ``flip`` every int16 code
    read has its top bit flipped first (uint16 codes read in place as ``code - 32768``)."""

    @intrinsic
    def tile(typingctx, a, b, c, ia, ic, v0, pairs, lda, ldb, ldc):
        i64 = types.int64
        sig = types.void(a, b, c, i64, i64, i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            a_arr, b_arr, c_arr, ia, ic, v0, pairs, lda, ldb, ldc = args
            ptrs = [builder.bitcast(context.make_array(t)(context, builder, v).data, _BYTE_PTR)
                    for t, v in zip(signature.args[:3], (a_arr, b_arr, c_arr))]
            a_ptr, b_ptr, c_ptr = ptrs
            madd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8, [_V16, _V16]), "llvm.x86.avx2.pmadd.wd")
            col0 = builder.mul(v0, _const(32))
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V8, None))
                     for _ in range(vectors)] for _ in range(rows)]
            a_rows = [builder.gep(a_ptr, [builder.mul(builder.add(ia, _const(r)), lda)])
                      for r in range(rows)]
            with cgutils.for_range(builder, pairs) as loop:
                g = loop.index
                b_row = builder.add(builder.mul(g, ldb), col0)
                w = [builder.load(builder.bitcast(
                    builder.gep(b_ptr, [builder.add(b_row, _const(32 * v))]), _V16.as_pointer()),
                    align=1) for v in range(vectors)]
                for r in range(rows):
                    x2 = builder.load(builder.bitcast(
                        builder.gep(a_rows[r], [builder.mul(g, _const(4))]), _I32.as_pointer()),
                        align=1)
                    if flip:
                        x2 = builder.xor(x2, ir.Constant(_I32, 0x80008000 - 2**32))
                    x = builder.insert_element(ir.Constant(_V8, None), x2, ir.Constant(_I32, 0))
                    x = builder.shuffle_vector(x, ir.Constant(_V8, None), ir.Constant(_V8, [0] * 8))
                    x = builder.bitcast(x, _V16)
                    for v in range(vectors):
                        acc = builder.add(builder.load(accs[r][v]), builder.call(madd, [x, w[v]]))
                        builder.store(acc, accs[r][v])
            for r in range(rows):
                c_row = builder.mul(builder.add(ic, _const(r)), ldc)
                for v in range(vectors):
                    dst = builder.gep(c_ptr, [builder.add(c_row, builder.add(col0, _const(32 * v)))])
                    builder.store(builder.load(accs[r][v]), builder.bitcast(dst, _V8.as_pointer()),
                                  align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile1, _tile2, _tile3 = (_make_tile(ROWS[v], v) for v in range(1, MAX_VECTORS + 1))
_flip1, _flip2, _flip3 = (_make_tile(ROWS[v], v, True) for v in range(1, MAX_VECTORS + 1))


@nb.njit(cache=True, nogil=True)
def product_rows(a, ia, wpk, c, rows, flip):
    """``c[:rows] = a[ia:ia+rows] @ W.T`` (int32) for int16 codes ``a`` (a packed block, or
    int16/uint16 codes read in place; ``flip``: uint16, read as ``code - 32768``). Tiles run
    whole: rows up to ``rows`` rounded up to 8 must exist in ``a`` (from ``ia``) and ``c``."""
    pairs = wpk.shape[0]
    lda, ldb, ldc = a.shape[1] * 2, wpk.shape[1] * 2, c.shape[1] * 4
    nvec = wpk.shape[1] // 16
    v0 = 0
    while v0 < nvec:
        v = min(MAX_VECTORS, nvec - v0)
        for i in range(0, rows, ROWS[v]):
            if flip:
                if v == 3:
                    _flip3(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
                elif v == 2:
                    _flip2(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
                else:
                    _flip1(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
            elif v == 3:
                _tile3(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
            elif v == 2:
                _tile2(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
            else:
                _tile1(a, wpk, c, ia + i, i, v0, pairs, lda, ldb, ldc)
        v0 += v


@nb.njit(cache=True, nogil=True)
def product(a, wpk, c, rows):
    """``c[:rows] = a[:rows] @ W.T`` (int32) for an int16 block ``a`` of BLOCK rows."""
    product_rows(a, 0, wpk, c, rows, False)


def in_place16(h: np.ndarray, lo: int, hi: int, offset: int) -> int:
    """How ``product_rows`` reads the codes ``h`` where they lie: 1 (int16 as they are), 2
    (uint16 with the top bit flipped: ``code - 32768``, the stored form ``offset`` -32768
    asks for), or 0 (packed): only C-contiguous rows of whole pairs whose range ``[lo, hi]`` is
    the whole container (nothing to check)."""
    if h.ndim != 2 or not h.flags.c_contiguous or h.shape[1] % 2:
        return 0
    if h.dtype == np.int16 and offset == 0 and lo <= -32768 and hi >= 32767:
        return 1
    if h.dtype == np.uint16 and offset == -32768 and lo <= 0 and hi >= 65535:
        return 2
    return 0


@nb.njit(cache=True, nogil=True)
def pack_rows(h, i0, rows, lo, hi, offset, a):
    """Rows ``i0 .. i0+rows`` of the codes ``h`` (any numeric dtype) into the int16 block ``a``
    as ``code + offset``; returns how many codes fell outside ``[lo, hi]``."""
    k = h.shape[1]
    count = 0
    for r in range(rows):
        for p in range(k):
            q = np.int64(h[i0 + r, p])  # truncates, as the reference reads codes
            count += (q < lo) | (q > hi)
            a[r, p] = np.int16(q + offset)
    return count


@nb.njit(cache=True, nogil=True)
def _product_blocks(counter, h, lo, hi, offset, wpk, base, acc_out):
    """Blocks of ``matmul``: ``acc_out = h @ W.T + base`` (int64), no epilogue."""
    n, m = h.shape[0], acc_out.shape[1]
    a = np.zeros((BLOCK, wpk.shape[0] * 2), np.int16)
    c = np.empty((BLOCK, wpk.shape[1] // 2), np.int32)
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
    if not fits(weight, lo, hi):
        raise ValueError("avx2.matmul: weights or code range outside the exact int16 bound")
    offset = input_offset(lo, hi)
    wpk = pack_weights(weight) if wpk is None else wpk
    base = -offset * np.asarray(weight, np.int64).sum(axis=1)
    out = np.empty((h.shape[0], weight.shape[0]), np.int64)
    bad = run_blocks(_product_blocks, h.shape[0], np.ascontiguousarray(h), lo, hi, offset, wpk,
                          base, out)
    return None if bad else out


def pack_weights(weight: np.ndarray) -> np.ndarray:
    """``wpk[g, 2c + t] = W[c, 2g + t]`` (int16) with K padded to 2 and M to 8 (module doc)."""
    m, k = weight.shape
    mp, kp = -(-m // 8) * 8, -(-k // 2) * 2
    padded = np.zeros((mp, kp), np.int16)
    padded[:m, :k] = weight
    return np.ascontiguousarray(padded.reshape(mp, kp // 2, 2).transpose(1, 0, 2).reshape(kp // 2, 2 * mp))


def input_offset(lo: int, hi: int) -> int | None:
    """What codes in ``[lo, hi]`` get added to be stored in int16: 0, -32768, or None."""
    if -32768 <= lo and hi <= 32767:
        return 0
    if 0 <= lo and hi <= 65535:
        return -32768
    return None


def fits(weight: np.ndarray, lo: int, hi: int) -> bool:
    """Whether ``vpmaddwd`` computes ``h @ W.T`` exactly for codes in ``[lo, hi]`` (module doc)."""
    offset = input_offset(lo, hi)
    if offset is None:
        return False
    return pmaddwd_exact(weight, max(abs(lo + offset), abs(hi + offset)))


def container(lo: int, hi: int):
    """The narrowest dtype holding codes in ``[lo, hi]`` that ``pack_rows`` reads (int16 before
    uint16: ``vpmaddwd`` lanes are signed), else int64."""
    return _container(lo, hi, AVX2_CONTAINERS)


AVX2_CONTAINERS = ("uint8", "int8", "int16", "uint16")


# ------------------------------------------------ 8-bit codes: vpmaddubsw, int16 partial sums
#
# Where the codes fit u8 (``[0, 255]`` as they are, ``[-128, 127]`` stored as ``code + 128``:
# ``vnni_layout.input_offset``) and the weights int8, ``vpmaddubsw`` multiplies 32 u8 x s8
# pairs per instruction (twice ``vpmaddwd``'s 16) and sums adjacent products into int16 lanes
# *with saturation*; ``vpaddw`` then adds the int16 results of ``n`` consecutive groups of four
# inputs (wrapping), and one ``vpmaddwd`` with ones widens each lane pair into the int32
# accumulator (``vpaddd``). Exact when no int16 partial sum can leave ``[-32768, 32767]`` and
# no int32 one ``2^31``:
#
# * int16 lane ``t`` (0 or 1) of output ``c`` over the groups ``g`` of one chunk ``G`` (``n``
#   groups, aligned at multiples of ``n``) sums ``x[4g+2t+s] W[c, 4g+2t+s]`` for ``s`` in 0, 1
#   and ``g`` in ``G``; every partial sum (a single pair included, which is what saturates)
#   is at most ``peak * sum|W|`` over those entries. ``u8_groups`` picks the largest ``n`` (at
#   most ``MAX_GROUPS``) for which ``peak * max_{c,t,G} sum|W| <= 32767``, None when even
#   ``n = 1`` fails (weights beyond about +-64);
# * the int32 lanes: ``peak * max_row sum|W| < 2^31`` (``vnni_layout.int8_exact``).
#
# Layout: ``wpk8[g, 4c + t] = W[c, 4g + t]`` (int8; K padded to 4, M to 8): one 32-byte load
# feeds 8 outputs. uint8 codes whose rows are whole groups (K a multiple of 4) and whose range
# is the whole container are read in place, with no copy and no range check.

MAX_GROUPS = 16  # groups of four inputs summed in int16 before widening
MAX_VECTORS8 = 3  # 8-output vectors per register tile (4 spills on 16 ymm registers)
ROWS8 = (0, 8, 6, 4)  # rows per tile for V vectors (BLOCK is a multiple of each)
_V32B = ir.VectorType(ir.IntType(8), 32)
_ONES16 = ir.Constant(_V16, [1] * 16)


def _make_tile8(rows: int, vectors: int):
    """``c[ic:ic+rows, 8 v0 : 8 (v0+vectors)] = a[ia:ia+rows] @ W.T`` over ``groups`` groups of
    four u8 codes, ``n`` groups summed in int16 between widenings (row strides in bytes)."""

    @intrinsic
    def tile(typingctx, a, b, c, ia, ic, v0, groups, n, lda, ldb, ldc):
        i64 = types.int64
        sig = types.void(a, b, c, i64, i64, i64, i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            a_arr, b_arr, c_arr, ia, ic, v0, groups, n, lda, ldb, ldc = args
            a_ptr, b_ptr, c_ptr = (
                builder.bitcast(context.make_array(t)(context, builder, v).data, _BYTE_PTR)
                for t, v in zip(signature.args[:3], (a_arr, b_arr, c_arr)))
            maddubs = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V16, [_V32B, _V32B]), "llvm.x86.avx2.pmadd.ub.sw")
            madd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8, [_V16, _V16]), "llvm.x86.avx2.pmadd.wd")
            col0 = builder.mul(v0, _const(32))
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(_V8, None))
                     for _ in range(vectors)] for _ in range(rows)]
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(_V16, None))
                     for _ in range(vectors)] for _ in range(rows)]
            a_rows = [builder.gep(a_ptr, [builder.mul(builder.add(ia, _const(r)), lda)])
                      for r in range(rows)]
            chunks = builder.sdiv(builder.add(groups, builder.sub(n, _const(1))), n)
            with cgutils.for_range(builder, chunks) as outer:
                g0 = builder.mul(outer.index, n)
                left = builder.sub(groups, g0)
                count = builder.select(builder.icmp_signed("<", left, n), left, n)
                for r in range(rows):
                    for v in range(vectors):
                        builder.store(ir.Constant(_V16, None), sums[r][v])
                with cgutils.for_range(builder, count) as inner:
                    g = builder.add(g0, inner.index)
                    b_row = builder.add(builder.mul(g, ldb), col0)
                    w = [builder.load(builder.bitcast(
                        builder.gep(b_ptr, [builder.add(b_row, _const(32 * v))]), _V32B.as_pointer()),
                        align=1) for v in range(vectors)]
                    for r in range(rows):
                        x4 = builder.load(builder.bitcast(
                            builder.gep(a_rows[r], [builder.mul(g, _const(4))]), _I32.as_pointer()),
                            align=1)
                        x = builder.insert_element(ir.Constant(_V8, None), x4, ir.Constant(_I32, 0))
                        x = builder.shuffle_vector(x, ir.Constant(_V8, None), ir.Constant(_V8, [0] * 8))
                        x = builder.bitcast(x, _V32B)
                        for v in range(vectors):
                            s = builder.add(builder.load(sums[r][v]), builder.call(maddubs, [x, w[v]]))
                            builder.store(s, sums[r][v])
                for r in range(rows):
                    for v in range(vectors):
                        wide = builder.call(madd, [builder.load(sums[r][v]), _ONES16])
                        builder.store(builder.add(builder.load(accs[r][v]), wide), accs[r][v])
            for r in range(rows):
                c_row = builder.mul(builder.add(ic, _const(r)), ldc)
                for v in range(vectors):
                    dst = builder.gep(c_ptr, [builder.add(c_row, builder.add(col0, _const(32 * v)))])
                    builder.store(builder.load(accs[r][v]), builder.bitcast(dst, _V8.as_pointer()),
                                  align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile8_1, _tile8_2, _tile8_3 = (_make_tile8(ROWS8[v], v) for v in range(1, MAX_VECTORS8 + 1))


@nb.njit(cache=True, nogil=True)
def product8(a, ia, wpk8, n, c, rows):
    """``c[:rows] = a[ia:ia+rows] @ W.T`` (int32) for u8 codes ``a`` (a packed block, or the
    codes themselves) whose rows ``ia ..`` hold at least ``4 * groups`` bytes; ``n``: groups
    summed in int16 (``u8_groups``). Tiles run whole: rows up to ``rows`` rounded up to 8
    must exist in ``a`` (from ``ia``) and ``c`` (a full BLOCK always does); those past
    ``rows`` are computed from whatever they hold and ignored."""
    groups = wpk8.shape[0]
    lda, ldb, ldc = a.shape[1], wpk8.shape[1], c.shape[1] * 4
    nvec = wpk8.shape[1] // 32
    v0 = 0
    while v0 < nvec:
        v = min(MAX_VECTORS8, nvec - v0)
        for i in range(0, rows, ROWS8[v]):
            if v == 3:
                _tile8_3(a, wpk8, c, ia + i, i, v0, groups, n, lda, ldb, ldc)
            elif v == 2:
                _tile8_2(a, wpk8, c, ia + i, i, v0, groups, n, lda, ldb, ldc)
            else:
                _tile8_1(a, wpk8, c, ia + i, i, v0, groups, n, lda, ldb, ldc)
        v0 += v


def pack_weights8(weight: np.ndarray) -> np.ndarray:
    """``wpk8[g, 4c + t] = W[c, 4g + t]`` (int8) with K padded to 4 and M to 8."""
    m, k = weight.shape
    mp, kp = -(-m // 8) * 8, -(-k // 4) * 4
    padded = np.zeros((mp, kp), np.int8)
    padded[:m, :k] = weight
    return np.ascontiguousarray(padded.reshape(mp, kp // 4, 4).transpose(1, 0, 2).reshape(kp // 4, 4 * mp))


def u8_groups(weight: np.ndarray, lo: int, hi: int) -> int | None:
    """How many groups of four inputs the ``vpmaddubsw`` product sums in int16 lanes before
    widening (the largest ``n <= MAX_GROUPS`` whose int16 bound holds, section comment), or
    None when that product is not exact for codes in ``[lo, hi]`` and these weights."""
    offset = u8_offset(lo, hi)
    w = np.asarray(weight)
    if offset is None or w.size == 0 or not int8_exact(w):
        return None
    peak = max(abs(lo + offset), abs(hi + offset))
    m, k = w.shape
    kp = -(-k // 4) * 4
    lanes = np.zeros((m, kp), np.int64)
    lanes[:, :k] = np.abs(w.astype(np.int64))
    lanes = lanes.reshape(m, kp // 4, 2, 2).sum(axis=3)  # (output, group, lane): sum|W| of a pair
    best = None
    for n in range(1, MAX_GROUPS + 1):
        groups = lanes.shape[1]
        pad = -(-groups // n) * n - groups
        chunked = np.pad(lanes, ((0, 0), (0, pad), (0, 0))).reshape(m, -1, n, 2).sum(axis=2)
        if peak * int(chunked.max()) > INT16_MAX:
            break
        best = n
    return best


def u8_offset(lo: int, hi: int) -> int | None:
    """What codes in ``[lo, hi]`` get added to be stored in u8: 0, 128, or None."""
    return vnni_input_offset(lo, hi)


def in_place8(h: np.ndarray, lo: int, hi: int) -> bool:
    """Whether the ``vpmaddubsw`` product reads the codes ``h`` as they are: uint8, C-contiguous,
    whole groups of four per row, and ``[lo, hi]`` the whole container (nothing to check)."""
    return (h.dtype == np.uint8 and h.flags.c_contiguous and h.ndim == 2 and h.shape[1] % 4 == 0
            and lo <= 0 and hi >= 255)
