"""The float model's forward and backward for ``--grad float`` (``gradients.FloatGradient``), on
every float IR node: ``Affine``, ``Conv2d``, ``AvgPool2d``, ``SumPool2d``, ``MaxPool2d``,
``Activation`` and ``Flatten`` (a no-op: samples stay flat in C-order).

The graph becomes a chain of linear nodes, each followed by the activation written after it
(``identity`` where none is): ``z_l = gain_l (A_l h_{l-1} + b_l)``, ``h_l = f_l(z_l)``, with
``A_l`` a matrix, a convolution over patches, a window mean (``AvgPool2d``: ``1 / (kh kw)``), a
window sum times ``2^-shift`` (``SumPool2d``; straight through QONNX's floor) or a window
maximum (``MaxPool2d``: routed to the first maximum of ``h_{l-1}`` in window order). The
forward products are the float evaluator's formulas (``hwq.ir.float_ops``; a convolution
summed in the plain ``einsum`` order, a window mean as the sum times ``1 / (kh kw)``, the
numbers this gradient always had); ``float_trace`` records the pre-activations ``z_l`` the
backward reads. The backward operators are the surrogate's (``hwq.attack.transpose``); a
convolution's per-channel gain (a folded BatchNormalization) is folded into its transposed
weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq import ir
from hwq.attack.transpose import AvgPoolT, ConvT, MaxPoolT
from hwq.errors import InvalidModelError
from hwq.ir import activations, float_ops
from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, SumPool2d


@dataclass
class FloatNode:
    """One linear node of the float chain: ``forward`` (no bias, no gain), ``bias`` and
    ``gain`` (scalars or per output), ``back`` (the backward operator, gain folded where it is
    per channel), ``back_gain`` (the scalar gain ``backprop`` applies) and the activation."""

    forward: object
    back: object
    bias: np.ndarray | float = 0.0
    gain: np.ndarray | float = 1.0
    back_gain: float = 1.0
    act: str = "identity"


def float_chain(graph: ir.Graph) -> list[FloatNode]:
    """The graph's nodes as a chain of :class:`FloatNode` (module docstring)."""
    chain: list[FloatNode] = []
    for node in graph.nodes:
        if isinstance(node, ir.Affine):
            chain.append(FloatNode(lambda h, w=node.weight: float_ops.dense(h, w), node.weight, node.bias,
                                   node.gain, node.gain))
        elif isinstance(node, Conv2d):
            positions = node.window.positions
            chain.append(FloatNode(lambda h, n=node: float_ops.conv(n.window, n.matrix, as_float(h), order="einsum"),
                                   ConvT(node.gain[:, None] * node.matrix, node.window),
                                   np.repeat(node.bias, positions), np.repeat(node.gain, positions)))
        elif isinstance(node, (AvgPool2d, SumPool2d)):
            win = node.window
            scale = 1.0 / win.size if isinstance(node, AvgPool2d) else 2.0 ** -node.shift
            chain.append(FloatNode(lambda h, w=win, s=scale: float_ops.window_sum(w, as_float(h)) * s,
                                   AvgPoolT(win, np.full(win.channels, scale))))
        elif isinstance(node, MaxPool2d):
            if not chain:
                raise InvalidModelError("a max pooling cannot be the float model's first node")
            below = chain[-1]
            op = MaxPoolT(node.window, lambda z, b=below: activations.forward(b.act, z))
            chain.append(FloatNode(lambda h, w=node.window: float_ops.max_pool(w, as_float(h)), op))
        elif isinstance(node, ir.Activation):
            if not chain or activations.kind(chain[-1].act) is not activations.IDENTITY:
                raise InvalidModelError(f"activation '{node.kind}' must follow a linear or pooling node")
            chain[-1].act = node.kind
    if not chain:
        raise InvalidModelError("the model has no dense or convolution layer")
    return chain


def as_float(h) -> np.ndarray:
    return np.asarray(h, np.float64)


def float_trace(chain: list[FloatNode], x: np.ndarray) -> list[np.ndarray]:
    """The float pre-activations ``z`` of every node for inputs ``x`` (N, n_features)."""
    h, zs = np.asarray(x, dtype=np.float64), []
    for node in chain:
        z = node.gain * (node.forward(h) + node.bias)
        zs.append(z)
        h = activations.forward(node.act, z)
    return zs
