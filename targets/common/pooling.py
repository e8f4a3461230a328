"""Pooling on codes for every backend: Numba kernels of docs/integer-semantics.md section 8.

Samples are C-order maps (N, C H W) -> (N, C Ho Wo); each channel is pooled on its own over the
node's ``Window`` (kernel, stride, pads; no dilation):

* ``max``: the largest code the window reads; padding is ignored (every window reads at least one
  input, ``Window.validate``);
* ``avg``: the window sum ``s`` (padding adds code 0, the divisor is the whole window), then
  ``floor((s M + 2^(S-1)) / 2^S)`` per channel, or ``floor(s M / 2^S)`` where ``truncate`` (QONNX
  ``Trunc``): the caller passes ``half = 2^(S-1)`` or 0.

Exact in int64 where ``hwq.quant.bounds.check_pool`` proves the sums and ``s M + half`` below 2^63.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hwq.quant.bounds import rounding_half


@nb.njit(parallel=True, cache=True)
def pool_maps(h, channels, height, width, kh, kw, sh, sw, top, left, ho, wo, is_max, mult, half, shift, out):
    """Pool every channel of every sample of ``h`` (N, C H W; any numeric dtype) into ``out``
    (N, C Ho Wo; any dtype): max (``is_max``) or the rescaled window sum (module docstring)."""
    n = h.shape[0]
    for task in nb.prange(n * channels):
        i, c = task // channels, task % channels
        src = c * height * width
        dst = c * ho * wo
        m, hf, s = mult[c], half[c], shift[c]
        for y in range(ho):
            y0 = y * sh - top
            i0, i1 = max(y0, 0), min(y0 + kh, height)
            for x in range(wo):
                x0 = x * sw - left
                j0, j1 = max(x0, 0), min(x0 + kw, width)
                if is_max:
                    best = np.int64(h[i, src + i0 * width + j0])
                    for yy in range(i0, i1):
                        row = src + yy * width
                        for xx in range(j0, j1):
                            v = np.int64(h[i, row + xx])
                            if v > best:
                                best = v
                    out[i, dst + y * wo + x] = best
                else:
                    total = np.int64(0)
                    for yy in range(i0, i1):
                        row = src + yy * width
                        for xx in range(j0, j1):
                            total += np.int64(h[i, row + xx])
                    out[i, dst + y * wo + x] = (total * m + hf) >> s


def pool(node, h: np.ndarray, out: np.ndarray | None = None, out_dtype=np.int64) -> np.ndarray:
    """``node`` (a ``QPool``) on the codes ``h`` (N, C H W), into ``out`` (or a new array of
    ``out_dtype``). Equals ``hwq.quant.reference.pool`` bit for bit (tests/targets/test_sim_cnn.py)."""
    win = node.window
    c, height, width = win.in_shape
    ho, wo = win.out_hw
    if out is None:
        out = np.empty((h.shape[0], c * ho * wo), out_dtype)
    if node.op == "max":
        mult = half = shift = np.zeros(c, np.int64)
    else:
        mult = np.ascontiguousarray(node.requant.multiplier, np.int64)
        shift = np.ascontiguousarray(node.requant.shift, np.int64)
        half = np.zeros(c, np.int64) if node.truncate else np.ascontiguousarray(rounding_half(shift), np.int64)
    pool_maps(np.ascontiguousarray(h), c, height, width, *win.kernel, *win.stride, win.pads[0], win.pads[1],
              ho, wo, node.op == "max", mult, half, shift, out)
    return out


@nb.njit(cache=True, inline="always")
def window_sum(h, i, src, width, i0, i1, j0, j1):
    """The exact int64 sum of sample ``i``'s codes over rows ``i0..i1-1`` and columns ``j0..j1-1``
    of the map starting at flat index ``src`` (a pooling window clipped to the image: padding adds
    code 0). ``pool_maps``' average, for kernels that add their own epilogue."""
    total = np.int64(0)
    for yy in range(i0, i1):
        row = src + yy * width
        for xx in range(j0, j1):
            total += np.int64(h[i, row + xx])
    return total
