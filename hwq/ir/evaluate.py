"""The float model: one evaluator for every float IR graph (dense and convolutional).

Samples are ``(N, n_features)`` float arrays, each row a sample flattened in C-order
(``(c, y, x) -> (c H + y) W + x`` for maps), and stay flat from node to node: a convolution or a
pooling gathers its patches through its window's ``gather_index`` and writes its ``(C, Ho, Wo)``
output flattened the same way, so ``Flatten`` is a no-op. Per node (float64):

* ``Affine``: ``y = gain (W x + b)``;
* ``Conv2d``: ``y[o, p] = gain[o] (sum_k W[o, k] x[idx[g, p, k]] + b[o])``, padding reads 0;
* ``MaxPool2d``: the window's maximum over positions inside the image (padding never wins);
* ``AvgPool2d``: the window's sum (padding adds 0) divided by ``kh kw``;
* ``SumPool2d``: the window's sum divided by ``2^shift`` (QONNX ``Trunc``); with ``quantize=True``
  and the input on a known grid of scale ``s``: ``floor(sum / (s 2^shift)) s``;
* ``Activation``: ``activations.forward``; with ``quantize=True`` its file quantizer too.

``quantize=True`` also applies the file's input quantizer and every activation quantizer
(``clip(round(x / scale), lo, hi) scale``, ``ROUND`` being half to even as ONNX
``QuantizeLinear`` rounds; bipolar: ``+1 if x >= 0 else -1``), which is what onnxruntime
computes on a QCDQ file. Batches are evaluated in chunks so that gathered patches stay small.

The formulas are :mod:`hwq.ir.float_ops`' (calibration, the float model's gradient and training
compute with the same), a convolution summed in numpy's optimized ``einsum`` order.
"""

from __future__ import annotations

import numpy as np

from hwq.errors import InvalidModelError
from hwq.ir import activations, float_ops
from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, SumPool2d
from hwq.ir.graph import Activation, Affine, Flatten, Graph, Quantizer

PATCH_ELEMENTS = 2**23  # gathered patch values per chunk (64 MiB of float64)
LAYERS = (Affine, Conv2d)
POOLS = (AvgPool2d, SumPool2d, MaxPool2d)


def shapes(graph: Graph) -> list[tuple[int, ...]]:
    """The sample shape before each node and after the last (``len(nodes) + 1`` entries),
    checking that each node reads what the previous one writes; one-line ``InvalidModelError``
    otherwise."""
    shape = tuple(graph.sample_shape)
    out = [shape]
    for i, node in enumerate(graph.nodes):
        n = int(np.prod(shape)) if shape else 0
        if isinstance(node, (Conv2d, *POOLS)):
            if tuple(node.window.in_shape) != tuple(shape) and not (len(shape) == 1 and node.window.n_in == n):
                raise InvalidModelError(f"node {i} ({type(node).__name__}) reads maps of shape "
                                        f"{tuple(node.window.in_shape)}, the previous node gives {shape}")
            shape = tuple(node.out_shape)
        elif isinstance(node, Affine):
            if node.n_in != n:
                raise InvalidModelError(f"node {i} (dense layer) reads {node.n_in} inputs, the previous "
                                        f"node gives {n}")
            shape = (node.n_out,)
        elif isinstance(node, Flatten):
            shape = (n,)
        elif not isinstance(node, Activation):
            raise InvalidModelError(f"node {i} is a {type(node).__name__}, not a float IR node")
        out.append(shape)
    return out


def quantize(x: np.ndarray, q: Quantizer) -> np.ndarray:
    """The file's quantizer, as onnxruntime (QCDQ) or qonnx (QONNX ``Quant``) computes it."""
    if q.bits == 1 and q.signed:
        return np.where(x >= 0, 1.0, -1.0) * q.scale
    v = x / q.scale
    mode = q.rounding.upper()
    if mode in ("ROUND", "HALF_EVEN"):
        r = np.rint(v)
    elif mode == "HALF_UP":
        r = np.floor(v + 0.5)
    elif mode == "FLOOR":
        r = np.floor(v)
    elif mode == "CEIL":
        r = np.ceil(v)
    else:  # UP/DOWN/HALF_DOWN: rare; the integer network rounds half up anyway
        r = np.rint(v)
    return np.clip(r, q.lo, q.hi) * q.scale


def conv(node: Conv2d, x: np.ndarray) -> np.ndarray:
    """A ``Conv2d``'s output, flat (``float_ops.conv``, numpy's optimized contraction)."""
    return float_ops.conv(node.window, node.matrix, x, node.bias, node.gain)


def dense(node: Affine, x: np.ndarray) -> np.ndarray:
    """An ``Affine``'s output ``gain (W x + b)``."""
    return float_ops.dense(x, node.weight, node.bias, node.gain)


def pool(node, x: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A pooling's output, flat; ``scale``: a ``SumPool2d``'s input grid (``quantize_maps``)."""
    w = node.window
    if isinstance(node, MaxPool2d):
        return float_ops.max_pool(w, x)
    s = float_ops.window_sum(w, x)
    if isinstance(node, AvgPool2d):
        return s / w.size
    if scale is not None:
        return np.floor(np.rint(s / scale) / 2**node.shift) * scale
    return s / 2**node.shift


def chunk_rows(graph: Graph) -> int:
    """Samples per chunk: the largest gathered patch tensor stays under ``PATCH_ELEMENTS``."""
    most = max((n.window.groups * n.window.positions * n.window.patch_len
                for n in graph.nodes if isinstance(n, (Conv2d, *POOLS))), default=0)
    return max(1, PATCH_ELEMENTS // most) if most else 1 << 30


def trace(graph: Graph, x: np.ndarray, *, quantize_maps: bool = False) -> list[np.ndarray]:
    """Every node's output (flat, float64) for the batch ``x``; the last is the scores."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != graph.n_features:
        raise InvalidModelError(f"the float model reads samples of {graph.n_features} features "
                                f"{tuple(graph.sample_shape)}, got an array of shape {x.shape}")
    step = chunk_rows(graph)
    if len(x) > step:
        parts = [trace(graph, x[i:i + step], quantize_maps=quantize_maps) for i in range(0, len(x), step)]
        return [np.concatenate(p, axis=0) for p in zip(*parts)]
    scale = None  # the grid the stream sits on (quantize_maps), where known
    h = x
    if quantize_maps and graph.input_quant is not None:
        h = quantize(h, graph.input_quant)
        scale = graph.input_quant.scale
    outs = []
    for node in graph.nodes:
        if isinstance(node, Affine):
            h = dense(node, h)
            scale = None
        elif isinstance(node, Conv2d):
            h = conv(node, h)
            scale = None
        elif isinstance(node, POOLS):
            h = pool(node, h, scale if quantize_maps else None)
            if isinstance(node, AvgPool2d):
                scale = None
        elif isinstance(node, Activation):
            h = activations.forward(node.kind, h)
            if quantize_maps and node.quant is not None:
                h = quantize(h, node.quant)
                scale = node.quant.scale
            else:  # step and sign emit 0/1 and -1/+1: a grid of scale 1
                scale = 1.0 if activations.kind(node.kind).binary else None
        elif isinstance(node, Flatten):
            pass
        else:
            raise InvalidModelError(f"the float model cannot evaluate a {type(node).__name__}")
        outs.append(h)
    return outs


def forward(graph: Graph, x: np.ndarray, *, quantize_maps: bool = False) -> np.ndarray:
    """The scores ``(N, n_outputs)`` (before the output rule: softmax/sigmoid are not applied)
    of the float model on flat samples ``x`` ``(N, n_features)``."""
    x = np.asarray(x, dtype=np.float64)
    if not graph.nodes:
        return x
    step = chunk_rows(graph)
    if len(x) > step:
        return np.concatenate([forward(graph, x[i:i + step], quantize_maps=quantize_maps)
                               for i in range(0, len(x), step)], axis=0)
    return trace(graph, x, quantize_maps=quantize_maps)[-1]
