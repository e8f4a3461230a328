"""Accumulator bounds in Python integers: a network whose exact accumulators leave int64 is
refused everywhere (quantize, the reference, sim, export) with the layer and the bound, never
computed with wrapped int64 (issue 8, defect 1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hwq
from hwq import ir
from hwq.errors import InvalidModelError
from hwq.onnx.exporter import export_onnx
from hwq.quant import bounds, reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings, Requant


def identity_chain(rng, sizes, scale):
    nodes = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        nodes.append(ir.Affine(rng.normal(0, scale / np.sqrt(n_in), (n_out, n_in)),
                               rng.normal(0, 0.3 * scale, n_out)))
    return ir.Graph((sizes[0],), tuple(nodes), ir.Output("softmax"))


def python_bounds(net, lo, hi):
    """Every layer's max |acc| by the formula, in plain Python integers."""
    out, peak = [], max(abs(lo), abs(hi))
    for layer in net.layers:
        b = max(sum(abs(int(w)) for w in row) * peak + abs(int(bj))
                for row, bj in zip(layer.weight.tolist(), layer.bias.tolist()))
        out.append(b)
        if layer.activation == "identity":
            peak = b
        elif layer.activation in ("step", "sign"):
            peak = 1
        elif layer.activation == "relu":
            peak = 2**layer.act_bits - 1
        else:
            peak = max(abs(int(layer.lut.min())), abs(int(layer.lut.max())))
    return out


def issue_network():
    """40-24-24-5 identity layers, weights scaled by 30, 16-bit weights and inputs (issue 8)."""
    rng = np.random.default_rng(0)
    graph = identity_chain(rng, [40, 24, 24, 5], 30.0)
    x = rng.normal(0, 2, (64, 40))
    return graph, x


def test_issue_network_is_refused_naming_layer_and_bound():
    graph, x = issue_network()
    with pytest.raises(InvalidModelError, match=r"layer [0-9]+: the accumulator can reach") as err:
        hwq.quantize(graph, 16, calibration=x, input_bits=16)
    assert "int64" in str(err.value)


def test_acc_bound_is_exact_beyond_int64():
    """QLayer.acc_bound used to be numpy int64 and wrapped (8.7e18 for a 7.65e20 bound)."""
    w = np.full((2, 24), 2**15, np.int64)
    layer = QLayer(w, [2**40, -(2**41)], np.ones(2), 1.0, 1.0, "identity", in_max=2**50)
    assert layer.acc_bound == 24 * 2**15 * 2**50 + 2**41
    assert layer.acc_bound > 2**63


def hand_net(layers, fmt):
    return QuantizedNetwork(fmt, tuple(layers), "argmax", QuantSettings(16), None)


def wide_identity_net(k=24):
    """Three identity layers whose layer-2 bound is just above 2^63 (int64 would wrap)."""
    w0 = np.full((k, k), 2**15 - 1, np.int64)
    layers = [QLayer(w0, np.zeros(k), np.ones(k), 1.0, 1.0, "identity"),
              QLayer(w0, np.zeros(k), np.ones(k), 1.0, 1.0, "identity"),
              QLayer(np.full((2, k), 2**15 - 1, np.int64), [0, 0], np.ones(2), 1.0, 1.0, "identity")]
    return hand_net(layers, InputFormat(16, True, 1.0))


def test_reference_sim_and_export_refuse_a_wrapping_network():
    net = wide_identity_net()
    b = python_bounds(net, -(2**15), 2**15 - 1)
    assert b[1] < 2**63 <= b[2]
    x_q = np.full((3, 24), 2**15 - 1)
    for run in (lambda: reference.forward(net, x_q), lambda: hwq.compile(net, "sim")):
        with pytest.raises(InvalidModelError, match=f"layer 2: the accumulator can reach {b[2]}"):
            run()
    with pytest.raises(InvalidModelError, match="layer [12]"):  # 2^53 products refused first
        export_onnx(net)


def test_requantization_bound_is_checked():
    w = np.full((1, 4), 2**30, np.int64)
    rq = Requant([2**20], [3])
    layers = [QLayer(w, [0], np.ones(1), 1.0, 1.0, "relu", 8, rq),
              QLayer(np.ones((1, 1), np.int64), [0], np.ones(1), 1.0, 1.0, "identity")]
    net = hand_net(layers, InputFormat(16, True, 1.0))
    with pytest.raises(InvalidModelError, match="layer 0: requantization"):
        hwq.compile(net, "sim")


def test_codes_beyond_the_format_are_checked_for_what_arrived():
    """The format is safe, a code far outside it would wrap: refused, not wrapped."""
    k = 4
    layers = [QLayer(np.full((2, k), 2**40, np.int64), [0, 0], np.ones(2), 1.0, 1.0, "identity")]
    net = hand_net(layers, InputFormat(8, False, 1.0))
    program = hwq.compile(net, "sim")
    ok = np.full((1, k), 255)
    np.testing.assert_array_equal(program.forward(ok), reference.forward(net, ok))
    big = np.full((1, k), 2**21)
    for run in (lambda: program.forward(big), lambda: reference.forward(net, big)):
        with pytest.raises(InvalidModelError, match="layer 0"):
            run()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bounds_equal_python_integer_formula(data):
    """check_layers == the formula in Python integers, for weights up to int64's edge."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    big = data.draw(st.sampled_from([1, 7, 2**15, 2**31, 2**40, 2**62]))
    k = data.draw(st.integers(1, 30))
    w = rng.integers(-big, big, (3, k), endpoint=True)
    if data.draw(st.booleans()):
        w[0] = big  # a row at the bound
    bias = rng.integers(-big, big, 3, endpoint=True)
    layer = QLayer(w, bias, np.ones(3), 1.0, 1.0, "step")
    peak = data.draw(st.sampled_from([1, 255, 2**15, 2**31]))
    want = max(sum(abs(int(v)) for v in row) * peak + abs(int(bj)) for row, bj in zip(w.tolist(), bias.tolist()))
    assert bounds.accumulator_bound(w, bias, peak) == want
    if want < 2**63:
        assert bounds.check_layer(layer, 0, -peak, peak) == want
    else:
        with pytest.raises(InvalidModelError, match=str(want)):
            bounds.check_layer(layer, 0, -peak, peak)


def test_row_sums_exact_at_int64_edge():
    w = np.array([[-(2**63), 2**63 - 1], [1, -1]], np.int64)
    assert bounds.row_sums(w) == [2**64 - 1, 2]
