"""The integer semantics, written once in plain numpy: the living spec every target is
tested against bit for bit. Formulas: ``docs/integer-semantics.md``.

Everything is int64 and exact; no floating point touches a value after input quantization.
"""

from __future__ import annotations

import numpy as np

from hwq.quant.bounds import check_layers, rounding_half
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, Requant, walk


def quantize_input(fmt: InputFormat, x: np.ndarray) -> np.ndarray:
    """``x_q = clip(floor(x * inv_scale + 1/2), qmin, qmax)`` (round half up, saturate)."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.floor(x * fmt.inv_scale + 0.5), fmt.qmin, fmt.qmax).astype(np.int64)


def requantize(acc: np.ndarray, rq: Requant) -> np.ndarray:
    """``floor((acc * M + 2^(S-1)) / 2^S)`` per output channel; ``acc * M`` when ``S == 0``."""
    return np.right_shift(acc * rq.multiplier + rounding_half(rq.shift), rq.shift)


def activate(layer: QLayer, acc: np.ndarray) -> np.ndarray:
    """The epilogue: the layer's activation kind applied to ``acc`` (identity: ``acc``; step:
    ``[acc > 0]``; sign: ``+-1``), or to ``requantize(acc)`` where the kind requantizes (relu:
    ``clip(z, 0, 2^A - 1)``; sigmoid: ``lut[clip(z, -2^11, 2^11 - 1) + 2^11]``)."""
    kind = layer.activation_kind
    z = requantize(acc, layer.requant) if kind.requantizes else acc
    return kind.codes(z, layer.act_bits, layer.lut)


def accumulate(layer: QLayer, h: np.ndarray) -> np.ndarray:
    """``acc = h @ W.T + bias``, exact in int64."""
    return h @ layer.weight.T + layer.bias


def check_int64(net: QuantizedNetwork, x_q: np.ndarray) -> None:
    """Refuse (``InvalidModelError``, naming the layer and the bound) a network whose exact
    accumulators for these codes, widened to the input format, could leave int64."""
    lo, hi = net.input.qmin, net.input.qmax
    if x_q.size:
        lo, hi = min(lo, int(x_q.min())), max(hi, int(x_q.max()))
    check_layers(net.layers, lo, hi, net.input_shape)


def trace(net: QuantizedNetwork, x_q: np.ndarray) -> list[np.ndarray]:
    """The accumulator of every layer for integer inputs ``x_q`` (N, n_features); refuses a
    network whose accumulators could wrap in int64 (``check_int64``)."""
    h = np.asarray(x_q, dtype=np.int64)
    check_int64(net, h)
    accs = []
    for _, layer, _, _ in walk(net):
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
