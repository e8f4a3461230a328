"""FGSM engine: every judged point re-checked against the numpy reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from builders import random_mlp, torch_style_mlp

import hwq
from hwq.attack import FGSM
from hwq.attack.gradients import FloatGradient, SurrogateGradient, backprop
from hwq.errors import DataError, UsageError
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference
from hwq.ranges import parse_epsilons

RNG = np.random.default_rng(11)


def compiled(act="Relu", n_out=10, bits=4, n_in=20, act_bits=8):
    graph = graph_from_model(random_mlp(RNG, n_in, 12, n_out, act, scale=0.6))
    x = RNG.uniform(0, 1, (300, n_in))
    net = hwq.quantize(graph, bits, calibration=x, bounds=(0, 1), act_bits=act_bits)
    return hwq.compile(net, "sim"), x, reference.predict(net, x)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "step"])
@pytest.mark.parametrize("n_out", [1, 10])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_point_matches_reference(act, n_out, norm):
    program, x, y = compiled(act, n_out)
    eps = np.array([0.0, 0.01, 0.05, 0.2, 1.0])
    result = hwq.attack(program, x, y, eps, method=FGSM(norm), bounds=(0, 1), batch_size=64)
    for k in range(len(eps)):
        x_adv = result.adversarial(k)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        expected = reference.predict(program.net, x_adv)
        np.testing.assert_array_equal(result.predictions[k], expected)
    np.testing.assert_array_equal(result.correct[0], result.clean_correct)
    assert result.clean_accuracy == 1.0  # labels are the model's own predictions
    assert result.accuracy.shape == (5,) and result.success.shape == (5, len(x))


def test_l2_step_length():
    program, x, y = compiled()
    result = hwq.attack(program, x, y, [0.3], method=FGSM("l2"))
    norms = np.linalg.norm(result.adversarial(0) - x, axis=1)
    np.testing.assert_allclose(norms[~result.zero_gradient], 0.3, rtol=1e-5)


def test_linf_step_is_sign():
    program, x, y = compiled()
    result = hwq.attack(program, x, y, [0.1])
    delta = result.adversarial(0) - x
    assert np.all(np.isclose(np.abs(delta), 0.1) | (delta == 0))


def test_zero_gradient_is_reported():
    w1 = np.zeros((4, 6))
    model = torch_style_mlp(w1, np.ones(4), RNG.normal(size=(3, 4)), RNG.normal(size=3))
    graph = graph_from_model(model)
    x = RNG.uniform(0, 1, (20, 6))
    net = hwq.quantize(graph, 4, calibration=x, bounds=(0, 1))
    program = hwq.compile(net)
    y = reference.predict(net, x)
    result = hwq.attack(program, x, y, [0, 0.1, 0.5], bounds=(0, 1))
    assert result.zero_gradient.all()
    assert np.all(result.accuracy == result.clean_accuracy)


def test_backprop_matches_finite_differences():
    """The shared backprop is the gradient of the float model's loss (smooth activations)."""
    graph = graph_from_model(random_mlp(RNG, 5, 7, 3, "Sigmoid", scale=1.0))
    source = FloatGradient(graph)
    x, y = RNG.normal(size=(4, 5)), np.array([0, 1, 2, 1])
    loss, grad = source.value_and_grad(x, y)
    h = 1e-6
    for j in range(5):
        dx = np.zeros_like(x)
        dx[:, j] = h
        numeric = (source.value_and_grad(x + dx, y)[0] - source.value_and_grad(x - dx, y)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, j], numeric, rtol=1e-4, atol=1e-8)


def test_surrogate_equals_float_gradient_on_fine_grid():
    """At 16 bits the surrogate of the integer model is the float model's gradient."""
    graph = graph_from_model(random_mlp(RNG, 8, 10, 4, "Sigmoid", scale=0.5))
    x = RNG.uniform(0, 1, (50, 8))
    net = hwq.quantize(graph, 16, calibration=x, bounds=(0, 1), act_bits=16, input_bits=16)
    program = hwq.compile(net)
    y = reference.predict(net, x)
    g_sur = SurrogateGradient(program).value_and_grad(x, y)[1]
    g_flt = FloatGradient(graph).value_and_grad(x, y)[1]
    np.testing.assert_allclose(g_sur, g_flt, atol=2e-3 * np.abs(g_flt).max())


def test_surrogate_uses_integer_operating_point():
    """``SurrogateGradient`` backpropagates at the integer model's operating point (accumulators
    times scales), and at 2 bits that differs from the float model's gradient. Finite-difference
    checks of the surrogate itself: tests/test_surrogate.py."""
    program, x, y = compiled("Relu", bits=2)
    zs = program.trace(reference.quantize_input(program.net.input, x))
    accs = reference.trace(program.net, reference.quantize_input(program.net.input, x))
    for z, acc, layer in zip(zs, accs, program.net.layers):
        np.testing.assert_allclose(z, acc * layer.acc_scale)
    loss, grad = SurrogateGradient(program).value_and_grad(x, y)
    tops = [(2**layer.act_bits - 1) * layer.out_scale if layer.activation == "relu" else None
            for layer in program.net.layers]
    want_loss, want = backprop([layer.real_weight for layer in program.net.layers], [1.0, 1.0],
                               ["relu", "identity"], zs, y, False, tops)
    np.testing.assert_allclose(grad, want)
    np.testing.assert_allclose(loss, want_loss)
    _, float_grad = FloatGradient(program.net.float_graph).value_and_grad(x, y)
    assert np.mean(np.sign(grad) != np.sign(float_grad)) > 0.01  # different operating points


def test_transfer_attack_runs():
    program, x, y = compiled()
    result = hwq.attack(program, x, y, [0, 0.1], gradient=FloatGradient(program.net.float_graph))
    assert result.gradient == "float"


@pytest.mark.parametrize("text,expected", [("0:0.5:0.005", 101), ("0,0.1,0.3", 3), ("0.2", 1), ("0:1:0.25", 5)])
def test_parse_epsilons(text, expected):
    assert parse_epsilons(text).size == expected


@pytest.mark.parametrize("text", ["-0.1", "0:-1:0.1", "a:b:c", "0:1:0", "nan", "", "0.1,,0.2"])
def test_bad_epsilons(text):
    with pytest.raises(UsageError):
        parse_epsilons(text)


def test_data_shape_mismatch():
    program, x, y = compiled()
    with pytest.raises(DataError, match="features"):
        hwq.attack(program, x[:, :5], y, [0.1])
    with pytest.raises(DataError, match="labels"):
        hwq.attack(program, x, y + 100, [0.1])
