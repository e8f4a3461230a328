"""The backward products of the surrogate gradient, one per node kind (``gradients.backprop``).

Each node's linear part maps its input ``h`` to its output; the backward product maps
``delta = dL/d(output)`` (N, n_out) to ``dL/dh`` (N, n_in), samples flattened in C-order:

* dense layer: a plain matrix ``W`` (n_out, n_in): ``delta @ W``;
* convolution (:class:`ConvT`): the transposed product over patches. The forward is
  ``z[o, p] = sum_k W[o, k] h[idx[g(o), p, k]]`` (``Window.gather_index``), so
  ``dL/dh[i] = sum over (o, p, k) with idx[g(o), p, k] = i of delta[o, p] W[o, k]``: per kernel
  offset, ``delta @ W`` over the group's output channels, scatter-added into the input
  positions the patch read; padding positions (``idx = -1``) are dropped (they read the
  constant code of zero);
* average pooling (:class:`AvgPoolT`): the window sum times ``M / 2^S`` (the requantization's
  multiplier and shift, about ``1 / (kh kw)``), straight through the rounding: each output's
  ``delta`` spread evenly over its window, ``delta * M / 2^S`` to every element (padding
  dropped), times ``out_scale / in_scale`` (real units);
* max pooling (:class:`MaxPoolT`): routed to the forward maximum. The maximum is taken on the
  pool's input at the operating point (the integer codes of the layer below, recomputed from
  its traced accumulators: exactly what the program pooled; for the float model the float
  activations); padding never wins. Tie rule: the first maximum in window order (kernel row by
  row, ``numpy.argmax``) gets the whole gradient, the others none.

Pools have no activation of their own (``identity``) and gain 1.

For one kernel offset ``t`` the input positions that ``(group, position, channel)`` read are
all distinct (strides are >= 1), so the scatter is a fancy-indexed ``+=`` over a buffer with
one extra column that collects padding (only it repeats): ``kh kw`` vectorised products and
no temporary larger than the input gradient itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwq.ir import activations
from hwq.ir.window import Window
from hwq.quant.qnet import QLayer, QPool
from hwq.quant.reference import activate, patches

NO_WIN = np.iinfo(np.int64).min  # the pad value of a max pool's patches (never the maximum)


def offset_targets(window: Window) -> list[np.ndarray]:
    """Per kernel offset ``t = i kw + j``: the flat input index each (group, position, channel)
    reads there, ``(g Ho Wo cg,)`` in that order, padding mapped to ``n_in`` (a dump column)."""
    g, p, _ = window.gather_index.shape
    idx = window.gather_index.reshape(g, p, window.group_channels, window.size)
    return [np.ascontiguousarray(np.where(idx[..., t] < 0, window.n_in, idx[..., t])).reshape(-1)
            for t in range(window.size)]


class ConvT:
    """The transposed product of a convolution with real weights ``weight`` (C_out, cg kh kw)."""

    def __init__(self, weight: np.ndarray, window: Window, targets=None):
        self.window = window
        self.weight = np.asarray(weight)
        cout = self.weight.shape[0]
        g = window.groups
        # (g, O/g, cg, kh kw): per offset t, w[..., t] maps the group's outputs to its channels
        self.w = self.weight.reshape(g, cout // g, window.group_channels, window.size)
        self.targets = offset_targets(window) if targets is None else targets
        self.shape = (cout * window.positions, window.n_in)  # the equivalent dense matrix's

    def astype(self, dtype) -> ConvT:
        return ConvT(self.weight.astype(dtype), self.window, self.targets)

    def back(self, delta: np.ndarray, below=None) -> np.ndarray:
        win, n = self.window, len(delta)
        g, og = self.w.shape[:2]
        d = delta.reshape(n, g, og, win.positions).transpose(0, 1, 3, 2)  # (n, g, P, O/g)
        out = np.zeros((n, win.n_in + 1), np.result_type(delta.dtype, self.w.dtype))
        for t, target in enumerate(self.targets):
            out[:, target] += (d @ self.w[..., t]).reshape((n, *np.shape(target)))  # (n, g, P, cg)
        return out[:, :win.n_in]

    def forward(self, h: np.ndarray) -> np.ndarray:
        """``W`` over every patch (padding reads 0), no bias: (N, C_out Ho Wo). The float model's."""
        win, n = self.window, len(h)
        p = patches(win, np.asarray(h, np.float64))  # (N, g, P, K)
        w = self.weight.reshape(win.groups, -1, win.patch_len)
        return np.einsum("ngpk,gok->ngop", p, w).reshape(n, self.weight.shape[0] * win.positions)


class AvgPoolT:
    """An average pooling's backward: ``delta * coef[c]`` spread over each window."""

    def __init__(self, window: Window, coef: np.ndarray, targets=None):
        self.window, self.coef = window, np.asarray(coef, np.float64)
        self.targets = offset_targets(window) if targets is None else targets

    def astype(self, dtype) -> AvgPoolT:
        return self

    def back(self, delta: np.ndarray, below=None) -> np.ndarray:
        win, n = self.window, len(delta)
        spread = (delta.reshape(n, win.channels, win.positions)
                  * self.coef[None, :, None].astype(delta.dtype)).reshape(n, win.channels * win.positions)
        out = np.zeros((n, win.n_in + 1), delta.dtype)
        for target in self.targets:  # channel-major, as the targets: (C, P, 1)
            out[:, target] += spread
        return out[:, :win.n_in]

    def forward(self, h: np.ndarray) -> np.ndarray:
        win, n = self.window, len(h)
        s = patches(win, np.asarray(h, np.float64)).sum(axis=3)
        return (s * self.coef[None, :, None]).reshape(n, win.channels * win.positions)


class MaxPoolT:
    """A max pooling's backward: ``delta`` routed to each window's first maximum of the
    pool's input, ``inputs(z_below)`` (the operating point of the node below), times ``ratio``
    (``out_scale / in_scale``)."""

    def __init__(self, window: Window, inputs: Callable[[np.ndarray], np.ndarray], ratio: float = 1.0,
                 targets=None):
        self.window, self.inputs, self.ratio = window, inputs, float(ratio)
        self.targets = offset_targets(window) if targets is None else targets

    def astype(self, dtype) -> MaxPoolT:
        return self

    def winners(self, h: np.ndarray) -> np.ndarray:
        """Per sample, channel and position, the kernel offset of the first maximum (N, C, P)."""
        h = np.asarray(h)
        pad = NO_WIN if h.dtype.kind in "iu" else -np.inf
        return patches(self.window, h, pad_code=pad).argmax(axis=3)

    def back(self, delta: np.ndarray, below: np.ndarray) -> np.ndarray:
        win, n = self.window, len(delta)
        arg = self.winners(self.inputs(below)).reshape(n, win.channels * win.positions)
        d = delta * delta.dtype.type(self.ratio)
        out = np.zeros((n, win.n_in + 1), delta.dtype)
        for t, target in enumerate(self.targets):
            out[:, target] += np.where(arg == t, d, 0)
        return out[:, :win.n_in]

    def forward(self, h: np.ndarray) -> np.ndarray:
        return patches(self.window, np.asarray(h, np.float64), pad_code=-np.inf).max(axis=3).reshape(len(h), -1)


ROW_BLOCK = 64  # rows per BLAS call of the backward products


def row_product(delta: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``delta @ w`` such that each row's result does not depend on how many rows share the
    call or where a row sits among them: float64 products (a float32 ``delta`` is widened and
    the result rounded back) in calls of exactly ``ROW_BLOCK`` rows, the last padded with
    zeros. OpenBLAS (0.3.34) picks kernels, and so summation orders, by the matrix's size, and
    its float32 kernels also by a row's position in the block: a row of ``a @ w`` differed in
    its last bit between a 31-row and a 120-row call. Attacks batch the rows of every strength
    together, so without this a strength's points would depend on the other strengths in the
    list and on ``batch_size`` (tests/test_attack_apgd.py)."""
    n, dtype = len(delta), np.result_type(delta, w)
    d64, w64 = delta.astype(np.float64, copy=False), w.astype(np.float64, copy=False)
    out = np.empty((n, w.shape[1]), dtype)
    full = n - n % ROW_BLOCK
    for i in range(0, full, ROW_BLOCK):
        out[i:i + ROW_BLOCK] = d64[i:i + ROW_BLOCK] @ w64
    if full < n:
        pad = np.zeros((ROW_BLOCK, delta.shape[1]), np.float64)
        pad[:n - full] = d64[full:]
        out[full:] = (pad @ w64)[:n - full]
    return out


def product(op, delta: np.ndarray, below: np.ndarray | None) -> np.ndarray:
    """``dL/dh`` of one node: a dense matrix's ``delta @ W`` (``row_product``), else the node's
    own ``back``."""
    if isinstance(op, np.ndarray):
        return row_product(delta, op)
    return op.back(delta, below)


def codes_from_trace(node, z: np.ndarray) -> np.ndarray:
    """The integer codes ``node`` passed on, from its traced real values ``z`` (accumulators
    times ``unit_scale``; a pool's: output codes times ``out_scale``): exact while ``|acc| <
    2^52``, which the surrogate's networks satisfy (float64 of the accumulator)."""
    acc = np.rint(np.asarray(z, np.float64) / node.unit_scale).astype(np.int64)
    return acc if isinstance(node, QPool) else activate(node, acc)


def integer_node_op(nodes, index: int, weight=None):
    """The backward operator of integer node ``nodes[index]``: its real weight (``weight``, or
    ``W * weight_scale``) as a matrix (dense) or ``ConvT``; ``AvgPoolT``/``MaxPoolT`` for pools."""
    node = nodes[index]
    if isinstance(node, QLayer):
        w = node.real_weight if weight is None else weight
        return w if node.window is None else ConvT(w, node.window)
    ratio = node.out_scale / node.in_scale
    if node.op == "avg":
        rq = node.requant
        return AvgPoolT(node.window, rq.multiplier / 2.0**rq.shift * ratio)
    below = nodes[index - 1]
    return MaxPoolT(node.window, lambda z: codes_from_trace(below, z), ratio)


def node_activation(node) -> activations.Kind | str:
    return node.activation if isinstance(node, QLayer) else "identity"


def node_gain(node) -> float:
    return node.gain if isinstance(node, QLayer) else 1.0
