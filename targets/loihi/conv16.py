"""The direct convolution in int16 lanes (AVX2): 16 samples per vector, where every sum fits int16.

A convolution with one window group and one synapse group computes, per output ``(o, p)`` and
sample, ``c = sum_k D[o, k] h[idx[p, k]]`` (docs/loihi.md section 2). Where every such sum is
bounded by ``|c| <= c_max < 2^15`` for the codes the layer receives (``emulator.lanes16_fits``;
``c_max`` is ``emulator.sum_peak``) and the codes and digits fit int16, int16 lanes compute it
exactly: ``vpmullw`` keeps a product modulo 2^16 and ``vpaddw`` adds modulo 2^16, so the lane
ends with ``c`` modulo 2^16, and the one representative of that inside ``[-2^15, 2^15)`` is
``c`` itself (the partial sums may wrap on the way; it does not matter).

Spikes (codes in ``{0, 1}``: the layer before is a LIF) need no multiply: the block's inputs are
stored as masks ``-h`` (0 or all ones), and each tap adds ``mask & D[o, k]`` (``vpand``). Other
codes are stored as they are and multiplied (``vpmullw``). Either way 16 samples per instruction
where the float32 kernel of ``kernels.py`` adds 8 per FMA. A register tile covers ``outs``
output channels x ``reach`` positions (``TILES``; ``tile_for`` picks the one that pads the
layer's channels least), so each weight broadcast feeds ``reach`` positions and each input
vector ``outs`` channels. Padding taps read an extra all-zero row (index ``n_in``); the
positions are padded to a multiple of ``reach`` with such rows and the channels to a multiple
of ``outs`` with zero digits (their sums are never read).

The sums go to float32 (exact: ``|c| < 2^15``) and through the same epilogue as the float32
kernel (``kernels.position_neuron``: the shift and neuron, or the spike threshold compare), and
a pooling on the maps runs fused as there (``kernels.pool_lanes``). Tested against the
numpy-slice / Python-integer reference of docs/loihi.md section 2 with wrong variants
(tests/test_loihi_conv16.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir as _ir
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.core.extending import intrinsic as _intrinsic

from ..common.blocks import claim
from .kernels import LANES, pool_block, position_neuron, spike_thresholds, step_rows, store_lanes

# (output channels, positions) per register tile: outs * reach accumulators + outs weights + 1
# input <= 16 ymm; on the benchmark's CNN (AMD Zen 3) 4 x 2 is the fastest for 16 channels, 3 x 3
# for 6 (4 x 2 would pad them to 8: 1.6x slower)
TILES = ((4, 2), (3, 3), (2, 6))
SUM_LIMIT = 1 << 15  # int16 holds every sum |c| < 2^15 exactly

_I16 = _ir.IntType(16)
_I32 = _ir.IntType(32)
_I64 = _ir.IntType(64)
_V16 = _ir.VectorType(_I16, LANES)
_V16F = _ir.VectorType(_ir.FloatType(), LANES)


def _const(v: int) -> _ir.Constant:
    return _ir.Constant(_I64, v)


def _make_tile(outs: int, reach: int, masks: bool):
    @_intrinsic
    def tile(typingctx, buf, w, c, idx, p0, o0, k):
        """``c[r, o0 + o, b] = sum_t w[t, o0 + o] * buf[idx[p0 + r, t], b]`` (int16 lanes modulo
        2^16, then float32) for ``o < outs``, ``r < reach``, ``*`` an AND with ``masks``; ``k``
        taps; ``w`` (K, M) int16 digits, ``buf`` (rows, LANES) int16 codes or masks, ``idx``
        (P, K) int32, ``c`` (reach, M, LANES) float32."""
        i64 = _types.int64
        sig = _types.void(buf, w, c, idx, i64, i64, i64)

        def codegen(context, builder, signature, args):
            arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:4], args[:4])]
            buf_p, w_p, c_p, idx_p = (a.data for a in arrays)
            ldw = _cgutils.unpack_tuple(builder, arrays[1].shape, 2)[1]
            ldc = _cgutils.unpack_tuple(builder, arrays[2].shape, 3)[1]
            p0_v, o0_v, k_v = args[4:]
            zero = _ir.Constant(_V16, [0] * LANES)
            splat = _ir.Constant(_ir.VectorType(_I32, LANES), [0] * LANES)
            accs = [[_cgutils.alloca_once_value(builder, zero) for _ in range(reach)] for _ in range(outs)]
            rows = [builder.gep(idx_p, [builder.mul(builder.add(p0_v, _const(r)), k_v)]) for r in range(reach)]
            with _cgutils.for_range(builder, k_v) as loop:
                t = loop.index
                wrow = builder.gep(w_p, [builder.add(builder.mul(t, ldw), o0_v)])
                ws = []
                for o in range(outs):
                    v = builder.insert_element(_ir.Constant(_V16, None), builder.load(builder.gep(wrow, [_const(o)])),
                                               _ir.Constant(_I32, 0))
                    ws.append(builder.shuffle_vector(v, _ir.Constant(_V16, None), splat))
                for r in range(reach):
                    j = builder.sext(builder.load(builder.gep(rows[r], [t])), _I64)
                    src = builder.gep(buf_p, [builder.mul(j, _const(LANES))])
                    x = builder.load(builder.bitcast(src, _V16.as_pointer()), align=2)
                    for o in range(outs):
                        acc = accs[o][r]
                        term = builder.and_(x, ws[o]) if masks else builder.mul(x, ws[o])
                        builder.store(builder.add(builder.load(acc), term), acc)
            for r in range(reach):
                for o in range(outs):
                    row = builder.add(builder.mul(_const(r), ldc), builder.add(o0_v, _const(o)))
                    dst = builder.gep(c_p, [builder.mul(row, _const(LANES))])
                    builder.store(builder.sitofp(builder.load(accs[o][r]), _V16F),
                                  builder.bitcast(dst, _V16F.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_mask42, _mask33, _mask26 = (_make_tile(o, r, True) for o, r in TILES)
_product42, _product33, _product26 = (_make_tile(o, r, False) for o, r in TILES)


def tile_for(channels: int) -> tuple[int, int]:
    """The tile of ``TILES`` that pads ``channels`` least (the first such)."""
    return min(TILES, key=lambda t: -(-channels // t[0]) * t[0])


def lanes_index(idx: np.ndarray, n_in: int, reach: int) -> np.ndarray:
    """One group's gather index (P, K; -1 padding) as the tile reads it: padding taps at the zero
    row ``n_in``, positions padded to a multiple of ``reach`` with rows of ``n_in`` (int32)."""
    positions, k = idx.shape
    rows = -(-positions // reach) * reach
    out = np.full((rows, k), n_in, np.int32)
    out[:positions] = np.where(idx >= 0, idx, n_in)
    return out


def lanes_weights(digits: np.ndarray, outs: int) -> np.ndarray:
    """The digits (M, K) as the tile reads them: (K, M') int16, ``M'`` a multiple of
    ``outs``, zero digits in the padding."""
    m, k = digits.shape
    out = np.zeros((k, -(-m // outs) * outs), np.int16)
    out[:, :m] = np.asarray(digits, np.int64).T
    return out


@nb.njit(cache=True, nogil=True)
def load_lanes16(h, i0, rows, lo, hi, masks, buf):
    """``buf[j, b] = h[i0 + b, j]`` as int16, or ``-h`` with ``masks`` (0 or -1 for a spike);
    lanes past ``rows`` and row ``n_in`` stay 0. Returns how many codes (read as int64,
    truncating) fell outside ``[lo, hi]``."""
    n_in = h.shape[1]
    sign = -1 if masks else 1
    count = 0
    for b in range(rows):
        src = h[i0 + b]
        for j in range(n_in):
            q = np.int64(src[j])
            count += (q < lo) | (q > hi)
            buf[j, b] = np.int16(sign * q)
    if rows < LANES:
        buf[:, rows:] = 0
    return count


@nb.njit(cache=True, nogil=True)
def run_tile(masks, outs, buf, w, c, idx, p0, o0, k):
    """The register tile of ``TILES`` with ``outs`` channels (ANDs of masks or products)."""
    if masks:
        if outs == 4:
            _mask42(buf, w, c, idx, p0, o0, k)
        elif outs == 3:
            _mask33(buf, w, c, idx, p0, o0, k)
        else:
            _mask26(buf, w, c, idx, p0, o0, k)
    elif outs == 4:
        _product42(buf, w, c, idx, p0, o0, k)
    elif outs == 3:
        _product33(buf, w, c, idx, p0, o0, k)
    else:
        _product26(buf, w, c, idx, p0, o0, k)


@nb.njit(cache=True, nogil=True)
def conv_lanes16(buf, idx, w, m, positions, outs, reach, masks, e, neuron, bias, theta, thr, compare, c, stage):
    """Every output of one block: the tiles' sums of ``reach`` positions at a time into ``c``,
    then ``kernels.position_neuron`` per position into ``stage[o P + p, b]``."""
    k = idx.shape[1]
    m_pad = w.shape[1]
    for p0 in range(0, idx.shape[0], reach):
        for o0 in range(0, m_pad, outs):
            run_tile(masks, outs, buf, w, c, idx, p0, o0, k)
        for r in range(reach):
            if p0 + r < positions:
                position_neuron(c[r], m, p0 + r, positions, e, neuron, bias, theta, thr, compare, stage)


@nb.njit(cache=True, nogil=True)
def conv16_blocks(counter, h, lo, hi, idx, w, outs, reach, exps, neuron, bias, theta, c_max, positions, maps,
                  geometry, table, s_lo, out):
    """``kernels.direct_conv_blocks`` in int16 lanes (one window group, one synapse group, no
    trace; spikes as masks where ``[lo, hi]`` is ``[0, 1]``) on the blocks of LANES samples this
    thread claims (``blocks.run_blocks``) with the tile ``(outs, reach)`` of ``TILES`` that ``idx``
    and ``w`` are padded for, its outputs ``o P + p`` in the container of ``maps`` (an empty
    array); with a pooling (``geometry`` = C, H, W, kh, kw, sh, sw, top, left, Ho, Wo; empty: none) the pooling on its
    maps follows in the same pass as ``kernels.direct_conv_pool_blocks`` runs it (``table``,
    ``s_lo``: its tabulated neuron), and only the pooling's outputs reach ``out``. Returns how many
    codes (read as int64, truncating) fell outside ``[lo, hi]``."""
    n = h.shape[0]
    m = bias.shape[0]
    masks = lo == 0 and hi == 1
    buf = np.zeros((h.shape[1] + 1, LANES), np.int16)  # row n_in: the padding taps' zeros
    c = np.zeros((reach, w.shape[1], LANES), np.float32)
    thr = np.empty(m, np.float32)
    compare = neuron == 0 and spike_thresholds(exps[0], bias, theta, c_max, thr)
    stage = np.empty((m * positions, LANES), maps.dtype)
    pool = geometry.shape[0] > 0
    pooled = np.empty((out.shape[1] if pool else 0, LANES), out.dtype)
    s = np.empty((1, LANES), np.int32)
    steps = np.empty(table.shape[0], np.int32)
    if not step_rows(table, steps):
        steps = np.empty(0, np.int32)
    count = 0
    nblocks = (n + LANES - 1) // LANES
    while True:
        blk = claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * LANES
        rows = min(LANES, n - i0)
        count += load_lanes16(h, i0, rows, lo, hi, masks, buf)
        conv_lanes16(buf, idx, w, m, positions, outs, reach, masks, exps[0], neuron, bias, theta, thr, compare, c,
                     stage)
        if pool:
            pool_block(stage, geometry, table, s_lo, steps, s, pooled, out, i0, rows)
        else:
            store_lanes(stage, out, i0, rows)
