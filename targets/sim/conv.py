"""sim's convolution and pooling nodes: the dense layer's exact products fed by a patch-gathering
pack (``targets/common/patches.py``), and the pooling kernels of ``targets/common/pooling.py``.

A convolution runs, per group ``g``, the product ``patch_g @ W_g.T`` over the rows ``n P + p`` of
its patch matrix (``P`` output positions), with the path a bound proves exact for the codes the
layer receives, widened to include 0 when the window is padded (padding reads the code of real
zero, stored like every code as ``0 + offset``):

* ``vnni`` (u8 x s8, codes stored ``+0``/``+128``), ``vnni16`` (two byte planes), ``/wD`` (weight
  digits): blocks of 48 patch rows are gathered straight into the u8 operand, multiplied by
  ``vpdpbusd`` and finished (bias, requantization, activation) in one pass (``conv_vnni_blocks``);
* ``avx2``: the same on ``vpmaddwd`` with an int16 operand (``conv_avx2_blocks``);
* ``float32``/``float64``/``int64``: the patch matrix of a chunk of samples in the product dtype,
  then BLAS or the int64 loop, then ``kernels.finish_layer``.

Accumulators and codes leave in C-order ``(N, C_out Ho Wo)`` (channel-major), the program boundary
and the reference's layout. Bounds, offsets and epilogue are those of the dense layer (``CompiledLayer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from hwq.quant.bounds import check_shift_range, rounding_half, row_sum_bound
from hwq.quant.qnet import SIGMOID_LUT_HALF, QLayer, QPool

from ..common import avx2, patches, pooling, products, vnni
from ..common.plans import owned
from ..common.products import DTYPES
from . import kernels

EMPTY3 = np.zeros((0, 0, 0), np.int64)


def plan_range(layer: QLayer, lo: int, hi: int) -> tuple[int, int]:
    """The code range a convolution's product is planned for: ``[lo, hi]``, with 0 added where
    the window is padded (padding is the code 0)."""
    if layer.window.padded:
        return min(lo, 0), max(hi, 0)
    return lo, hi


@nb.njit(cache=True, nogil=True)
def scatter_rows(acc_t, out_t, rows, row0, positions, c0, acc3, out3):
    """Rows ``row0 ..`` of a group's (rows, channels) block into the C-order (N, C, P) outputs."""
    m = acc_t.shape[1] if acc3.shape[0] > 0 else out_t.shape[1]
    n, p = row0 // positions, row0 % positions
    for r in range(rows):
        if acc3.shape[0] > 0:
            for j in range(m):
                acc3[n, c0 + j, p] = acc_t[r, j]
        if out3.shape[0] > 0:
            for j in range(m):
                out3[n, c0 + j, p] = out_t[r, j]
        p += 1
        if p == positions:
            p = 0
            n += 1


@nb.njit(cache=True, nogil=True)
def conv_vnni_blocks(counter, h, idx, lo, hi, offset, pad, planes, wpk, base, mult, half, shift, mode, act_max,
                     lut, lut_half, acc3, out3):
    """Blocks of patch rows of every group (claimed from ``counter``): gathered into u8 (``planes``
    0/1) or two byte planes (2), multiplied by each weight digit ``wpk[g, d]``, combined
    ``sum_d 256^d (P_lo + 256 P_hi)``, finished and scattered to (N, C, P). Returns the count of
    codes read outside ``[lo, hi]``."""
    groups, positions = idx.shape[0], idx.shape[1]
    total = h.shape[0] * positions
    per_group = (total + vnni.BLOCK - 1) // vnni.BLOCK
    og = base.shape[1]
    digits, k4, cols = wpk.shape[1], wpk.shape[2] * 4, wpk.shape[3] // 4
    a_lo = np.zeros((vnni.BLOCK, k4), np.uint8)
    a_hi = np.zeros((vnni.BLOCK, k4), np.uint8)
    c_lo = np.empty((vnni.BLOCK, cols), np.int32)
    c_hi = np.empty((vnni.BLOCK, cols), np.int32)
    c = np.empty((vnni.BLOCK, og), np.int64)
    acc_t = np.empty((vnni.BLOCK if acc3.shape[0] > 0 else 0, og), np.int64)
    out_t = np.empty((vnni.BLOCK if out3.shape[0] > 0 else 0, og), np.int64)
    count = 0
    while True:
        b = vnni.claim(counter)
        if b >= groups * per_group:
            return count
        g, blk = b // per_group, b % per_group
        r0 = blk * vnni.BLOCK
        rows = min(vnni.BLOCK, total - r0)
        if planes == 2:
            count += patches.pack_patch_planes(h, idx[g], r0, rows, lo, hi, offset, pad, a_lo, a_hi)
        else:
            count += patches.pack_patch_rows(h, idx[g], r0, rows, lo, hi, offset, pad, a_lo)
        if planes < 2 and digits == 1:
            vnni.product(a_lo, wpk[g, 0], c_lo, rows)
            kernels.finish_rows(c_lo, 0, rows, base[g], mult[g], half[g], shift[g], mode, act_max, lut, lut_half,
                                acc_t, out_t, 0)
        else:
            for d in range(digits):
                vnni.product(a_lo, wpk[g, d], c_lo, rows)
                if planes == 2:
                    vnni.product(a_hi, wpk[g, d], c_hi, rows)
                for r in range(rows):
                    for j in range(og):
                        v = np.int64(c_lo[r, j])
                        if planes == 2:
                            v += np.int64(c_hi[r, j]) << 8
                        v <<= 8 * d
                        c[r, j] = v if d == 0 else c[r, j] + v
            kernels.finish_rows(c, 0, rows, base[g], mult[g], half[g], shift[g], mode, act_max, lut, lut_half,
                                acc_t, out_t, 0)
        scatter_rows(acc_t, out_t, rows, r0, positions, g * og, acc3, out3)


@nb.njit(cache=True, nogil=True)
def conv_avx2_blocks(counter, h, idx, lo, hi, offset, pad, wpk, base, mult, half, shift, mode, act_max, lut,
                     lut_half, acc3, out3):
    """``conv_vnni_blocks`` on the AVX2 int16 product (``wpk[g]`` = ``avx2.pack_weights(W_g)``)."""
    groups, positions = idx.shape[0], idx.shape[1]
    total = h.shape[0] * positions
    per_group = (total + avx2.BLOCK - 1) // avx2.BLOCK
    og = base.shape[1]
    a = np.zeros((avx2.BLOCK, wpk.shape[1] * 2), np.int16)
    c = np.empty((avx2.BLOCK, wpk.shape[2] // 2), np.int32)
    acc_t = np.empty((avx2.BLOCK if acc3.shape[0] > 0 else 0, og), np.int64)
    out_t = np.empty((avx2.BLOCK if out3.shape[0] > 0 else 0, og), np.int64)
    count = 0
    while True:
        b = vnni.claim(counter)
        if b >= groups * per_group:
            return count
        g, blk = b // per_group, b % per_group
        r0 = blk * avx2.BLOCK
        rows = min(avx2.BLOCK, total - r0)
        count += patches.pack_patch_rows(h, idx[g], r0, rows, lo, hi, offset, pad, a)
        avx2.product(a, wpk[g], c, rows)
        kernels.finish_rows(c, 0, rows, base[g], mult[g], half[g], shift[g], mode, act_max, lut, lut_half,
                            acc_t, out_t, 0)
        scatter_rows(acc_t, out_t, rows, r0, positions, g * og, acc3, out3)


def _vnni_plan(weight: np.ndarray, lo: int, hi: int):
    """``(name, planes, digits)`` of the VNNI product for a convolution's weight, or None (as the dense layer's)."""
    if vnni.fits(weight, lo, hi):
        return "vnni", 0, [weight]
    plan = vnni.digit_plan(weight, lo, hi)
    if plan is None:
        return None
    planes, digits = plan
    return ("vnni" if planes == 1 else "vnni16") + (f"/w{len(digits)}" if len(digits) > 1 else ""), planes, digits


@dataclass
class CompiledConv:
    """A convolution layer (``QLayer`` with a window) on one exact product path (module docstring)."""

    layer: QLayer
    path: str
    lo: int  # the codes this path is proven for (padding's 0 included)
    hi: int
    weights: np.ndarray  # vnni: (G, D, K4/4, 4 M16); avx2: (G, K2/2, 2 M8); BLAS: (G, K, og) in the product dtype
    base: np.ndarray  # (G, og): bias minus offset * row sums
    offset: int
    planes: int
    mode: int
    act_max: int
    mult: np.ndarray  # (G, og)
    half: np.ndarray
    shift: np.ndarray
    lut: np.ndarray
    idx: np.ndarray  # (G, P, K) int32 gather index, -1 = padding

    @classmethod
    def build(cls, layer: QLayer, lo: int, hi: int, use_vnni: bool, use_avx2: bool) -> CompiledConv:
        win = layer.window
        lo, hi = plan_range(layer, lo, hi)
        m, groups = layer.weight.shape[0], win.groups
        og = m // groups
        found = _vnni_plan(layer.weight, lo, hi) if use_vnni else None
        offset, planes = 0, 0
        if found is not None:
            path, planes, digits = found
            offset = vnni.plane_offset(lo, hi) if planes == 2 else vnni.input_offset(lo, hi)
            weights = np.stack([np.stack([vnni.pack_weights(d[g * og:(g + 1) * og]) for d in digits])
                                for g in range(groups)])
        elif use_avx2 and avx2.fits(layer.weight, lo, hi):
            path, offset = "avx2", avx2.input_offset(lo, hi)
            weights = np.stack([avx2.pack_weights(layer.weight[g * og:(g + 1) * og]) for g in range(groups)])
        else:
            path = products.product_path(row_sum_bound(layer.weight), max(abs(lo), abs(hi)))
            weights = np.stack([layer.weight[g * og:(g + 1) * og].T for g in range(groups)]).astype(DTYPES[path])
        base = layer.bias - offset * layer.weight.sum(axis=1)
        rq = layer.requant
        shift = owned(rq.shift if rq else 0, shape=(m,))
        check_shift_range(shift)
        mode, act_max, lut = kernels.epilogue(layer)
        per_group = (groups, og)
        return cls(layer, path, lo, hi, owned(weights, weights.dtype), owned(base, shape=(m,)).reshape(per_group),
                   int(offset), planes, mode, act_max,
                   owned(rq.multiplier if rq else 0, shape=(m,)).reshape(per_group),
                   owned(rounding_half(shift)).reshape(per_group), shift.reshape(per_group), owned(lut),
                   patches.gather_index(win))

    @property
    def in_dtype(self):
        """The container the previous node writes this layer's input codes in."""
        return avx2.container(self.lo, self.hi)

    @property
    def checks_codes(self) -> bool:
        return True  # the gather counts codes outside [lo, hi]

    def patch_bytes(self) -> int:
        """Bytes per sample of the patch matrix a BLAS path gathers (0 for the blocked paths)."""
        if self.path.startswith("vnni") or self.path == "avx2":
            return 0
        return self.idx.shape[1] * self.idx.shape[2] * np.dtype(DTYPES[self.path]).itemsize

    def run(self, h: np.ndarray, out_dtype, want_acc: bool, want_out: bool):
        """``(acc, codes)`` in C-order (N, C_out P), each None unless asked for; None when a code
        read falls outside ``[lo, hi]``."""
        n, m, positions = h.shape[0], self.layer.weight.shape[0], self.idx.shape[1]
        acc = np.empty((n, m * positions), np.int64) if want_acc else None
        out = np.empty((n, m * positions), out_dtype) if want_out else None
        acc3 = acc.reshape(n, m, positions) if want_acc else EMPTY3
        out3 = out.reshape(n, m, positions) if want_out else EMPTY3.astype(out_dtype)
        h = np.ascontiguousarray(h)
        pad = patches.stored_zero(self.offset)
        epilogue = (self.base, self.mult, self.half, self.shift, self.mode, self.act_max, self.lut, SIGMOID_LUT_HALF,
                    acc3, out3)
        if self.path.startswith("vnni"):
            bad = vnni.run_blocks(conv_vnni_blocks, n * positions * self.idx.shape[0], h, self.idx, self.lo, self.hi,
                                  self.offset, pad, self.planes, self.weights, *epilogue)
        elif self.path == "avx2":
            bad = vnni.run_blocks(conv_avx2_blocks, n * positions * self.idx.shape[0], h, self.idx, self.lo, self.hi,
                                  self.offset, pad, self.weights, *epilogue)
        else:
            bad = self._run_blas(h, acc3, out3, pad)
        if bad:
            return None
        return acc, out

    def _run_blas(self, h, acc3, out3, pad) -> int:
        n, positions = h.shape[0], self.idx.shape[1]
        groups, og = self.base.shape
        dtype = DTYPES[self.path]
        patch = np.empty((n * positions, self.idx.shape[2]), dtype)
        acc_t = np.empty((n * positions if acc3.shape[0] else 0, og), np.int64)
        out_t = np.empty((n * positions if out3.shape[0] else 0, og), np.int64)
        bad = 0
        for g in range(groups):
            bad += patches.gather_rows(h, self.idx[g], self.lo, self.hi, pad, patch)
            if self.path == "int64":
                product = products.int_matmul(patch, self.weights[g])
            else:
                product = patch @ self.weights[g]
            kernels.finish_layer(product, self.base[g], self.mult[g], self.half[g], self.shift[g], self.mode,
                                 self.act_max, self.lut, SIGMOID_LUT_HALF, acc_t, out_t)
            if acc3.shape[0]:
                acc3[:, g * og:(g + 1) * og] = acc_t.reshape(n, positions, og).transpose(0, 2, 1)
            if out3.shape[0]:
                out3[:, g * og:(g + 1) * og] = out_t.reshape(n, positions, og).transpose(0, 2, 1)
        return bad


@dataclass
class CompiledPool:
    """A pooling node on codes (``targets/common/pooling.py``)."""

    layer: QPool
    lo: int
    hi: int

    @property
    def path(self) -> str:
        return f"{self.layer.op}pool"

    @property
    def in_dtype(self):
        return avx2.container(self.lo, self.hi)

    @property
    def checks_codes(self) -> bool:
        return True  # never first: its input is a previous node's output

    def patch_bytes(self) -> int:
        return 0

    def run(self, h: np.ndarray, out_dtype, want_acc: bool, want_out: bool):
        """``(codes as int64 if want_acc, codes in out_dtype if want_out)``: a pool's trace entry is its output."""
        out = pooling.pool(self.layer, h, out_dtype=np.int64 if want_acc else out_dtype)
        return (out if want_acc else None), (out.astype(out_dtype, copy=False) if want_out else None)
