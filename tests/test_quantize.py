"""Quantization: scheme levels, QAT grids kept exactly, PTQ scales, the report."""

from __future__ import annotations

import numpy as np
import pytest
from builders import torch_style_mlp

from hwq.errors import UsageError
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import input_format, quantize, requant_for
from hwq.quant.schemes import SCHEMES, get_scheme

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("bits,levels", [(1, [-1, 1]), (2, [-1, 0, 1]), (3, [-3, -2, -1, 0, 1, 2, 3])])
def test_narrow_levels(bits, levels):
    assert get_scheme("narrow").levels(bits).tolist() == levels


@pytest.mark.parametrize("bits,levels", [(1, [-1, 1]), (2, [-3, -1, 1, 3])])
def test_uniform_levels_have_no_zero(bits, levels):
    assert get_scheme("uniform").levels(bits).tolist() == levels


def test_rounding_rules():
    narrow, uniform = get_scheme("narrow"), get_scheme("uniform")
    assert narrow.to_codes(np.array([0.5, 1.5, -0.5, -2.5, 99]), 4).tolist() == [0, 2, 0, -2, 7]
    assert narrow.to_codes(np.array([0.0, -0.0, -1e-9]), 1).tolist() == [1, 1, -1]
    assert uniform.to_codes(np.array([0.0, 1.9, 2.0, -2.0, 3.9, 100]), 2).tolist() == [1, 1, 3, -3, 3, 3]


@pytest.mark.parametrize("name", sorted(SCHEMES))
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 16])
def test_codes_within_levels(name, bits):
    s = get_scheme(name)
    codes = s.to_codes(RNG.normal(scale=2 * s.max_code(bits), size=1000), bits)
    assert set(codes.tolist()) <= set(s.levels(bits).tolist())


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bits_out_of_range(bits):
    with pytest.raises(UsageError, match="1..16"):
        get_scheme("narrow").max_code(bits)


def test_pow2_scale_is_power_of_two():
    scale = get_scheme("pow2").ptq_scale(RNG.normal(size=(5, 7)), 4, axis=0)
    assert np.all(np.log2(scale) == np.round(np.log2(scale)))


def mlp_graph(w1, b1, w2, b2, act="Relu"):
    return graph_from_model(torch_style_mlp(w1, b1, w2, b2, act=act))


@pytest.mark.parametrize("scheme", ["narrow", "uniform"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_qat_weights_kept_exactly(scheme, bits):
    s = get_scheme(scheme)
    unit = s.unit_scale(bits)
    w1 = RNG.choice(s.levels(bits), size=(6, 5)) * unit
    w2 = RNG.choice(s.levels(bits), size=(3, 6)) * unit
    graph = mlp_graph(w1, np.zeros(6), w2, np.zeros(3))
    net = quantize(graph, QuantSettings(bits, scheme), RNG.uniform(0, 1, (50, 5)), (0, 1))
    assert all(r.on_grid for r in net.report if r.tensor.endswith("weight"))
    np.testing.assert_array_equal(net.layers[0].weight, np.rint(w1 / unit))
    assert np.max(np.abs(net.layers[0].real_weight - w1)) < 1e-6


def test_ptq_report_and_per_channel():
    w1 = RNG.normal(size=(8, 5)) * np.arange(1, 9)[:, None]
    graph = mlp_graph(w1, RNG.normal(size=8), RNG.normal(size=(3, 8)), RNG.normal(size=3))
    x = RNG.uniform(0, 1, (100, 5))
    per_tensor = quantize(graph, QuantSettings(3, "narrow"), x, (0, 1))
    per_channel = quantize(graph, QuantSettings(3, "narrow", per_channel=True), x, (0, 1))
    err = {r.tensor: r.max_abs_error for r in per_tensor.report}
    err_pc = {r.tensor: r.max_abs_error for r in per_channel.report}
    assert err_pc["layer0.weight"] < err["layer0.weight"]
    assert len(set(per_channel.layers[0].weight_scale)) == 8
    assert len(set(per_channel.layers[1].weight_scale)) == 1  # argmax needs one output scale
    assert not any(r.on_grid for r in per_tensor.report if r.tensor.endswith("weight"))


def test_input_formats():
    img = input_format(np.zeros((1, 3)), (0.0, 1.0), 8)
    assert (img.signed, img.inv_scale, img.qmax) == (False, 255.0, 255)
    sp = input_format(np.array([[-1.7, 1.2]]), None, 8)
    assert sp.signed and sp.inv_scale == 64.0  # 1.7 needs 1 integer bit: s8 with 6 fraction bits
    codes = reference.quantize_input(sp, np.array([[-1.7, 1.2, 5.0, -5.0]]))
    assert codes.tolist() == [[-109, 77, 127, -128]]


def test_requant_multiplier():
    rq = requant_for(np.array([0.25, 0.3, 3.0]), 1000)
    np.testing.assert_array_equal(rq.multiplier[0], 1)  # a power of two is a pure shift
    assert rq.shift[0] == 2
    assert abs(rq.multiplier[1] / 2.0 ** rq.shift[1] - 0.3) < 2**-15


def test_calibration_feature_mismatch():
    graph = mlp_graph(RNG.normal(size=(4, 5)), np.zeros(4), RNG.normal(size=(2, 4)), np.zeros(2))
    with pytest.raises(UsageError, match="features"):
        quantize(graph, QuantSettings(4), np.zeros((3, 7)), (0, 1))


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "step"])
def test_16_bit_weights_track_float(act):
    """With 16-bit weights and activations the integer model agrees with the float model."""
    w1, b1 = RNG.normal(size=(20, 10)) * 0.5, RNG.normal(size=20) * 0.5
    w2, b2 = RNG.normal(size=(4, 20)) * 0.5, RNG.normal(size=4) * 0.5
    graph = mlp_graph(w1, b1, w2, b2, act=act)
    x = RNG.uniform(0, 1, (2000, 10))
    net = quantize(graph, QuantSettings(16, act_bits=16, input_bits=16), x, (0, 1))
    from hwq.attack.gradients import FloatGradient

    float_pred = FloatGradient(graph).forward(x)[-1].argmax(axis=1)
    assert np.mean(reference.predict(net, x) == float_pred) > 0.99


def test_hidden_layer_without_activation():
    """Two dense layers in a row: the accumulator (one scale) feeds the next layer."""
    from builders import make_model
    from onnx import helper

    from hwq.attack.gradients import FloatGradient

    inits = dict(w1=RNG.normal(size=(6, 8)).astype(np.float32), b=np.ones(8, np.float32),
                 w2=RNG.normal(size=(8, 5)).astype(np.float32), w3=RNG.normal(size=(5, 3)).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["a"]), helper.make_node("Add", ["a", "b"], ["a2"]),
             helper.make_node("MatMul", ["a2", "w2"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "w3"], ["scores"])]
    graph = graph_from_model(make_model(nodes, inits, 6))
    x = RNG.uniform(0, 1, (500, 6))
    net = quantize(graph, QuantSettings(16, "narrow", per_channel=True, act_bits=16), x, (0, 1))
    assert len(set(net.layers[0].weight_scale)) == 1 and net.layers[1].in_max == net.layers[0].acc_bound
    float_pred = FloatGradient(graph).forward(x)[-1].argmax(axis=1)
    assert np.mean(reference.predict(net, x) == float_pred) > 0.99
