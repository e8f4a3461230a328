"""The quantization report's sigmoid error is measured (issue 8): the largest difference
between the LUT's output and the real sigmoid on the calibration data, recomputed here from
the integer network's own LUT and the float pre-activations."""

from __future__ import annotations

import numpy as np
import pytest

import hwq
from hwq import ir
from hwq.ir import activations
from hwq.quant.reference import quantize_input


def sigmoid_net(act_bits, seed=0):
    rng = np.random.default_rng(seed)
    nodes = (ir.Affine(rng.normal(0, 2.0, (8, 6)), rng.normal(0, 1, 8)), ir.Activation("sigmoid"),
             ir.Affine(rng.normal(0, 1, (3, 8)), np.zeros(3)))
    graph = ir.Graph((6,), nodes, ir.Output("softmax"))
    x = rng.uniform(0, 1, (300, 6))
    return hwq.quantize(graph, 16, calibration=x, bounds=(0.0, 1.0), act_bits=act_bits), x


def independent_error(net, x):
    layer = net.layers[0]
    xq = quantize_input(net.input, x) * net.input.scale
    z = layer.gain * (xq @ layer.real_weight.T + layer.bias * layer.acc_scale / layer.gain)
    k = np.clip(np.floor(z * 256 + 0.5), -2048, 2047).astype(np.int64) + 2048
    return float(np.max(np.abs(layer.lut[k] * layer.out_scale - activations.sigmoid(z))))


@pytest.mark.parametrize("act_bits", [1, 2, 8, 16])
def test_sigmoid_report_error_is_measured(act_bits):
    net, x = sigmoid_net(act_bits)
    report = next(r for r in net.report if r.tensor.endswith(".sigmoid"))
    want = independent_error(net, x)
    assert report.max_abs_error == pytest.approx(want, rel=1e-9, abs=1e-12)
    if act_bits == 1:
        assert report.max_abs_error > 0.3  # the fixed 2^-9 it used to print was far off
    if act_bits == 16:
        assert report.max_abs_error < 2**-8
