"""The integer semantics, written once in plain numpy: the living spec every target is
tested against bit for bit. Formulas: ``docs/integer-semantics.md``.

Everything is int64 and exact; no floating point touches a value after input quantization.
"""

from __future__ import annotations

import numpy as np

from hwq.quant.bounds import check_layers, rounding_half
from hwq.quant.qnet import InputFormat, QLayer, QPool, QuantizedNetwork, Requant, walk


def quantize_input(fmt: InputFormat, x: np.ndarray) -> np.ndarray:
    """``x_q = clip(floor(x * inv_scale + 1/2), qmin, qmax)`` (round half up, saturate)."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.floor(x * fmt.inv_scale + 0.5), fmt.qmin, fmt.qmax).astype(np.int64)


def requantize(acc: np.ndarray, rq: Requant) -> np.ndarray:
    """``floor((acc * M + 2^(S-1)) / 2^S)`` per output channel; ``acc * M`` when ``S == 0``.
    ``acc`` is (N, C) or, for a convolution, (N, C * positions) in C-order (channel-major)."""
    n, c = acc.shape[0], rq.multiplier.shape[0]
    a = acc.reshape(n, c, acc.shape[1] // c)  # explicit: an empty batch has no -1 to infer
    m, s = rq.multiplier[None, :, None], rq.shift[None, :, None]
    return np.right_shift(a * m + rounding_half(s), s).reshape(acc.shape)


def activate(layer: QLayer, acc: np.ndarray) -> np.ndarray:
    """The epilogue: the layer's activation kind applied to ``acc`` (identity: ``acc``; step:
    ``[acc > 0]``; sign: ``+-1``), or to ``requantize(acc)`` where the kind requantizes (relu:
    ``clip(z, 0, 2^A - 1)``; sigmoid: ``lut[clip(z, -2^11, 2^11 - 1) + 2^11]``; ``clip(l,h)``:
    ``clip(z, c_lo, c_hi)`` with both real bounds on the code grid, ``activations.clip_grid``)."""
    kind = layer.activation_kind
    z = requantize(acc, layer.requant) if kind.requantizes else acc
    return kind.codes(z, layer.act_bits, layer.lut)


def patches(window, h: np.ndarray, pad_code: int = 0) -> np.ndarray:
    """Every patch of the C-order maps ``h`` (N, C*H*W): ``(N, groups, Ho Wo, cg kh kw)``, padding
    read as ``pad_code`` (``window.gather_index``)."""
    idx = window.gather_index
    padded = np.concatenate([h, np.full((h.shape[0], 1), pad_code, dtype=h.dtype)], axis=1)
    return padded[:, np.where(idx < 0, h.shape[1], idx)]


def accumulate(layer: QLayer, h: np.ndarray) -> np.ndarray:
    """``acc = h @ W.T + bias`` for a dense layer; for a convolution the same product over every
    patch (padding reads code 0, real zero), ``acc[n, o, p] = sum_k W[o, k] patch[n, g(o), p, k] +
    bias[o]`` flattened C-order to (N, C_out Ho Wo). Exact in int64."""
    if layer.window is None:
        return h @ layer.weight.T + layer.bias
    win, n = layer.window, h.shape[0]
    per_group = layer.weight.shape[0] // win.groups
    p = patches(win, h)  # (N, g, P, K)
    w = layer.weight.reshape(win.groups, per_group, -1)  # (g, O/g, K)
    acc = np.einsum("ngpk,gok->ngop", p, w).reshape(n, layer.weight.shape[0], win.positions)
    return (acc + layer.bias[None, :, None]).reshape(n, layer.n_out)


def pool(node: QPool, h: np.ndarray) -> np.ndarray:
    """A pooling node on codes (N, C*H*W) -> (N, C*Ho*Wo): ``max`` over the window ignoring
    padding; ``avg``: the window sum (padding adds 0) then ``floor((s M + 2^(S-1)) / 2^S)``
    (``floor(s M / 2^S)`` where ``truncate``), per channel."""
    win, n = node.window, h.shape[0]
    if node.op == "max":
        p = patches(win, h, pad_code=np.iinfo(np.int64).min)  # (N, C, P, k): padding never wins
        return p.max(axis=3).reshape(n, node.n_out)
    s = patches(win, h).sum(axis=3)  # (N, C, P)
    rq = node.requant
    half = np.zeros_like(rq.shift) if node.truncate else rounding_half(rq.shift)
    out = np.right_shift(s * rq.multiplier[None, :, None] + half[None, :, None], rq.shift[None, :, None])
    return out.reshape(n, node.n_out)


def check_int64(net: QuantizedNetwork, x_q: np.ndarray) -> None:
    """Refuse (``InvalidModelError``, naming the layer and the bound) a network whose exact
    accumulators for these codes, widened to the input format, could leave int64."""
    lo, hi = net.input.qmin, net.input.qmax
    if x_q.size:
        lo, hi = min(lo, int(x_q.min())), max(hi, int(x_q.max()))
    check_layers(net.layers, lo, hi, net.input_shape)


def trace(net: QuantizedNetwork, x_q: np.ndarray) -> list[np.ndarray]:
    """The accumulator of every layer for integer inputs ``x_q`` (N, n_features) (a pooling
    node's entry: its output codes); refuses a network whose accumulators could wrap in int64
    (``check_int64``)."""
    h = np.asarray(x_q, dtype=np.int64)
    check_int64(net, h)
    accs = []
    for _, layer, _, _ in walk(net):
        if isinstance(layer, QPool):
            h = pool(layer, h)
            accs.append(h)
            continue
        acc = accumulate(layer, h)
        accs.append(acc)
        h = activate(layer, acc)
    return accs


def forward(net: QuantizedNetwork, x_q: np.ndarray) -> np.ndarray:
    """Integer output scores (N, n_out): the last layer's accumulator."""
    return trace(net, x_q)[-1]


def decide(scores: np.ndarray, output: str) -> np.ndarray:
    """Class decisions: ``argmax`` (lowest index wins ties) or ``sign`` (1 iff score > 0)."""
    if output == "sign":
        return (scores[:, 0] > 0).astype(np.int64)
    return np.argmax(scores, axis=1).astype(np.int64)


def predict(net: QuantizedNetwork, x: np.ndarray) -> np.ndarray:
    return decide(forward(net, quantize_input(net.input, x)), net.output)
