"""Attacks on truenorth CNNs (issue 21): FGSM, PGD, Square and a worst-case suite on a step CNN
and a graded (ReLU) CNN mapped onto TrueNorth cores, rate-coded (exact). The decisions the attack
kept at its points are the integer reference's there, accuracy falls with the strength, and the
gradients are the surrogate's through the program's own trace. With ``encoding=stochastic`` the
judged spikes are random draws while the surrogate follows their expectation: recorded here."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.truenorth import TrueNorthTarget
from test_truenorth_cnn import cnn, relu_cnn

import hwq
from hwq.attack import make_attack, make_suite
from hwq.attack.gradients import SurrogateGradient, default_gradient
from hwq.quant import reference

TN = TrueNorthTarget()
PARAMS = {"fgsm": {}, "pgd": {"steps": 6}, "square": {"queries": 40}}


def networks():
    return {"step cnn": (cnn(np.random.default_rng(1), shape=(1, 8, 8)), (0.0, 1.0)),
            "relu cnn": (relu_cnn(np.random.default_rng(41), shifts=(0, 1, 2)), (0.0, 3.0))}


def setup(name, n=24, **options):
    net, bounds = networks()[name]
    program = TN.compile(net, fidelity_samples=0, **options)
    rng = np.random.default_rng(7)
    x = rng.uniform(*bounds, (n, net.n_features))
    y = program.decide(program.forward(reference.quantize_input(net.input, x)))
    return net, program, x, y, bounds


def judged_points(result, k, net):
    if result.points is not None:
        return result.points[k]
    return reference.quantize_input(net.input, result.adversarial(k))


@pytest.mark.parametrize("attack", list(PARAMS) + ["suite"])
@pytest.mark.parametrize("name", ["step cnn", "relu cnn"])
def test_attacks_on_truenorth_cnns_are_judged_by_the_mapped_cores(name, attack):
    net, program, x, y, bounds = setup(name)
    assert program.exact
    span = bounds[1] - bounds[0]
    eps = [0.0, 0.1 * span, 0.5 * span]
    method = make_suite("fgsm,pgd,square", steps=6, queries=40) if attack == "suite" else \
        make_attack(attack, **PARAMS[attack])
    result = hwq.attack(program, x, y, eps, method=method, bounds=bounds, diagnostics=False)
    assert result.target == "truenorth" and result.accuracy[0] == 1
    assert result.accuracy[-1] < result.accuracy[0]
    assert np.all(np.diff(result.accuracy) <= 0)  # worst-case over nested balls: falls with eps
    for member in result.members or (result,):
        for k in range(len(eps)):  # the decisions kept are the integer reference's at the judged points
            codes = judged_points(member, k, net)
            ref = reference.decide(reference.forward(net, codes), net.output)
            np.testing.assert_array_equal(member.predictions[k], ref)
            np.testing.assert_array_equal(member.correct[k], ref == y)
    if result.members:  # the suite: an input is robust only where every member failed
        assert len(result.members) == 3
        np.testing.assert_array_equal(result.correct, np.logical_and.reduce([m.correct for m in result.members]))
    if attack in ("fgsm", "pgd"):
        assert result.gradient == "surrogate" and not result.zero_gradient.all()


def test_the_gradient_is_the_surrogate_through_the_program_s_trace():
    """The default gradient follows the truenorth program itself (its ``trace``: the accumulators
    the cores compute); for a rate-coded exact program that is the reference network's gradient."""
    from hwq.target.protocol import ReferenceProgram

    net, program, x, y, _ = setup("relu cnn", n=8)
    grad = default_gradient(program)
    assert isinstance(grad, SurrogateGradient) and grad.program is program
    codes = reference.quantize_input(net.input, x)
    for acc, ref in zip(program.mapped_accs(codes), reference.trace(net, codes)):
        np.testing.assert_array_equal(acc, ref)
    v, g = grad.value_and_grad(x, y)
    v_ref, g_ref = SurrogateGradient(ReferenceProgram(net)).value_and_grad(x, y)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-9)
    assert np.abs(g).sum() > 0


def test_stochastic_encoding_gradients_follow_the_expectation_and_judging_draws_per_frame():
    """``encoding=stochastic`` (2-bit codes as Bernoulli spikes over 3 ticks): the surrogate's
    operating point is the spike counts' expectation (the codes themselves), so every gradient
    attack uses one deterministic gradient (there is no expectation-over-randomness option); the
    judged decisions are random draws keyed by (seed, frame, tick), so the same codes judged at
    another frame position may be decided otherwise. Attacks still run and judge on the cores."""
    net, program, x, _, bounds = setup("relu cnn", encoding="stochastic")
    assert not program.exact and any("Bernoulli" in a for a in program.report["approximations"])
    codes = reference.quantize_input(net.input, x)
    for acc, ref in zip(program.mapped_accs(codes), reference.trace(net, codes)):
        np.testing.assert_array_equal(acc, ref)  # the expectation: the reference's accumulators
    forward = program.decide(program.forward(codes))
    again = program.decide(program.forward(codes[::-1]))[::-1]  # the same codes, other frames
    ref = reference.decide(reference.forward(net, codes), net.output)
    assert not np.array_equal(forward, ref) and not np.array_equal(forward, again)
    result = hwq.attack(program, x, ref, [0.0, 1.5], method=make_attack("pgd", steps=6), bounds=bounds)
    assert result.gradient == "surrogate" and result.accuracy[1] < result.accuracy[0] < 1
    # the diagnostics say so: judged on an approximate (random) program, no expectation taken
    assert "approximate_target" in result.diagnostics["flags"]
    assert any("Bernoulli" in a for a in result.diagnostics["approximate_target"]["approximations"])
    from hwq.cli.core import flag_text

    assert "no EOT" in flag_text("approximate_target", result.diagnostics)
    exact = setup("relu cnn")[1]
    assert exact.exact and "approximate_target" not in hwq.attack(
        exact, x, ref, [0.1], method=make_attack("fgsm"), bounds=bounds).diagnostics["flags"]
