"""Integer networks and input codes for tests: the builders every target's tests share
(tests/targets/test_conformance.py, the loihi, truenorth and sim tests)."""

from __future__ import annotations

import numpy as np
from builders import random_mlp

from hwq.onnx.importer import graph_from_model
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings
from hwq.quant.quantize import quantize


def make_net(layers, input_bits=8, signed=False, output="argmax") -> QuantizedNetwork:
    fmt = InputFormat(input_bits, signed, 1.0 / layers[0].in_scale)
    return QuantizedNetwork(fmt, tuple(layers), output, QuantSettings(bits=8), None)


def make_layer(w, bias, act, in_scale=1.0, out_scale=1.0, w_scale=None) -> QLayer:
    w = np.asarray(w, np.int64)
    ws = np.full(w.shape[0], 0.01) if w_scale is None else np.asarray(w_scale, float)
    return QLayer(w, np.asarray(bias, np.int64), ws, in_scale, 1.0, act,
                  8 if act == "relu" else 0, None, None, out_scale)


def weights(rng, shape, top, sign):
    w = rng.integers(-top, top + 1, shape)
    return {"mixed": w, "excitatory": np.abs(w), "inhibitory": -np.abs(w)}[sign]


def random_net(rng, n_in, hidden, acts, top, sign="mixed", input_bits=8, signed=False,
               bias_scale=1.0, out=3, odd=False, output="argmax"):
    """Random integer network: codes in [-top, top] (odd codes if ``odd``), biases of about
    ``bias_scale`` times a typical sum, ReLU output scales that ask for a requantization."""
    fmt_scale = 1.0 / 2 ** (input_bits - 1)
    in_scale, in_max, layers = fmt_scale, 2 ** input_bits, []
    sizes = [n_in, *hidden, out]
    for i, act in enumerate([*acts, "identity"]):
        w = weights(rng, (sizes[i + 1], sizes[i]), top, sign)
        if odd:
            w = np.where(w % 2 == 0, w + np.where(w < top, 1, -1), w)
        typical = max(1.0, top * in_max * np.sqrt(sizes[i]) / 4)
        bias = rng.integers(-1, 2, sizes[i + 1]) * rng.integers(0, int(typical * bias_scale) + 2,
                                                                  sizes[i + 1])
        acc_scale = 0.01 * in_scale
        out_scale = acc_scale * typical / 2.0 ** rng.integers(4, 9) if act == "relu" else 1.0
        layers.append(make_layer(w, bias, act, in_scale, out_scale))
        in_scale, in_max = (out_scale, 255) if act == "relu" else (1.0, 1)
    return make_net(layers, input_bits, signed, output)


def big_bias_net(rng, act="step", n_in=2, hidden=40, top=15):
    """A spiral-like network on 16-bit signed inputs whose biases span the whole sum range
    (some neurons always or never fire): the offsets outgrow the LIF bias and threshold at
    the shift the 24-bit state alone would need."""
    reach = top * 2**15 * n_in
    w = rng.integers(-top, top + 1, (hidden, n_in))
    bias = rng.integers(-reach, reach + 1, hidden)
    bias[:4] = [reach, -reach, reach // 2, -reach // 2]
    acc_scale = 0.01 / 2**15
    out_scale = acc_scale * reach / 2**7 if act == "relu" else 1.0
    layers = [make_layer(w, bias, act, 1.0 / 2**15, out_scale),
              make_layer(rng.integers(-7, 8, (3, hidden)), rng.integers(-20, 21, 3), "identity",
                         out_scale if act == "relu" else 1.0)]
    return make_net(layers, 16, signed=True)


def codes(rng, net, n):
    """Random input codes plus the extremes of the input range."""
    fmt = net.input
    x = rng.integers(fmt.qmin, fmt.qmax + 1, (n, net.n_features))
    x[0], x[1] = fmt.qmax, fmt.qmin
    return x


def onnx_net(rng, act, bits, scheme="narrow", n_in=12, hidden=6, out=3, per_channel=False):
    graph = graph_from_model(random_mlp(rng, n_in, hidden, out, act=act))
    x = rng.uniform(0, 1, (64, n_in))
    return quantize(graph, QuantSettings(bits, scheme, per_channel), x, bounds=(0, 1)), x


def conv_layer(rng, in_shape, out_channels, kernel, act, *, stride=(1, 1), pads=(0, 0, 0, 0),
               dilation=(1, 1), groups=1, top=7, in_scale=1.0, in_max=255, act_bits=8):
    """A random integer convolution over ``in_shape`` (C, H, W) with codes in [-top, top]."""
    from hwq.ir.window import Window
    from hwq.quant.qnet import Requant

    win = Window(tuple(in_shape), tuple(kernel), tuple(stride), tuple(pads), tuple(dilation), groups)
    w = rng.integers(-top, top + 1, (out_channels, win.patch_len))
    typical = max(1.0, top * in_max * np.sqrt(win.patch_len) / 4)
    bias = rng.integers(-int(typical), int(typical) + 1, out_channels)
    ws = rng.uniform(0.005, 0.02, out_channels)
    requant, bits = None, 0
    out_scale = 1.0
    if act == "relu":
        bits = act_bits
        shift = int(np.ceil(np.log2(typical))) - bits + 12
        requant = Requant(rng.integers(2**11, 2**12, out_channels), np.full(out_channels, max(shift, 0)))
        out_scale = float(ws.mean() * in_scale * 2.0**max(shift, 0) / 2**11.5)
    return QLayer(w, bias, ws, in_scale, 1.0, act, bits, requant, None, out_scale, in_max, win)


def pool_node(in_shape, op, kernel, *, stride=None, pads=(0, 0, 0, 0), in_scale=1.0, truncate=False):
    """A pooling node; ``avg`` with the round-half-up requantization of ``1 / (kh kw)``."""
    from hwq.ir.window import Window
    from hwq.quant.qnet import QPool, Requant

    stride = tuple(kernel) if stride is None else tuple(stride)
    win = Window(tuple(in_shape), tuple(kernel), stride, tuple(pads), (1, 1), in_shape[0])
    rq = None
    if op == "avg":
        k = win.size
        shift = 16 + int(np.ceil(np.log2(k)))
        m = 1 if k & (k - 1) == 0 else round(2**shift / k)
        shift = int(np.log2(k)) if m == 1 else shift
        rq = Requant(np.full(in_shape[0], m), np.full(in_shape[0], shift))
    return QPool(op, win, rq, truncate, in_scale, in_scale)


def random_cnn(rng, in_shape=(1, 8, 8), act="relu", pool="max", channels=(4, 6), out=3, top=7,
               input_bits=8, signed=False, pads=1, stride=1, groups=1, output="argmax"):
    """A small random integer CNN: conv(3x3, pads, stride) -> act -> pool 2x2 -> conv -> act ->
    dense -> scores. ``pool`` None: no pooling."""
    in_scale = 1.0 / 2 ** (input_bits - 1)
    in_max = 2**input_bits
    nodes, shape = [], tuple(in_shape)
    for i, c in enumerate(channels):
        g = groups if i and shape[0] % groups == 0 and c % groups == 0 else 1
        layer = conv_layer(rng, shape, c, (3, 3), act, stride=(stride, stride), pads=(pads,) * 4,
                           groups=g, top=top, in_scale=in_scale, in_max=in_max)
        nodes.append(layer)
        shape = layer.out_shape
        in_scale = layer.out_scale if act == "relu" else 1.0
        in_max = 255 if act == "relu" else 1
        if pool and i == 0 and min(shape[1:]) >= 2:
            p = pool_node(shape, pool, (2, 2), in_scale=in_scale)
            nodes.append(p)
            shape = p.out_shape
            in_scale = p.out_scale
    n_in = int(np.prod(shape))
    nodes.append(make_layer(rng.integers(-top, top + 1, (out, n_in)), rng.integers(-50, 51, out), "identity",
                            in_scale))
    fmt = InputFormat(input_bits, signed, 2.0 ** (input_bits - 1))
    return QuantizedNetwork(fmt, tuple(nodes), output, QuantSettings(bits=8), None, input_shape=tuple(in_shape))
