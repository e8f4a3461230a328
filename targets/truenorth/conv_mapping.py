"""Convolutional networks on TrueNorth: the dense view the mapper builds (docs/truenorth.md,
"Convolutional networks").

A convolution is a dense product over its patches, so each node of a CNN becomes one dense
layer over the flattened (C-order) maps, with the window kept beside it for the tiling planner
(``tiling.py``), which orders the layer's units as spatial tile x output channel so that each
core's receptive-field union fits its axons:

* a convolution ``W`` (``C_out x cg kh kw``) over window ``win``: the *unrolled* matrix
  ``U[o P + p, idx[g(o), p, k]] = W[o, k]`` (padding reads code 0: no entry), bias ``b[o]``
  at every position; same activation. Exactly ``reference.accumulate``.
* a max pooling of spikes (codes 0/1): ``OR`` = a step unit with weight 1 on each element of the
  window and bias 0: ``[sum s > 0] = max s`` (padding ignored, as max ignores it).
* an average (or sum) pooling of spikes whose result is 0 or 1 for every window sum ``s`` in
  ``0..n`` (``n`` real elements): a threshold count ``[s >= t]`` = a step unit with weights 1
  and bias ``1 - t``, ``t`` the least sum the pooling's epilogue maps to 1 (per channel).

* a graded (ReLU) convolution: the unrolled matrix with its channel's requantization at every
  position; the mapper puts it in the count domain (exact where ``relu=exact`` finds an exact
  ratio, else refused naming ``relu=rate``), as it does an MLP's ReLU layers.
* an average pooling of graded codes (after a ReLU): ``graded_pool``, a count-domain ReLU layer
  of ones with the pooling's requantization.

Refused in one line: a max pooling of graded codes, an average pooling of spikes whose result
can exceed 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError
from hwq.ir import activations
from hwq.ir.window import Window
from hwq.quant.qnet import QLayer, QPool, QuantizedNetwork, Requant


@dataclass(frozen=True)
class ConvView:
    """``net`` with every node as a dense layer, and per layer index the window (and output
    channels) of the convolution or pooling it came from (the tiling planner's input)."""

    net: QuantizedNetwork
    windows: dict  # layer index -> (Window, out channels)
    sources: tuple  # per layer: "dense", "conv", "maxpool" or "avgpool"


def unrolled(window: Window, weight: np.ndarray) -> np.ndarray:
    """``U[o P + p, i]``: the convolution as a dense matrix over the flattened input."""
    idx = window.gather_index  # (g, P, K)
    c_out = weight.shape[0]
    per_group = c_out // window.groups
    P = window.positions
    u = np.zeros((c_out, P, window.n_in), np.int64)
    for o in range(c_out):
        g = o // per_group
        ix = idx[g]
        p, k = np.nonzero(ix >= 0)
        u[o, p, ix[p, k]] = weight[o, k]  # one patch never reads one input twice
    return u.reshape(c_out * P, window.n_in)


def pool_threshold(node: QPool, li: int) -> np.ndarray:
    """Per channel the least window sum of spikes the average pooling maps to code 1 (``n + 1``
    where none does); ``LimitError`` where some sum maps beyond 1."""
    n = node.window.size
    t = np.full(node.window.channels, n + 1, np.int64)
    for ch in range(node.window.channels):
        outs = [node.rescale(s, ch) for s in range(n + 1)]
        if max(outs) > 1 or outs[0] != 0:
            raise LimitError(f"layer {li}: an average pooling of spikes ({node.window.describe(groups=False)}) "
                             f"gives codes up to {max(outs)}; truenorth maps it only where each window "
                             "gives 0 or 1 (a threshold count of spikes)",
                             hint="use max pooling after a step activation, or a larger divisor")
        ones = [s for s, v in enumerate(outs) if v == 1]
        if ones:
            t[ch] = ones[0]
    return t


def graded_pool(node: QPool, li: int, in_hi: int | None) -> QLayer:
    """An average (sum) pooling of graded, non-negative codes (after a ReLU) as a ReLU layer of
    the count domain: weights 1 on each real element of the window, no bias, the pooling's own
    requantization ``floor((s M + 2^(S-1)) / 2^S)`` per channel, repeated per position, and
    ``A`` activation bits that hold its largest result, so the clip never acts:
    ``clip(rescale(s), 0, 2^A - 1) = rescale(s)``. Max pooling of graded codes has no sum
    form: refused, as are truncating poolings and poolings of signed codes."""
    win = node.window
    if node.op == "max" or in_hi is None or node.truncate:
        what = ("a max pooling" if node.op == "max" else
                "a pooling of signed codes" if in_hi is None else "a truncating average pooling")
        raise LimitError(f"layer {li}: {what} of multi-valued codes ({win.describe(groups=False)}); truenorth pools "
                         "graded codes only by a rounded average (a sum in the count domain) and spikes by OR",
                         hint="use average pooling after a ReLU, or a step activation before a max pooling")
    top = node.out_range(0, in_hi)[1]
    bits = max(1, int(top).bit_length())
    P = win.positions
    u = unrolled(win, np.ones((win.channels, win.patch_len), np.int64))
    requant = Requant(np.repeat(node.requant.multiplier, P), np.repeat(node.requant.shift, P))
    return QLayer(u, np.zeros(u.shape[0], np.int64), np.ones(u.shape[0]), node.in_scale, 1.0, "relu", bits,
                  requant, None, node.in_scale, in_hi)


def dense_view(net: QuantizedNetwork) -> ConvView:
    """The network as dense layers (module docstring); refuses what is not mapped, naming the layer."""
    layers, windows, sources = [], {}, []
    binary = net.input.qmin >= 0 and net.input.qmax <= 1  # do the codes entering this node lie in 0..1?
    in_hi = net.input.qmax if net.input.qmin >= 0 else None  # the largest code entering it (None: signed)
    for li, node in enumerate(net.layers):
        if isinstance(node, QPool):
            if not binary:
                layers.append(graded_pool(node, li, in_hi))
                windows[li] = (node.window, node.window.channels)
                sources.append("avgpool")
                in_hi = node.out_range(0, in_hi)[1]
                continue
            win = node.window
            u = unrolled(win, np.ones((win.channels, win.patch_len), np.int64))
            if node.op == "max":
                bias = np.zeros(win.channels, np.int64)
            else:
                bias = 1 - pool_threshold(node, li)
            P = win.positions
            layers.append(QLayer(u, np.repeat(bias, P), np.ones(u.shape[0]), node.in_scale, 1.0, "step", 0,
                                 None, None, 1.0, 1))
            windows[li] = (win, win.channels)
            sources.append(f"{node.op}pool")
            continue
        kind = node.activation_kind
        if node.window is None:
            layers.append(node)
            sources.append("dense")
        else:
            win = node.window
            P = win.positions
            u = unrolled(win, node.weight)
            requant = None  # per output unit o P + p: channel o's (graded convolutions: the count domain)
            if node.requant is not None:
                requant = Requant(np.repeat(node.requant.multiplier, P), np.repeat(node.requant.shift, P))
            layers.append(QLayer(u, np.repeat(node.bias, P), np.repeat(node.weight_scale, P), node.in_scale,
                                 node.gain, node.activation, node.act_bits, requant, node.lut, node.out_scale,
                                 node.in_max))
            windows[li] = (win, int(node.weight.shape[0]))
            sources.append("conv")
        binary = kind is activations.STEP
        in_hi = 1 if binary else (2**node.act_bits - 1 if kind.requantizes else None)
    view = QuantizedNetwork(net.input, tuple(layers), net.output, net.settings, None,
                            input_shape=(net.n_features,))
    return ConvView(view, windows, tuple(sources))
