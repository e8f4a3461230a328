"""Convolutions and poolings on Loihi: the window's Toeplitz unrolling as a ``Sparse`` matrix.

A convolution (or a pooling mapped as a ones-kernel connection) keeps its compact synapse
digits ``D`` (out channels x patch length, ``synapses.py``) and the window geometry
(``hwq.ir.window.Window``); every output neuron ``(o, y, x)`` (C-order, ``o P + p``) gets the
synapses ``D[o, k]`` from the inputs ``gather_index[g(o), p, k]`` (padding: no synapse). So a
convolution is a dense layer whose rows share their channel's digits, exponents and offsets,
and the per-layer machinery (digits, sign split, shift and offset search, 24-bit state) is the
dense one. ``dense_view`` gives that dense layer (per-neuron arrays, unrolled digits): the
emulator, the step-by-step spec and the Lava backend (one ``Sparse`` per synapse group) run it.

Why ``Sparse`` and not Lava's ``Conv`` (Lava 0.10.0 ``lava/proc/conv/models.py``,
``PyConvModelFixed``): it stores ``weight_exp`` and ``num_weight_bits`` and never applies them,
computes the product in floating point (``scipy.signal.convolve2d`` in float64: 0.10.0 hard-codes
``TORCH_IS_AVAILABLE = False``; the disabled torch path was float32), takes symmetric padding
only, and wraps the sum at 24 bits.
``Sparse`` (``PySparseModelBitAcc``) clips and truncates the weights and shifts by
``weight_exp`` exactly as ``Dense`` does (docs/loihi.md section 9).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hwq.ir.window import Window

from .synapses import SynapseSet

WINDOW_FIELDS = 14  # C, H, W, kh, kw, sh, sw, top, left, bottom, right, dh, dw, groups


def window_array(win: Window | None) -> np.ndarray:
    """The window as 14 integers (artifacts), or an empty array for a dense layer."""
    if win is None:
        return np.zeros(0, np.int64)
    return np.array([*win.in_shape, *win.kernel, *win.stride, *win.pads, *win.dilation, win.groups], np.int64)


def window_from(values) -> Window | None:
    v = [int(x) for x in np.asarray(values).reshape(-1)]
    if not v:
        return None
    return Window(tuple(v[0:3]), tuple(v[3:5]), tuple(v[5:7]), tuple(v[7:11]), tuple(v[11:13]), v[13])


def connections(win: Window, n_out_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, ks)`` of every synapse of the unrolled matrix: output neuron ``o P + p``,
    input index, and the patch element ``k`` whose digit ``D[o, k]`` it holds (padding left out)."""
    idx = win.gather_index  # (g, P, K)
    g, positions, k = idx.shape
    per_group = n_out_channels // g
    o = np.arange(n_out_channels)
    rows = (o[:, None, None] * positions + np.arange(positions)[None, :, None]) + np.zeros((1, 1, k), np.int64)
    cols = idx[o // per_group]  # (O, P, K)
    ks = np.broadcast_to(np.arange(k)[None, None, :], cols.shape)
    inside = cols >= 0
    return rows[inside], cols[inside], np.broadcast_to(o[:, None, None], cols.shape)[inside] * k + ks[inside]


def unroll(digits: np.ndarray, win: Window) -> np.ndarray:
    """The dense (C_out P, C H W) matrix of ``digits`` (C_out, patch) applied at every window
    position (zeros where no synapse)."""
    c_out = digits.shape[0]
    rows, cols, flat = connections(win, c_out)
    out = np.zeros((c_out * win.positions, win.n_in), np.asarray(digits).dtype)
    out[rows, cols] = np.asarray(digits).reshape(-1)[flat]
    return out


def dense_view(lm):
    """``lm`` (a ``mapping.LayerMap``) as the dense layer it computes: unrolled digits,
    per-neuron bias, exponent and unit (the identity for a dense layer)."""
    if lm.window is None:
        return lm
    sets = tuple(SynapseSet(unroll(s.digits, lm.window), s.exp, s.mode, s.scale) for s in lm.sets)
    return dataclasses.replace(lm, sets=sets, bias_mant=lm.expand(lm.bias_mant), bias_exp=lm.expand(lm.bias_exp),
                               unit=lm.expand(lm.unit), window=None)
