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

``direct_conv_blocks`` runs a convolution with one window group straight on the maps (float32
FMA register tiles, samples in vector lanes, exact under the 2^24 bound ``emulator.direct_fits``
proves); ``direct_conv_pool_blocks`` adds the pooling on its maps in the same pass (section at the
end of this file; tests/test_loihi_conv_kernel.py). Where a LIF layer's sums provably never wrap the
24-bit state, its spike is a vector compare of the float32 sum with a per-channel threshold found by
bisection on ``fire`` (``spike_thresholds``, ``reach_lanes``); a pooling sums its windows in vector
lanes (``add_lanes``) and, where its tabulated neuron is a step (``step_rows``), compares too.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import binding as _llvm_binding
from llvmlite import ir as _ir
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.core.extending import intrinsic as _intrinsic

from ..common import avx2, pooling, vnni
from ..common.blocks import claim
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


# --- Direct convolution on float32 FMA, samples in vector lanes (``direct_conv``) -------------------
#
# A convolution whose every partial sum is an integer below 2^24 (``products.product_path`` says
# "float32" for the layer's digits and input range, padding read as 0) runs exactly in float32 in
# any order. ``direct_conv`` copies a block of LANES samples into ``buf[j, b] = h[i0 + b, j]``
# (float32, one 64-byte row per input) and, per output position p and tile of up to TILE_OUT output
# channels, accumulates ``acc[o][b] += D[o, k] * buf[idx[p, k], b]`` over the taps of p that hit the
# map (padding taps are left out: they add 0) with ``llvm.fma.v8f32`` in 2 x TILE_OUT ymm registers
# (the weights broadcast, no patch matrix). Then per synapse group ``a += shift(acc, e)`` (int64) and
# the neuron, written to Loihi's neuron ``o P + p`` of each sample.

LANES = 16  # samples per block: two 8-float vectors
TILE_OUT = 6  # output channels per register tile: 2 TILE_OUT accumulators + 2 inputs + 1 weight <= 16 ymm
_F32 = _ir.FloatType()
_V8F = _ir.VectorType(_F32, 8)
_I64 = _ir.IntType(64)
_I32 = _ir.IntType(32)


def direct_available() -> bool:
    """Whether the host compiles ``direct_conv`` to AVX2 + FMA (the same conditions as the AVX2
    product: Numba compiling for this host, ``HWQ_AVX2`` not off)."""
    return avx2.available() and bool(_llvm_binding.get_host_cpu_features().get("fma"))


def _make_conv_tile(outs: int):
    @_intrinsic
    def tile(typingctx, buf, w, c, taps, ks, nk, o0, ldw):
        i64 = _types.int64
        sig = _types.void(buf, w, c, taps, ks, i64, i64, i64)

        def codegen(context, builder, signature, args):
            buf_a, w_a, c_a, taps_a, ks_a, nk_v, o0_v, ldw_v = args
            data = [context.make_array(t)(context, builder, v).data for t, v in zip(signature.args[:5], args[:5])]
            buf_p, w_p, c_p, taps_p, ks_p = data
            fma = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(_V8F, [_V8F, _V8F, _V8F]),
                                                  "llvm.fma.v8f32")
            zero = _ir.Constant(_V8F, [0.0] * 8)
            accs = [[_cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(outs)]
            with _cgutils.for_range(builder, nk_v) as loop:
                t = loop.index
                j = builder.sext(builder.load(builder.gep(taps_p, [t])), _I64)
                k = builder.sext(builder.load(builder.gep(ks_p, [t])), _I64)
                row = builder.gep(buf_p, [builder.mul(j, _ir.Constant(_I64, LANES))])
                xs = [builder.load(builder.bitcast(builder.gep(row, [_ir.Constant(_I64, 8 * v)]), _V8F.as_pointer()),
                                   align=4) for v in range(2)]
                wrow = builder.gep(w_p, [builder.add(builder.mul(k, ldw_v), o0_v)])
                for o in range(outs):
                    ws = builder.load(builder.gep(wrow, [_ir.Constant(_I64, o)]))
                    wv = builder.insert_element(_ir.Constant(_V8F, None), ws, _ir.Constant(_I32, 0))
                    wv = builder.shuffle_vector(wv, _ir.Constant(_V8F, None), _ir.Constant(_ir.VectorType(_I32, 8),
                                                                                        [0] * 8))
                    for v in range(2):
                        builder.store(builder.call(fma, [xs[v], wv, builder.load(accs[o][v])]), accs[o][v])
            for o in range(outs):
                channel = builder.add(o0_v, _ir.Constant(_I64, o))
                dst = builder.gep(c_p, [builder.mul(channel, _ir.Constant(_I64, LANES))])
                for v in range(2):
                    builder.store(builder.load(accs[o][v]),
                                  builder.bitcast(builder.gep(dst, [_ir.Constant(_I64, 8 * v)]), _V8F.as_pointer()),
                                  align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_ct1, _ct2, _ct3, _ct4, _ct5, _ct6 = (_make_conv_tile(t) for t in range(1, TILE_OUT + 1))


@nb.njit(cache=True, nogil=True)
def conv_tiles(buf, w, c, taps, ks, nk):
    """``c[o, b] = sum_t w[ks[t], o] buf[taps[t], b]`` for every output channel ``o`` (float32,
    LANES lanes), in register tiles of up to TILE_OUT channels."""
    m = w.shape[1]
    o0 = 0
    while o0 < m:
        t = min(TILE_OUT, m - o0)
        if t == 6:
            _ct6(buf, w, c, taps, ks, nk, o0, m)
        elif t == 5:
            _ct5(buf, w, c, taps, ks, nk, o0, m)
        elif t == 4:
            _ct4(buf, w, c, taps, ks, nk, o0, m)
        elif t == 3:
            _ct3(buf, w, c, taps, ks, nk, o0, m)
        elif t == 2:
            _ct2(buf, w, c, taps, ks, nk, o0, m)
        else:
            _ct1(buf, w, c, taps, ks, nk, o0, m)
        o0 += t


@nb.njit(cache=True, nogil=True)
def load_lanes(h, i0, rows, lo, hi, buf):
    """``buf[j, b] = h[i0 + b, j]`` as float32 (codes read as int64, truncating; lanes past
    ``rows`` 0); returns how many codes fell outside ``[lo, hi]``."""
    n_in = h.shape[1]
    count = 0
    for b in range(rows):
        src = h[i0 + b]
        for j in range(n_in):
            q = np.int64(src[j])
            count += (q < lo) | (q > hi)
            buf[j, b] = np.float32(q)
    if rows < LANES:
        buf[:, rows:] = 0
    return count


@nb.njit(cache=True, nogil=True, inline="always")
def neuron_lanes(a, neuron, bias, theta, dst):
    """The layer's neuron on LANES values ``a`` (int64) into ``dst``."""
    if neuron == 0:
        for b in range(LANES):
            dst[b] = fire(a[b], bias, theta)
    elif neuron == 1:
        for b in range(LANES):
            dst[b] = max(a[b] + bias, 0)
    else:
        for b in range(LANES):
            dst[b] = a[b] + bias


@nb.njit(cache=True, nogil=True, inline="always")
def lane_shift(c, e):
    """``shift(c, e)`` of a float32 partial sum ``|c| < 2^24`` (an exact integer): through int32,
    which AVX2 converts and shifts right in vectors, then int64."""
    if e >= 0:
        return np.int64(np.int32(c)) << e
    return np.int64(floor_shift(np.int32(c), np.int32(-e)))


@nb.njit(cache=True, inline="always")
def never_wraps(c_max, e):
    """Whether the LIF current of every partial sum ``|c| <= c_max < 2^24`` stays inside the 24-bit
    state, ``-2^23 < shift(c, e) 2^6 <= 2^23`` (the wrap is then the identity: ``spike_thresholds``)."""
    return (c_max < (1 << 24) and shifted(np.int64(c_max), e) << ACT_SHIFT <= STATE_WRAP
            and shifted(np.int64(-c_max), e) << ACT_SHIFT > -STATE_WRAP)


@_intrinsic
def reach_lanes(typingctx, c, o, t, stage, q):
    """``stage[q, b] = c[o, b] >= t`` (1 or 0 in ``stage``'s integer dtype) for the LANES float32 (or
    int32) lanes of row ``o``: two vector compares, widened and stored at once (written as a loop, LLVM
    unrolls it into scalar compares)."""
    floats = c.dtype == _types.float32  # else int32 sums (``pool_lanes``)
    sig = _types.void(c, _types.int64, _types.float32 if floats else _types.int32, stage, _types.int64)

    def codegen(context, builder, signature, args):
        c_a, o_v, t_v, st_a, q_v = args
        c_p = context.make_array(signature.args[0])(context, builder, c_a).data
        st_p = context.make_array(signature.args[3])(context, builder, st_a).data
        elt = context.get_data_type(signature.args[3].dtype)
        lanes = _ir.Constant(_I64, LANES)
        row = builder.gep(c_p, [builder.mul(o_v, lanes)])
        v8 = _V8F if floats else _ir.VectorType(_I32, 8)
        tv = builder.insert_element(_ir.Constant(v8, None), t_v, _ir.Constant(_I32, 0))
        tv = builder.shuffle_vector(tv, _ir.Constant(v8, None), _ir.Constant(_ir.VectorType(_I32, 8), [0] * 8))
        xs = [builder.load(builder.bitcast(builder.gep(row, [_ir.Constant(_I64, 8 * v)]), v8.as_pointer()), align=4)
              for v in range(2)]
        bits = [builder.fcmp_ordered(">=", x, tv) if floats else builder.icmp_signed(">=", x, tv) for x in xs]
        both = builder.shuffle_vector(bits[0], bits[1], _ir.Constant(_ir.VectorType(_I32, LANES), list(range(LANES))))
        vec = _ir.VectorType(elt, LANES)
        dst = builder.gep(st_p, [builder.mul(q_v, lanes)])
        builder.store(builder.zext(both, vec), builder.bitcast(dst, vec.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def spike_thresholds(e, bias, theta, c_max, thr):
    """For a LIF layer with one synapse group: where ``never_wraps(c_max, e)``, ``fire(shift(c, e),
    bias[o], theta)`` is nondecreasing in ``c`` on ``[-c_max, c_max]`` (the shift is, ``u = a 2^6``
    with no wrap, the clamp and ``v > theta`` are), so it equals ``c >= thr[o]`` with ``thr[o]`` the
    smallest such ``c`` that fires (``c_max + 1``: none; found by bisection on ``fire`` itself), an
    integer ``<= 2^24`` that float32 holds exactly. Returns False (``thr`` untouched) elsewhere."""
    if not never_wraps(c_max, e):
        return False
    for o in range(bias.shape[0]):
        lo, hi = -c_max, c_max + 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if fire(shifted(np.int64(mid), e), bias[o], theta):
                hi = mid
            else:
                lo = mid + 1
        thr[o] = np.float32(lo)
    return True


@nb.njit(cache=True, nogil=True)
def position_neuron(c, m, p, positions, e, neuron, bias, theta, thr, compare, stage):
    """The neuron of one position ``p`` of a convolution with one synapse group, from its sums
    ``c[o, b]`` (float32 holding exact integers) of the ``m`` channels: ``stage[o P + p, b] =
    neuron(shift(c[o, b], e), bias[o])``, or with ``compare`` (``spike_thresholds``) the spike
    ``c[o, b] >= thr[o]``."""
    if compare:
        for o in range(m):
            reach_lanes(c, o, thr[o], stage, o * positions + p)
        return
    for o in range(m):
        cs, dst, bo = c[o], stage[o * positions + p], bias[o]
        if neuron == 0:
            for b in range(LANES):
                dst[b] = fire(lane_shift(cs[b], e), bo, theta)
        elif neuron == 1:
            for b in range(LANES):
                dst[b] = max(lane_shift(cs[b], e) + bo, 0)
        else:
            for b in range(LANES):
                dst[b] = lane_shift(cs[b], e) + bo


@nb.njit(cache=True, nogil=True)
def conv_lanes(buf, taps, ks, nks, w, exps, neuron, bias, theta, thr, compare, c, a, stage, a_out, i0, rows):
    """Every output of one block: per position ``p``, ``a[o] = sum_g shift(c_g[o], exps[g])``
    (``c_g``: ``conv_tiles`` of group ``g``), into ``a_out[i0 + b, o P + p]`` (0 rows: skip) and
    the neuron into ``stage[o P + p, b]``; with ``compare`` (one group, LIF, no ``a_out``:
    ``spike_thresholds`` proved it) the spike is ``c[o] >= thr[o]`` straight on the float32 sums."""
    groups, m = w.shape[0], w.shape[2]
    positions = taps.shape[0]
    keep = a_out.shape[0] > 0
    for p in range(positions):
        if groups == 1 and not keep:  # one pass from the sums to the neuron (vectorizes)
            conv_tiles(buf, w[0], c, taps[p], ks[p], nks[p])
            position_neuron(c, m, p, positions, exps[0], neuron, bias, theta, thr, compare, stage)
            continue
        for g in range(groups):
            conv_tiles(buf, w[g], c, taps[p], ks[p], nks[p])
            e = exps[g]
            for o in range(m):
                for b in range(LANES):
                    y = lane_shift(c[o, b], e)
                    a[o, b] = y if g == 0 else a[o, b] + y
        for o in range(m):
            q = o * positions + p
            if keep:
                for b in range(rows):
                    a_out[i0 + b, q] = a[o, b]
            neuron_lanes(a[o], neuron, bias[o], theta, stage[q])


@_intrinsic
def add_lanes(typingctx, stage, j, s):
    """``s[b] += int32(stage[j, b])`` for the LANES lanes (``stage``'s integer codes widened, or an
    int64 truncated: the caller proves every code and sum fits int32), as one vector load and add."""
    sig = _types.void(stage, _types.int64, s)

    def codegen(context, builder, signature, args):
        st_a, j_v, s_a = args
        st_t = signature.args[0]
        st_p = context.make_array(st_t)(context, builder, st_a).data
        s_p = context.make_array(signature.args[2])(context, builder, s_a).data
        elt = context.get_data_type(st_t.dtype)
        vec, v32 = _ir.VectorType(elt, LANES), _ir.VectorType(_I32, LANES)
        src = builder.gep(st_p, [builder.mul(j_v, _ir.Constant(_I64, LANES))])
        x = builder.load(builder.bitcast(src, vec.as_pointer()), align=1)
        if elt.width < 32:
            x = builder.sext(x, v32) if st_t.dtype.signed else builder.zext(x, v32)
        elif elt.width > 32:
            x = builder.trunc(x, v32)
        acc = builder.bitcast(s_p, v32.as_pointer())
        builder.store(builder.add(builder.load(acc, align=4), x), acc, align=4)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True)
def pool_table(digits, exps, neuron, bias, theta, s_lo, s_hi):
    """``table[c, s - s_lo]``: the pooling neuron's output for window sum ``s`` in ``[s_lo, s_hi]`` on
    channel ``c``, ``neuron(sum_g shift(digits[g, c] s, exps[g]), bias[c])`` as ``pool_layer``
    computes it (int64)."""
    groups, channels = digits.shape
    table = np.empty((channels, s_hi - s_lo + 1), np.int64)
    for c in range(channels):
        for s in range(s_lo, s_hi + 1):
            a = np.int64(0)
            for g in range(groups):
                a += shifted(digits[g, c] * np.int64(s), exps[g])
            if neuron == 0:
                table[c, s - s_lo] = fire(a, bias[c], theta)
            elif neuron == 1:
                table[c, s - s_lo] = max(a + bias[c], 0)
            else:
                table[c, s - s_lo] = a + bias[c]
    return table


@nb.njit(cache=True, nogil=True)
def step_rows(table, steps) -> bool:
    """Whether every row of ``table`` is 0 up to some index and 1 from there on (a spike count
    against a threshold: a pooled LIF on spikes), with that index in ``steps[c]`` (int32; the row
    length where it never fires)."""
    for c in range(table.shape[0]):
        k = 0
        while k < table.shape[1] and table[c, k] == 0:
            k += 1
        steps[c] = k
        for j in range(k, table.shape[1]):
            if table[c, j] != 1:
                return False
    return True


@nb.njit(cache=True, nogil=True)
def pool_lanes(stage, channels, height, width, kh, kw, sh, sw, top, left, ho, wo, table, s_lo, steps, s, out):
    """``pool_layer`` on one block of maps in lanes, ``stage[c H W + y W + x, b]``: per channel ``c``
    and position ``p``, the window sum ``s`` (clipped to the map: padding adds 0; int32 in ``s[0]``,
    which the caller proves exact; ``add_lanes``) and ``out[c P + p, b] = table[c, s - s_lo]``
    (``pool_table``), or, where ``steps`` has a row per channel (``step_rows``), the same as
    ``s >= s_lo + steps[c]`` in vector compares (``reach_lanes``)."""
    stepped = steps.shape[0] > 0
    for c in range(channels):
        src = c * height * width
        for y in range(ho):
            y0 = y * sh - top
            r0, r1 = max(y0, 0), min(y0 + kh, height)
            for x in range(wo):
                x0 = x * sw - left
                c0, c1 = max(x0, 0), min(x0 + kw, width)
                q = (c * ho + y) * wo + x
                for b in range(LANES):
                    s[0, b] = 0
                for yy in range(r0, r1):
                    for xx in range(c0, c1):
                        add_lanes(stage, src + yy * width + xx, s)
                if stepped:
                    reach_lanes(s, 0, np.int32(s_lo + steps[c]), out, q)
                else:
                    for b in range(LANES):
                        out[q, b] = table[c, s[0, b] - s_lo]


@nb.njit(cache=True, nogil=True)
def store_lanes(stage, out, i0, rows):
    """``out[i0 + b, q] = stage[q, b]`` for the block's ``rows`` samples."""
    for b in range(rows):
        dst = out[i0 + b]
        for q in range(stage.shape[0]):
            dst[q] = stage[q, b]


@nb.njit(cache=True, nogil=True)
def pool_block(stage, geometry, table, s_lo, steps, s, pooled, out, i0, rows):
    """The pooling fused after a direct convolution, on one block: ``pool_lanes`` on the maps in
    ``stage`` with ``geometry`` = C, H, W, kh, kw, sh, sw, top, left, Ho, Wo (into ``pooled``), then
    its outputs into ``out[i0:i0 + rows]``."""
    pool_lanes(stage, geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5], geometry[6],
               geometry[7], geometry[8], geometry[9], geometry[10], table, s_lo, steps, s, pooled)
    store_lanes(pooled, out, i0, rows)


@nb.njit(cache=True, nogil=True)
def direct_conv_blocks(counter, h, lo, hi, taps, ks, nks, w, exps, neuron, bias, theta, c_max, a_out, out):
    """The blocks of LANES samples that this thread claims (``blocks.run_blocks``) of a convolution
    with one window group: ``taps[p, :nks[p]]`` are the input indices of position ``p`` that hit the
    map and ``ks[p, :nks[p]]`` their patch elements; ``w[g]`` (K, C) float32 holds group ``g``'s
    digits transposed. ``a[n, o P + p] = sum_g shift(sum_t w[g, ks[p, t], o] h[n, taps[p, t]],
    exps[g])`` into ``a_out`` (0 rows: skip) and the neuron with ``bias[o]`` into ``out``. Returns
    how many codes (read as int64, truncating) fell outside ``[lo, hi]``. ``c_max`` bounds every
    ``|sum_t w[g, ks[p, t], o] h[n, taps[p, t]]|`` for codes in ``[lo, hi]`` (``emulator.sum_peak``):
    without ``a_out``, one group and a LIF neuron, ``spike_thresholds`` turns the neuron into a compare."""
    n, n_in = h.shape
    m = w.shape[2]
    positions = taps.shape[0]
    buf = np.zeros((n_in, LANES), np.float32)
    c = np.empty((m, LANES), np.float32)
    a = np.empty((m, LANES), np.int64)
    stage = np.empty((m * positions, LANES), out.dtype)  # the block's outputs, neuron-major
    thr = np.empty(m, np.float32)
    compare = w.shape[0] == 1 and neuron == 0 and a_out.shape[0] == 0 and spike_thresholds(exps[0], bias, theta,
                                                                                           c_max, thr)
    count = 0
    nblocks = (n + LANES - 1) // LANES
    while True:
        blk = claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * LANES
        rows = min(LANES, n - i0)
        count += load_lanes(h, i0, rows, lo, hi, buf)
        conv_lanes(buf, taps, ks, nks, w, exps, neuron, bias, theta, thr, compare, c, a, stage, a_out, i0, rows)
        store_lanes(stage, out, i0, rows)


@nb.njit(cache=True, nogil=True)
def direct_conv_pool_blocks(counter, h, lo, hi, taps, ks, nks, w, exps, neuron, bias, theta, c_max, maps,
                            geometry, table, s_lo, out):
    """``direct_conv_blocks`` followed by the pooling layer that reads its outputs (``pool_lanes``
    with ``geometry`` = C, H, W, kh, kw, sh, sw, top, left, Ho, Wo and its neuron tabulated over the
    window sums from ``s_lo``, ``pool_table``), on each block in cache: the
    convolution's outputs stay in the pooling's input container (the dtype of ``maps``, an empty
    array), as the unfused layers store them; only the pooling's outputs reach ``out``."""
    n, n_in = h.shape
    m = w.shape[2]
    positions = taps.shape[0]
    buf = np.zeros((n_in, LANES), np.float32)
    c = np.empty((m, LANES), np.float32)
    a = np.empty((m, LANES), np.int64)
    stage = np.empty((m * positions, LANES), maps.dtype)
    pooled = np.empty((out.shape[1], LANES), out.dtype)
    s = np.empty((1, LANES), np.int32)
    steps = np.empty(table.shape[0], np.int32)
    if not step_rows(table, steps):
        steps = np.empty(0, np.int32)
    none = np.empty((0, 0), np.int64)
    thr = np.empty(m, np.float32)
    compare = w.shape[0] == 1 and neuron == 0 and spike_thresholds(exps[0], bias, theta, c_max, thr)
    count = 0
    nblocks = (n + LANES - 1) // LANES
    while True:
        blk = claim(counter)
        if blk >= nblocks:
            return count
        i0 = blk * LANES
        rows = min(LANES, n - i0)
        count += load_lanes(h, i0, rows, lo, hi, buf)
        conv_lanes(buf, taps, ks, nks, w, exps, neuron, bias, theta, thr, compare, c, a, stage, none, i0,
                   rows)
        pool_block(stage, geometry, table, s_lo, steps, s, pooled, out, i0, rows)


def direct_taps(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From one group's gather index (P, K; -1 padding): per position the input indices that hit
    the map (``taps``, int32, left-aligned), their patch elements (``ks``) and how many (``nks``)."""
    positions, k = idx.shape
    taps = np.zeros((positions, k), np.int32)
    ks = np.zeros((positions, k), np.int32)
    nks = np.zeros(positions, np.int64)
    for p in range(positions):
        hit = np.flatnonzero(idx[p] >= 0)
        nks[p] = len(hit)
        taps[p, :len(hit)] = idx[p, hit]
        ks[p, :len(hit)] = hit
    return taps, ks, nks
