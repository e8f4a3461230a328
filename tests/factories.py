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
