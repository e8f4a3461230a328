"""The surrogate gradient against independent computations: central finite differences of
the straight-through function it claims to differentiate (numpy, written here from the
formulas), the ReLU's ``2^A - 1`` saturation, the float model's gradient at low bits, and the
loihi program's mapped (rounded) weights (issue 8: tests that could not fail)."""

from __future__ import annotations

import numpy as np
import pytest
from factories import random_net

import hwq
from hwq import ir
from hwq.attack.gradients import FloatGradient, SurrogateGradient, backprop
from hwq.ir import activations
from hwq.quant.reference import quantize_input


def straight_through_loss(program, weights, tops, x, y, delta):
    """Cross-entropy of the straight-through surrogate at ``x + delta``: every layer's
    pre-activation is the program's own (integer) one at ``x`` plus the real-weight
    linearization of the change, ``z_l = z_l(x) + g_l (h_{l-1}(x+delta) - h_{l-1}(x)) W_l^T``,
    with ``h = clip(z, 0, top)`` (relu) or ``sigmoid(z)``."""
    net = program.net
    zs0 = program.trace(quantize_input(net.input, x))
    h_now, h_base = x + delta, x
    z = None
    for i, layer in enumerate(net.layers):
        z = zs0[i] + layer.gain * (h_now - h_base) @ weights[i].T
        if i + 1 == len(net.layers):
            break
        z_base = zs0[i]
        if layer.activation == "relu":
            top = np.inf if tops[i] is None else tops[i]
            h_now, h_base = np.clip(z, 0, top), np.clip(z_base, 0, top)
        else:
            h_now, h_base = activations.sigmoid(z), activations.sigmoid(z_base)
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def finite_differences(program, weights, tops, x, y, step=1e-6):
    grad = np.zeros_like(x)
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = step
        up = straight_through_loss(program, weights, tops, x, y, e)
        down = straight_through_loss(program, weights, tops, x, y, -e)
        grad[:, j] = (up - down) / (2 * step)
    return grad


def mlp(seed, hidden, n_in=12, n_hidden=16, n_out=4):
    rng = np.random.default_rng(seed)
    nodes = (ir.Affine(rng.normal(0, 1.5 / np.sqrt(n_in), (n_hidden, n_in)), rng.normal(0, 0.3, n_hidden)),
             ir.Activation(hidden),
             ir.Affine(rng.normal(0, 1 / np.sqrt(n_hidden), (n_out, n_hidden)), rng.normal(0, 0.3, n_out)))
    return ir.Graph((n_in,), nodes, ir.Output("softmax")), rng


def away_from_kinks(program, tops, x, margin=1e-3):
    """Rows whose hidden pre-activations are not at a ReLU kink (0 or the top)."""
    z = program.trace(quantize_input(program.net.input, x))[0]
    top = tops[0] if tops[0] is not None else np.inf
    return np.all((np.abs(z) > margin) & (np.abs(z - top) > margin), axis=1)


@pytest.mark.parametrize("hidden, act_bits", [("relu", 8), ("relu", 2), ("sigmoid", 6)])
def test_surrogate_equals_finite_differences(hidden, act_bits):
    graph, rng = mlp(1, hidden)
    x_cal = rng.uniform(0, 1, (200, 12))
    net = hwq.quantize(graph, 4, calibration=x_cal, bounds=(0.0, 1.0), act_bits=act_bits)
    program = hwq.compile(net, "sim")
    source = SurrogateGradient(program)
    x, y = rng.uniform(0, 1, (30, 12)), rng.integers(0, 4, 30)
    keep = away_from_kinks(program, source.tops, x)
    x, y = x[keep], y[keep]
    loss, grad = source.value_and_grad(x, y)
    fd = finite_differences(program, source.weights, source.tops, x, y)
    np.testing.assert_allclose(loss, straight_through_loss(program, source.weights, source.tops, x, y, 0),
                               rtol=1e-12)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)
    if hidden == "relu" and act_bits == 2:  # the wrong surrogate (no saturation) is caught
        saturated = program.trace(quantize_input(net.input, x))[0] > source.tops[0]
        assert saturated.any()
        _, unclipped = backprop(source.weights, source.gains, source.acts,
                                program.trace(quantize_input(net.input, x)), y, False)
        assert not np.allclose(unclipped, fd, rtol=1e-4, atol=1e-7)


def test_fgsm_direction_is_the_sign_of_the_surrogate_gradient():
    graph, rng = mlp(2, "relu")
    x_cal = rng.uniform(0, 1, (200, 12))
    net = hwq.quantize(graph, 3, calibration=x_cal, bounds=(0.0, 1.0))
    program = hwq.compile(net, "sim")
    x, y = rng.uniform(0.2, 0.8, (40, 12)), rng.integers(0, 4, 40)
    source = SurrogateGradient(program)
    _, grad = source.value_and_grad(x, y)
    fd = finite_differences(program, source.weights, source.tops, x, y)
    big = np.abs(fd) > 1e-4
    assert np.array_equal(np.sign(grad)[big], np.sign(fd)[big])
    eps = 0.01
    result = hwq.attack(program, x, y, [eps], bounds=(0.0, 1.0), gradient=source)
    assert result.accuracy.shape[0] == 1


def test_surrogate_differs_from_the_float_gradient_at_low_bits():
    """At 1-2 weight bits the integer operating point and weights differ from the float
    model's, and so does the gradient's sign on a good share of the inputs."""
    graph, rng = mlp(3, "relu")
    x_cal = rng.uniform(0, 1, (200, 12))
    x, y = rng.uniform(0, 1, (200, 12)), rng.integers(0, 4, 200)
    _, g_float = FloatGradient(graph).value_and_grad(x, y)
    for bits in (1, 2):
        net = hwq.quantize(graph, bits, calibration=x_cal, bounds=(0.0, 1.0), act_bits=2)
        _, g_sur = SurrogateGradient(hwq.compile(net, "sim")).value_and_grad(x, y)
        assert np.mean(np.sign(g_sur) != np.sign(g_float)) > 0.05
    net = hwq.quantize(graph, 16, calibration=x_cal, bounds=(0.0, 1.0), act_bits=16, input_bits=16)
    _, g16 = SurrogateGradient(hwq.compile(net, "sim")).value_and_grad(x, y)
    assert np.mean(np.sign(g16) != np.sign(g_float)) < 0.02  # at 16 bits they nearly agree


def test_loihi_surrogate_uses_the_mapped_weights():
    """A forced deep shift makes the mapping round the weights to multiples of 2^k: the
    surrogate backpropagates those, not the network's codes, and equals finite differences
    of the straight-through function built on them (no ReLU saturation on Loihi)."""
    pytest.importorskip("hwq_targets.loihi")
    from hwq_targets.loihi import LoihiTarget

    rng = np.random.default_rng(7)
    net = random_net(rng, 10, [8], ["relu"], 127, out=4)
    program = next(p for r in range(9, 16)
                   if (p := LoihiTarget().compile(net, shifts=[r, None])).mapping.layers[0].weight_round > 0)
    lm = program.mapping.layers[0]
    source = SurrogateGradient(program)
    want = (np.rint(net.layers[0].weight / 2.0**lm.weight_round) * 2.0**lm.weight_round
            * net.layers[0].weight_scale[:, None])
    np.testing.assert_array_equal(source.weights[0], want)
    assert not np.array_equal(source.weights[0], net.layers[0].real_weight)
    assert source.tops == [None, None]
    x = rng.uniform(-0.9, 0.9, (12, 10))
    y = rng.integers(0, 4, 12)
    keep = away_from_kinks(program, source.tops, x)
    _, grad = source.value_and_grad(x[keep], y[keep])
    fd = finite_differences(program, source.weights, source.tops, x[keep], y[keep])
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)
