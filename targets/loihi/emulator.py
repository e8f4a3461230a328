"""The batched emulator: Loihi's integer arithmetic for thousands of inputs at once.

Each layer takes the fastest product that a bound proves exact:

* ``vnni``: where every synapse group's digits fit int8 and the layer's inputs fit 8 bits
  (input codes in ``[0, 255]`` or ``[-128, 127]``, spikes, graded activations up to 255) on a
  CPU with AVX-512 VNNI: the shared exact int8 product (``targets/common/vnni.py``), the
  input packed once for all groups, fused with the shifts and the neuron
  (``kernels.vnni_blocks``); each layer writes its outputs in the 8-bit container the next
  layer reads. 16-bit inputs (``[0, 65535]`` or ``[-32768, 32767]``) run as two byte planes
  through the same product (``vnni16``: ``y = P_lo + 256 P_hi``, each exact in int32 under the
  same bound). Layer-0 codes outside the input format make the chunk fall back (below).
* ``avx2``: where no VNNI product runs (a CPU without AVX-512 VNNI, or ``use_vnni=False``) on a
  CPU with AVX2, when every group's digits and the layer's inputs pass ``avx2.fits``
  (``targets/common/avx2.py``: int16 codes and weights, ``vpmaddwd`` pairs summed in int32,
  exact when ``peak * S < 2^31``): the same fused layer on that product (``kernels.avx2_blocks``).
* otherwise each group's product ``h @ D.T`` runs in float32 BLAS when every partial sum is
  below 2^24, in float64 BLAS below 2^53 (both exact for integers), and in a Numba int64 loop
  otherwise; the shifts, 24-bit wrap and saturation, thresholds and biases run in Numba
  kernels (``kernels.py``).

A convolution with one window group runs directly on the maps where every partial sum of each
synapse group is proven below 2^24 (``direct_fits``) on a CPU with AVX2 and FMA: samples in
float32 vector lanes, register tiles of output channels accumulating the taps of each position
with FMA (exact: every partial sum is an integer float32 holds), no patch matrix
(``kernels.direct_conv_blocks``; with ``fuse_pools`` a pooling on its maps runs in the same pass
on each block, its neuron tabulated over the window sums, ``kernels.direct_conv_pool_blocks``).
Where a LIF layer's sums are bounded (``sum_peak``) so that its 24-bit current never wraps, the
kernel compares each float32 sum with a per-channel threshold (``kernels.spike_thresholds``), and a
fused pooling whose table is a step compares its window sums the same way (``kernels.step_rows``).
Otherwise it runs as that dense layer over its gathered patches (``PatchDense``). A pooling
(one window group per channel, one digit per channel and synapse group) sums each window
straight on the maps (``CompiledPool``, ``kernels.pool_layer``: int64, no product); other grouped
convolutions take the BLAS / int64 products over patches (``CompiledConv``).

Layer 0 always checks the codes it receives (the VNNI kernel while packing, the other paths
with one pass of ``code_range``): a chunk with codes outside the input format runs on a plan
made for the range that arrived (``widen``: layer 0's range widened to the codes seen, every
later graded layer's range recomputed from it; no VNNI), so the answer stays exact.

Its outputs equal Lava's fixed-point models bit for bit (tests/test_loihi_lava.py) and the
step-by-step spec (tests/test_loihi.py), on either path.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hwq.errors import DataError
from hwq.ir.codes import container
from hwq.quant.bounds import INT64_LIMIT, row_sum_bound

from ..common import avx2, patches, products, vnni
from ..common.blocks import run_blocks
from ..common.plans import NATIVE_INPUTS, FallbackPlans, seen_range
from . import conv16, kernels
from .limits import ACT_SHIFT
from .mapping import LayerMap, Mapping

NONE = np.empty((0, 0), np.int64)
NO_BYTES = np.zeros((0, 2), np.uint8)
NO_POOL, NO_TABLE = np.zeros(0, np.int64), np.zeros((0, 0), np.int64)  # conv16_blocks without a pooling
CHUNK_ROWS = 32768
TABLE_SUMS = 1 << 14  # the most window sums a fused pooling tabulates per channel
TABLE_ENTRIES = 1 << 21  # and over all its channels (16 MiB of int64)


def product_dtype(lm: LayerMap):
    peak = max(abs(lm.in_range[0]), abs(lm.in_range[1]))
    return products.DTYPES[products.product_path(max(row_sum_bound(s.digits) for s in lm.sets), peak)]


def widen(layers: tuple[LayerMap, ...], lo: int, hi: int) -> list[LayerMap]:
    """The layers with layer 0 receiving codes in ``[lo, hi]`` and every later layer's input
    range recomputed from it (a ReLU passes ``[0, max a + B]``, a LIF ``{0, 1}``). Refuses
    codes so large that a sum could leave int64 (Python-integer bound)."""
    out = []
    for i, lm in enumerate(layers):
        peak = max(abs(lo), abs(hi))
        top = sum(row_sum_bound(s.digits) * peak * 2 ** max(s.exp, 0) for s in lm.sets)
        if top + max(abs(int(v)) for v in lm.bias.tolist()) >= INT64_LIMIT >> ACT_SHIFT:
            raise DataError(f"loihi: layer {i} cannot sum codes up to {peak} exactly in int64",
                            hint="give codes inside the input format")
        lm = dataclasses.replace(lm, in_range=(lo, hi))
        out.append(lm)
        if lm.neuron == "lif":
            lo, hi = 0, 1
        else:
            a_lo, a_hi = lm.input_bounds()
            lo, hi = 0, max(int((a_hi + lm.bias).max()), 0)
    return out


def direct_fits(lm: LayerMap) -> bool:
    """Whether ``kernels.direct_conv_blocks`` computes the convolution ``lm`` exactly: one window
    group, and every synapse group's partial sums below 2^24 for inputs in ``lm.bound_range``
    (padding reads 0; ``products.product_path`` says "float32"), so float32 holds each exactly."""
    if lm.window is None or lm.window.groups != 1:
        return False
    peak = max(abs(v) for v in lm.bound_range)
    return all(products.product_path(row_sum_bound(s.digits), peak) == "float32" for s in lm.sets)


def lanes16_fits(lm: LayerMap) -> bool:
    """Whether ``conv16`` computes the direct convolution ``lm`` exactly in int16 lanes: one
    synapse group, codes and digits that fit int16, and every sum ``|D @ h| <= sum_peak(lm) <
    2^15`` (int16 arithmetic is exact modulo 2^16, and that bound picks the one representative)."""
    lo, hi = lm.in_range
    return (len(lm.sets) == 1 and direct_fits(lm) and -conv16.SUM_LIMIT <= lo and hi < conv16.SUM_LIMIT
            and int(np.abs(np.asarray(lm.sets[0].digits, np.int64)).max(initial=0)) < conv16.SUM_LIMIT
            and sum_peak(lm) < conv16.SUM_LIMIT)


def sum_peak(lm: LayerMap) -> int:
    """The largest ``|D_g @ h|`` of any synapse group for inputs in ``lm.bound_range`` (Python
    integers, capped at 2^62): the bound ``kernels.spike_thresholds`` checks the 24-bit state
    against."""
    peak = max(abs(v) for v in lm.bound_range)
    return min(max(row_sum_bound(s.digits) for s in lm.sets) * peak, 1 << 62)


def vnni_planes(lm: LayerMap) -> int:
    """How many byte planes ``vpdpbusd`` needs for ``lm`` exactly: 1 (8-bit inputs,
    ``vnni.fits`` for every group), 2 (16-bit inputs, ``vnni.fits_planes``), or 0 (no VNNI)."""
    lo, hi = lm.in_range
    if all(vnni.fits(s.digits, lo, hi) for s in lm.sets):
        return 1
    return 2 if all(vnni.fits_planes(s.digits, lo, hi) for s in lm.sets) else 0


def avx2_fits(lm: LayerMap) -> bool:
    """Whether the AVX2 int16 product runs every group of ``lm`` exactly (``avx2.fits``)."""
    return all(avx2.fits(s.digits, *lm.in_range) for s in lm.sets)


class CompiledLayer:
    def __init__(self, lm: LayerMap, use_vnni: bool = False, use_avx2: bool = False):
        self.lm = lm
        self.dtype = product_dtype(lm)
        self.exps = [s.exp for s in lm.sets]
        self.neuron = kernels.NEURON_CODES[lm.neuron]
        self.bias = np.ascontiguousarray(lm.bias, dtype=np.int64)
        self.planes = vnni_planes(lm) if use_vnni else 0
        self.vnni = self.planes > 0
        self.avx2 = not self.vnni and use_avx2 and avx2_fits(lm)
        if self.vnni or self.avx2:
            if self.avx2:
                self.offset = avx2.input_offset(*lm.in_range)
                pack = avx2.pack_weights
            else:
                self.offset = (vnni.input_offset if self.planes == 1 else vnni.plane_offset)(*lm.in_range)
                pack = vnni.pack_weights
            self.wpk = np.ascontiguousarray(np.stack([pack(s.digits) for s in lm.sets]))
            self.corr = np.ascontiguousarray(np.stack(
                [-self.offset * np.asarray(s.digits, np.int64).sum(axis=1) for s in lm.sets]))
            self.exp_arr = np.asarray(self.exps, np.int64)
        else:
            self.w_t = [np.ascontiguousarray(s.digits.T, dtype=self.dtype) for s in lm.sets]

    @property
    def in_dtype(self):
        """The container the previous layer writes this layer's inputs in."""
        if self.planes == 2:
            return np.uint16 if self.lm.in_range[0] >= 0 else np.int16
        if self.vnni:
            return np.uint8 if self.lm.in_range[0] >= 0 else np.int8
        if self.avx2:
            return avx2.container(*self.lm.in_range)
        return self.dtype

    def product(self, h: np.ndarray, g: int) -> np.ndarray:
        return products.int_matmul(h, self.w_t[g]) if self.dtype is np.int64 else h @ self.w_t[g]

    def inputs(self, h: np.ndarray, groups: int | None = None) -> np.ndarray:
        """``a = sum_s shift(h @ D_s.T, E_s)`` (int64) over the first ``groups`` groups."""
        a = np.zeros((len(h), self.lm.n_out), np.int64)
        for g in range(len(self.w_t) if groups is None else groups):
            kernels.add_shifted(self.product(h, g), self.exps[g], a)
        return a

    def __call__(self, h, out_dtype, pres=None) -> np.ndarray | None:
        """This layer's outputs in ``out_dtype``; None when (vnni, avx2 paths) an input falls
        outside ``lm.in_range``."""
        if self.vnni or self.avx2:
            return self._blocks(h, out_dtype, pres)
        h = np.ascontiguousarray(h, dtype=self.dtype)
        out = np.empty((len(h), self.lm.n_out), dtype=out_dtype)
        if pres is not None:  # keep a for trace
            a = self.inputs(h)
            pres.append(a)
            y, e, rest = a, 0, NONE
        else:  # fuse the last group's shift into the neuron kernel
            last = len(self.w_t) - 1
            y, e = self.product(h, last), self.exps[last]
            rest = self.inputs(h, last) if last else NONE
        kernels.fused(y, e, rest, self.neuron, self.bias, self.lm.theta, out)
        return out

    def _blocks(self, h, out_dtype, pres) -> np.ndarray | None:
        if h.dtype.type not in NATIVE_INPUTS:
            h = h.astype(np.int64)
        h = np.ascontiguousarray(h)
        n, m = len(h), self.lm.n_out
        out = np.empty((n, m), dtype=out_dtype)
        a = np.empty((n, m), np.int64) if pres is not None else NONE
        lo, hi = self.lm.in_range
        if self.avx2:
            bad = vnni.run_blocks(kernels.avx2_blocks, n, h, lo, hi, self.offset, self.wpk, self.corr,
                                  self.exp_arr, self.neuron, self.bias, self.lm.theta, a, out)
        else:
            hb, flip = (vnni.byte_view(h, lo, hi) if self.planes == 2 else None) or (NO_BYTES, 0)
            bad = vnni.run_blocks(kernels.vnni_blocks, n, h, hb, np.uint8(flip), self.planes, lo, hi,
                                  self.offset, self.wpk, self.corr, self.exp_arr, self.neuron, self.bias,
                                  self.lm.theta, a, out)
        if bad:
            return None
        if pres is not None:
            pres.append(a)
        return out


class CompiledConv(CompiledLayer):
    """A convolution with several window groups (``lm.window``; a pooling whose channels' digits
    all agree runs on ``CompiledPool`` instead): each synapse group's
    product runs over the gathered patches (``targets/common/patches.gather_rows``: row ``n P + p``
    holds the patch of position ``p``, padding code 0), ``(N P, K) @ D_g.T`` per window group in the
    exact BLAS or int64 product ``product_dtype`` proves, reordered to Loihi's neurons ``o P + p``;
    the neuron epilogue is the dense layer's. The unrolled (C_out P, C H W) matrix is never built,
    so memory grows with the patches of one chunk, not with the square of the maps."""

    def __init__(self, lm: LayerMap):  # BLAS or int64: the patch matrix feeds every group's product
        self.lm, self.window = lm, lm.window
        self.dtype = product_dtype(lm)
        self.exps = [s.exp for s in lm.sets]
        self.neuron = kernels.NEURON_CODES[lm.neuron]
        self.planes, self.vnni, self.avx2 = 0, False, False
        self.idx = patches.gather_index(lm.window)
        self.bias = np.ascontiguousarray(lm.expand(lm.bias), dtype=np.int64)
        per = lm.channels // lm.window.groups
        self.w_t = [[np.ascontiguousarray(s.digits[g * per:(g + 1) * per].T, dtype=self.dtype)
                     for g in range(lm.window.groups)] for s in lm.sets]

    def gather(self, h: np.ndarray) -> list[np.ndarray]:
        """The patch matrix of every window group, (N P, K) in the product's dtype."""
        win, n = self.window, len(h)
        h = np.ascontiguousarray(h if h.dtype.type in NATIVE_INPUTS else h.astype(np.int64))
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        out = []
        for g in range(win.groups):
            rows = np.empty((n * win.positions, win.patch_len), self.dtype)
            patches.gather_rows(h, self.idx[g], lo, hi, 0, rows)
            out.append(rows)
        return out

    def conv_product(self, rows: list[np.ndarray], s: int) -> np.ndarray:
        """Synapse group ``s`` over the patches: (N, C_out P) int64, neuron ``o P + p``."""
        win = self.window
        n = len(rows[0]) // win.positions
        parts = [products.int_matmul(r, w) if self.dtype is np.int64 else r @ w for r, w in zip(rows, self.w_t[s])]
        y = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]  # (N P, C_out)
        c = self.lm.channels
        y = y.reshape(n, win.positions, c).transpose(0, 2, 1).reshape(n, c * win.positions)
        return np.ascontiguousarray(y)  # exact integers in the product's dtype (add_shifted reads them)

    def __call__(self, h, out_dtype, pres=None) -> np.ndarray:
        rows = self.gather(h)
        out = np.empty((len(h), self.lm.n_out), dtype=out_dtype)
        last = len(self.w_t) - 1
        if pres is None:  # fuse the last group's shift into the neuron kernel (as the dense layers)
            rest = NONE
            if last:
                rest = np.zeros((len(h), self.lm.n_out), np.int64)
                for s in range(last):
                    kernels.add_shifted(self.conv_product(rows, s), self.exps[s], rest)
            kernels.fused(self.conv_product(rows, last), self.exps[last], rest, self.neuron, self.bias, self.lm.theta,
                          out)
            return out
        a = np.zeros((len(h), self.lm.n_out), np.int64)
        for s in range(last + 1):
            kernels.add_shifted(self.conv_product(rows, s), self.exps[s], a)
        pres.append(a)
        kernels.fused(a, 0, NONE, self.neuron, self.bias, self.lm.theta, out)
        return out

    @property
    def in_dtype(self):
        """The narrowest container of this layer's inputs (spikes and 8-bit codes: one byte)."""
        return container(*self.lm.in_range)


def pool_digits(lm: LayerMap) -> np.ndarray | None:
    """``digits[g, c]``, (groups, C) int64, where ``lm`` is a pooling-shaped window (one input
    channel per window group, one output channel per input channel, no dilation) whose synapse
    group ``g`` gives every synapse of channel ``c`` the same digit; None otherwise."""
    win = lm.window
    if win is None or win.groups != win.channels or lm.channels != win.channels or win.dilation != (1, 1):
        return None
    d = np.stack([np.asarray(s.digits, np.int64) for s in lm.sets])  # (groups, C, kh kw)
    if not (d == d[:, :, :1]).all():
        return None
    return np.ascontiguousarray(d[:, :, 0])


class CompiledPool:
    """A pooling mapped as a ones kernel (max of spikes as an OR, a spike count against a
    threshold, a truncating SigmaDelta sum): ``kernels.pool_layer`` sums each window straight on
    the spike or code maps in int64 (exact: no product, no patch matrix), multiplies by the
    channel's digit of each synapse group, shifts by its exponent and runs the dense layer's
    neuron, writing Loihi's neurons ``c P + p`` in the container the next layer reads."""

    planes, vnni, avx2, dtype = 0, False, False, np.int64

    def __init__(self, lm: LayerMap, digits: np.ndarray):
        self.lm, self.window = lm, lm.window
        self.digits = digits
        self.exp_arr = np.asarray([s.exp for s in lm.sets], np.int64)
        self.neuron = kernels.NEURON_CODES[lm.neuron]
        self.bias = np.ascontiguousarray(lm.bias, dtype=np.int64)  # per channel
        c, height, width = lm.window.in_shape
        self.geometry = (c, height, width, *lm.window.kernel, *lm.window.stride, lm.window.pads[0],
                         lm.window.pads[1], *lm.window.out_hw)
        self.table, self.table_lo = self._table()

    def _table(self) -> tuple[np.ndarray | None, int]:
        """The neuron's output for every window sum the inputs in ``lm.in_range`` can give, per
        channel (``kernels.pool_table``), for the fused pass (``PatchDense.pooled``): sums over at
        most kh kw inputs lie in ``[kh kw min(lo, 0), kh kw max(hi, 0)]``, added in int32; None
        when that range passes TABLE_SUMS values (TABLE_ENTRIES over the channels) or 2^31."""
        lo, hi = self.lm.in_range
        size = self.window.kernel[0] * self.window.kernel[1]
        s_lo, s_hi = size * min(lo, 0), size * max(hi, 0)
        sums = s_hi - s_lo + 1
        if sums > TABLE_SUMS or sums * self.lm.channels > TABLE_ENTRIES or max(-s_lo, s_hi) >= 2**31:
            return None, 0
        table = kernels.pool_table(self.digits, self.exp_arr, self.neuron, self.bias, self.lm.theta, s_lo, s_hi)
        return table, s_lo

    @property
    def in_dtype(self):
        """The narrowest container of this layer's inputs (spikes and 8-bit codes: one byte)."""
        return container(*self.lm.in_range)

    def __call__(self, h, out_dtype, pres=None) -> np.ndarray:
        h = np.ascontiguousarray(h if h.dtype.type in NATIVE_INPUTS else h.astype(np.int64))
        n = len(h)
        out = np.empty((n, self.lm.n_out), dtype=out_dtype)
        a = np.empty((n, self.lm.n_out), np.int64) if pres is not None else NONE
        kernels.pool_layer(h, *self.geometry, self.digits, self.exp_arr, self.neuron, self.bias, self.lm.theta, a, out)
        if pres is not None:
            pres.append(a)
        return out


class PatchDense:
    """A convolution with one window group as the dense layer of its output channels over the
    patch matrix: the patches of every position gathered (``targets/common/patches.gather_rows``,
    padding code 0) into rows ``n P + p`` of the container the dense layer reads, then the dense
    layer's own product and neuron (VNNI, AVX2 or BLAS, fused: ``CompiledLayer``) with one neuron
    per output channel, whose outputs are reordered to Loihi's neurons ``o P + p``. Exact: each
    neuron's ``a`` is its channel's digits over its patch, and the neuron is elementwise.

    ``direct`` (``use_direct`` and ``direct_fits``): no patch matrix; each patch's taps are read
    straight from the maps in float32 lanes (``kernels.direct_conv_blocks``), and ``pooled`` runs
    the pooling on this layer's maps in the same pass."""

    def __init__(self, lm: LayerMap, use_vnni: bool, use_avx2: bool, use_direct: bool = False):
        self.lm, self.window = lm, lm.window
        lo, hi = lm.in_range
        if lm.window.padded:  # padding reads code 0
            lo, hi = min(lo, 0), max(hi, 0)
        self.direct = use_direct and direct_fits(lm)
        if self.direct:  # no patch matrix: the taps of every position straight from the maps
            idx = patches.gather_index(lm.window)[0]
            self.taps, self.ks, self.nks = kernels.direct_taps(idx)
            self.w = np.ascontiguousarray(np.stack([np.asarray(s.digits).T for s in lm.sets]), np.float32)
            self.exp_arr = np.asarray([s.exp for s in lm.sets], np.int64)
            self.neuron = kernels.NEURON_CODES[lm.neuron]
            self.bias = np.ascontiguousarray(lm.bias, np.int64)  # per channel
            self.c_max = sum_peak(lm)
            self.lanes16 = lanes16_fits(lm)  # int16 lanes (conv16) where no trace is asked for
            if self.lanes16:
                self.tile16 = conv16.tile_for(lm.channels)
                self.idx16 = conv16.lanes_index(idx, lm.n_in, self.tile16[1])
                self.w16 = conv16.lanes_weights(lm.sets[0].digits, self.tile16[0])
            self.vnni, self.avx2, self.planes, self.dtype = False, False, 0, np.float32
            return
        self.lanes16 = False
        self.inner = CompiledLayer(dataclasses.replace(lm, window=None, in_range=(lo, hi)), use_vnni, use_avx2)
        self.idx = patches.gather_index(lm.window)
        self.vnni, self.avx2, self.planes, self.dtype = (self.inner.vnni, self.inner.avx2, self.inner.planes,
                                                        self.inner.dtype)

    @property
    def in_dtype(self):
        return container(*self.lm.in_range) if self.direct else self.inner.in_dtype

    def reorder(self, y: np.ndarray, n: int) -> np.ndarray:
        """(N P, C) rows of positions -> (N, C P), neuron ``o P + p``."""
        c, positions = self.lm.channels, self.window.positions
        return np.ascontiguousarray(y.reshape(n, positions, c).transpose(0, 2, 1).reshape(n, c * positions))

    def __call__(self, h, out_dtype, pres=None) -> np.ndarray | None:
        """The layer's outputs in ``out_dtype``; None when an input falls outside the range the
        plan was proven for (the emulator then falls back, as for a dense layer)."""
        win, n = self.window, len(h)
        h = np.ascontiguousarray(h if h.dtype.type in NATIVE_INPUTS else h.astype(np.int64))
        if self.direct:
            return self._direct(h, out_dtype, pres)
        rows = np.empty((n * win.positions, win.patch_len), self.inner.in_dtype)
        lo, hi = self.inner.lm.in_range
        if patches.gather_rows(h, self.idx[0], lo, hi, 0, rows):
            return None
        inner_pres = [] if pres is not None else None
        out = self.inner(rows, out_dtype, inner_pres)
        if out is None:
            return None
        if pres is not None:
            pres.append(self.reorder(inner_pres[0], n))
        return self.reorder(out, n)

    def pooled(self, h, pool: CompiledPool, out_dtype) -> np.ndarray | None:
        """The outputs of ``pool`` (the pooling that reads this layer's outputs, ``fuses``) in
        ``out_dtype``, both layers on each block of samples in cache
        (``kernels.direct_conv_pool_blocks``); None when an input falls outside ``lm.in_range``."""
        h = np.ascontiguousarray(h if h.dtype.type in NATIVE_INPUTS else h.astype(np.int64))
        n = len(h)
        out = np.empty((n, pool.lm.n_out), dtype=out_dtype)
        maps = np.empty(0, pool.in_dtype)  # the container the unfused layers store the maps in
        geometry = np.asarray(pool.geometry, np.int64)
        if self.lanes16:
            bad = run_blocks(conv16.conv16_blocks, n, h, *self.lm.in_range, self.idx16, self.w16, *self.tile16,
                             self.exp_arr, self.neuron, self.bias, self.lm.theta, self.c_max, self.window.positions,
                             maps, geometry, pool.table, pool.table_lo, out)
            return None if bad else out
        bad = run_blocks(kernels.direct_conv_pool_blocks, n, h, *self.lm.in_range, self.taps, self.ks, self.nks,
                         self.w, self.exp_arr, self.neuron, self.bias, self.lm.theta, self.c_max, maps,
                         geometry, pool.table, pool.table_lo, out)
        return None if bad else out

    def _direct(self, h, out_dtype, pres) -> np.ndarray | None:
        n = len(h)
        out = np.empty((n, self.lm.n_out), dtype=out_dtype)
        if self.lanes16 and pres is None:
            bad = run_blocks(conv16.conv16_blocks, n, h, *self.lm.in_range, self.idx16, self.w16, *self.tile16,
                             self.exp_arr, self.neuron, self.bias, self.lm.theta, self.c_max, self.window.positions,
                             np.empty(0, out_dtype), NO_POOL, NO_TABLE, 0, out)
            return None if bad else out
        a = np.empty((n, self.lm.n_out), np.int64) if pres is not None else NONE
        bad = run_blocks(kernels.direct_conv_blocks, n, h, *self.lm.in_range, self.taps, self.ks, self.nks, self.w,
                         self.exp_arr, self.neuron, self.bias, self.lm.theta, self.c_max, a, out)
        if bad:
            return None
        if pres is not None:
            pres.append(a)
        return out


def fuses(conv, pool) -> bool:
    """Whether ``conv`` runs on ``kernels.direct_conv_blocks`` and ``pool`` is a pooling on window
    sums over exactly its output maps, so that both run fused (``PatchDense.pooled``)."""
    return (isinstance(conv, PatchDense) and conv.direct and isinstance(pool, CompiledPool)
            and pool.table is not None and pool.window.in_shape == (conv.lm.channels, *conv.window.out_hw))


class Emulator:
    """``run(x_q)`` -> int64 scores; ``inputs(x_q)`` -> every layer's ``a`` (int64).

    ``use_vnni``: None uses the VNNI product wherever the CPU has it and a layer fits, False
    never, True requires a VNNI CPU; ``use_avx2`` likewise for the AVX2 int16 product (layers
    no VNNI product runs). Both False: float BLAS / int64 only (the pre-VNNI emulator).
    ``use_direct``: convolutions with one window group whose sums ``direct_fits`` proves exact in
    float32 run on ``kernels.direct_conv_blocks`` (None: where the CPU has AVX2 and FMA, unless
    ``use_avx2`` is False). ``fuse_pools``: without a trace, such a convolution and the pooling on
    its maps run as one pass (``kernels.direct_conv_pool_blocks``, the pooling's neuron
    tabulated); off, every pooling runs on ``kernels.pool_layer``. ``LoihiProgram`` turns it on."""

    def __init__(self, mapping: Mapping, use_vnni: bool | None = None, use_avx2: bool | None = None,
                 use_direct: bool | None = None, fuse_pools: bool = False):
        if use_vnni and not vnni.available():
            raise ValueError("use_vnni=True needs a CPU with AVX-512 VNNI (and Numba's JIT)")
        if use_avx2 and not avx2.available():
            raise ValueError("use_avx2=True needs a CPU with AVX2 (and Numba's JIT)")
        if use_direct and not kernels.direct_available():
            raise ValueError("use_direct=True needs a CPU with AVX2 and FMA (and Numba's JIT)")
        self.mapping = mapping
        self.dense = tuple(mapping.layers)  # convolutions stay compact: CompiledConv gathers patches
        self.use_vnni = vnni.available() if use_vnni is None else bool(use_vnni)
        self.use_avx2 = avx2.available() if use_avx2 is None else bool(use_avx2)
        if use_direct is None:  # an AVX2 + FMA kernel: off with use_avx2=False
            use_direct = use_avx2 is not False and kernels.direct_available()
        self.use_direct = bool(use_direct)
        self.fuse_pools = bool(fuse_pools)
        self.layers = self._plan(self.dense, self.use_vnni, self.use_avx2, self.use_direct)
        self._fallbacks = FallbackPlans(
            lambda lo, hi: self._plan(widen(self.dense, lo, hi), False, False))

    def _plan(self, layers, use_vnni: bool, use_avx2: bool, use_direct: bool = False) -> list[CompiledLayer]:
        return [self._compile(lm, use_vnni, use_avx2, use_direct) for lm in layers]

    @staticmethod
    def _compile(lm: LayerMap, use_vnni: bool, use_avx2: bool, use_direct: bool = False):
        if lm.window is None:
            return CompiledLayer(lm, use_vnni, use_avx2)
        if lm.window.groups == 1:
            return PatchDense(lm, use_vnni, use_avx2, use_direct)
        digits = pool_digits(lm)
        return CompiledConv(lm) if digits is None else CompiledPool(lm, digits)

    def fallback(self, x: np.ndarray) -> list[CompiledLayer]:
        """The plan for codes outside the input format: proven for the range that arrived."""
        lo, hi = self.dense[0].in_range
        return self._fallbacks.for_range(*seen_range(x, lo, hi))

    @property
    def report(self) -> list[str]:
        """The product path of every layer: "vnni", "vnni16" (two byte planes), "avx2",
        "float32", "float64" or "int64" (+ " patches" for a convolution; "direct float32 patches":
        ``kernels.direct_conv_blocks``; "direct int16 patches" or "... spikes": ``conv16``, which
        runs where no trace is asked for), or "window sums" (a pooling on ``kernels.pool_layer``)."""
        return ["window sums" if isinstance(c, CompiledPool) else
                ("direct int16 spikes" if c.lm.in_range == (0, 1) else "direct int16 patches")
                if getattr(c, "lanes16", False) else "direct float32 patches" if getattr(c, "direct", False) else
                (("vnni16" if c.planes == 2 else "vnni") if c.vnni else "avx2" if c.avx2 else c.dtype.__name__)
                + (" patches" if isinstance(c, (CompiledConv, PatchDense)) else "") for c in self.layers]

    @staticmethod
    def _forward(layers: list[CompiledLayer], x: np.ndarray, pres: list | None, fuse: bool = False):
        """The layers in turn; with ``fuse`` and without a trace, a direct convolution and the
        pooling that reads it run as one pass (``PatchDense.pooled``)."""
        h, i = x, 0
        while i < len(layers):
            c = layers[i]
            if fuse and pres is None and i + 1 < len(layers) and fuses(c, layers[i + 1]):
                i += 1
                h = c.pooled(h, layers[i], layers[i + 1].in_dtype if i + 1 < len(layers) else np.int64)
            else:
                h = c(h, layers[i + 1].in_dtype if i + 1 < len(layers) else np.int64, pres)
            i += 1
            if h is None:
                return None
        return h

    def _chunk(self, x: np.ndarray, pres: list | None) -> np.ndarray:
        first = self.layers[0]
        out = None
        if first.vnni or first.avx2 or not x.size or self._inside(x, first.lm.in_range):
            out = self._forward(self.layers, x, pres, self.fuse_pools)  # None: codes outside the format
        if out is None:  # codes outside the input format: a plan proven for what arrived
            if pres is not None:
                pres.clear()
            x = np.asarray(x).astype(np.int64)  # the codes as the reference reads them
            out = self._forward(self.fallback(x), x, pres)
        return out

    @staticmethod
    def _inside(x: np.ndarray, in_range: tuple[int, int]) -> bool:
        x = x if x.dtype.type in NATIVE_INPUTS else x.astype(np.int64)
        lo, hi = products.code_range(np.ascontiguousarray(x))
        return in_range[0] <= lo and hi <= in_range[1]

    def run(self, x_q: np.ndarray) -> np.ndarray:
        x_q = np.asarray(x_q)
        n_out = self.layers[-1].lm.n_out
        if len(x_q) <= CHUNK_ROWS:
            return self._chunk(x_q, None)
        out = np.empty((len(x_q), n_out), np.int64)
        for start in range(0, len(x_q), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self._chunk(x_q[start:start + CHUNK_ROWS], None)
        return out

    def inputs(self, x_q: np.ndarray) -> list[np.ndarray]:
        pres: list[np.ndarray] = []
        self._chunk(np.asarray(x_q), pres)
        return pres
