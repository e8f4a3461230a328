"""PGD: against an independent plain-numpy PGD on tiny nets, every kept point re-judged by the
numpy reference and on the device's input grid, best-point tracking and bad parameters."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from builders import torch_style_mlp

import hwq
from hwq.attack import FGSM, PGD, make_attack
from hwq.attack import noise as noise_streams
from hwq.errors import UsageError
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference

RNG = np.random.default_rng(5)


def centred_mlp(n_in, hidden, n_out, act):
    """Hidden pre-activations centred on the data (x uniform in [0, 1]), no output bias: the
    decisions vary over the inputs (a random MLP's biases often fix one class)."""
    w1 = RNG.uniform(-1, 1, (hidden, n_in))
    w2 = RNG.uniform(-1, 1, (n_out, hidden))
    return torch_style_mlp(w1, -0.5 * w1.sum(axis=1), w2, np.zeros(n_out), act=act,
                           out="Sigmoid" if n_out == 1 else "Softmax")


def compiled(act="Relu", n_out=10, bits=3, n_in=12, input_bits=8, hidden=9):
    graph = graph_from_model(centred_mlp(n_in, hidden, n_out, act))
    x = RNG.uniform(0, 1, (120, n_in))
    net = hwq.quantize(graph, bits, calibration=x, bounds=(0, 1), act_bits=8, input_bits=input_bits)
    return hwq.compile(net, "sim"), x, reference.predict(net, x)


def plain_surrogate(net, x, y):
    """dL/dx of softmax CE (or sigmoid BCE) at the integer model's operating point, written
    out for one hidden layer (relu: [0 < z < top], top = (2^A - 1) x the activation code's
    real value, where the integer ReLU saturates; sigmoid: s(1-s); step: 1/(1+|z|)^2)."""
    xq = reference.quantize_input(net.input, x)
    accs = reference.trace(net, xq)
    l1, l2 = net.layers
    z1, z2 = accs[0] * l1.acc_scale, accs[1] * l2.acc_scale
    if net.output == "sign":
        delta = (1 / (1 + np.exp(-z2[:, 0])) - y)[:, None]
    else:
        p = np.exp(z2 - z2.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        delta = p
    h_grad = l2.gain * delta @ l2.real_weight
    act = l1.activation
    if act == "relu":
        top = (2**l1.act_bits - 1) * l1.out_scale
        d1 = ((z1 > 0) & (z1 < top)).astype(float)
    elif act == "sigmoid":
        s = 1 / (1 + np.exp(-z1))
        d1 = s * (1 - s)
    else:
        d1 = 1 / (1 + np.abs(z1)) ** 2
    return l1.gain * (h_grad * d1) @ l1.real_weight


def plain_pgd(net, x, y, eps, norm, steps, rel, random_start, seed, lo=0.0, hi=1.0):
    """The same PGD, one epsilon at a time, every row every step, first success kept."""
    n, d = x.shape
    fmt = net.input
    noise = None
    if random_start:  # the documented stream: (seed, eps_k, restart 0, input i), hwq.attack.noise
        key = np.repeat(noise_streams.keys(seed, np.round(eps, 12), 0), n)  # eps as hwq records it
        index = np.tile(np.arange(n), len(eps))
        if norm == "linf":
            noise = 2 * noise_streams.uniform(key, index, d) - 1
        else:
            z = noise_streams.normal(key, index, d + 2)
            noise = (z / np.linalg.norm(z, axis=1, keepdims=True))[:, :d]
    preds = np.empty((len(eps), n), np.int64)
    codes = np.empty((len(eps), n, d), np.int64)
    for k, e in enumerate(eps):
        q = reference.quantize_input(fmt, x)
        best_p, best_c = reference.decide(reference.forward(net, q), net.output), q.copy()
        done = best_p != y
        cur = x.copy()
        if e > 0:
            def judge(points, done=done, best_p=best_p, best_c=best_c):
                c = reference.quantize_input(fmt, np.clip(points, lo, hi))
                p = reference.decide(reference.forward(net, c), net.output)
                new = ~done & (p != y)
                best_p[new], best_c[new] = p[new], c[new]
                done[new] = True
            if noise is not None:
                cur = np.clip(x + e * noise[k * n:(k + 1) * n], lo, hi)
                judge(cur)
            for _ in range(steps):
                g = plain_surrogate(net, cur, y)
                if norm == "linf":
                    cur = cur + rel * e * np.sign(g)
                    cur = np.clip(np.clip(cur, x - e, x + e), lo, hi)
                else:
                    gn = np.linalg.norm(g, axis=1, keepdims=True)
                    cur = cur + rel * e * np.where(gn > 0, g / np.where(gn > 0, gn, 1), 0)
                    delta = cur - x
                    dn = np.linalg.norm(delta, axis=1, keepdims=True)
                    cur = np.clip(x + delta * np.minimum(1, e / np.where(dn > 0, dn, 1)), lo, hi)
                judge(cur)
        preds[k], codes[k] = best_p, best_c
    return preds, codes


@pytest.mark.parametrize("act", ["relu", "sigmoid", "step"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_matches_plain_numpy_pgd(act, norm, random_start):
    onnx_act = {"relu": "Relu", "sigmoid": "Sigmoid", "step": "step"}[act]
    program, x, y = compiled(onnx_act)
    eps = np.array([0.0, 0.03, 0.1, 0.3]) * (1 if norm == "linf" else 3)
    attack = PGD(norm, steps=12, rel_stepsize=0.2, random_start=random_start, seed=3)
    result = hwq.attack(program, x, y, eps, method=attack, bounds=(0, 1))
    preds, codes = plain_pgd(program.net, x, y, eps, norm, 12, 0.2, random_start, 3)
    np.testing.assert_array_equal(result.predictions, preds)
    np.testing.assert_array_equal(result.points, codes)
    assert result.accuracy[-1] < result.accuracy[0]  # the attack does something


@pytest.mark.parametrize("n_out", [1, 10])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_kept_point_is_on_the_grid_and_rejudged(n_out, norm):
    program, x, y = compiled("Relu", n_out=n_out, input_bits=6)
    eps = np.array([0.0, 0.02, 0.1, 0.4])
    result = hwq.attack(program, x, y, eps, method=PGD(norm, steps=10, restarts=2), bounds=(0, 1),
                        batch_size=32)
    fmt = program.net.input
    for k, e in enumerate(eps):
        pts = result.adversarial(k)
        np.testing.assert_array_equal(reference.quantize_input(fmt, pts), result.points[k])
        assert pts.min() >= 0 and pts.max() <= 1
        np.testing.assert_array_equal(reference.predict(program.net, pts), result.predictions[k])
        dist = np.abs(pts - x).max(axis=1) if norm == "linf" else np.linalg.norm(pts - x, axis=1)
        slack = fmt.scale / 2 * (1 if norm == "linf" else np.sqrt(x.shape[1]))
        assert np.all(dist <= e + slack + 1e-12)
        # a pair counted as broken really is broken at its kept point; robust pairs keep x
        robust = result.correct[k]
        np.testing.assert_array_equal(result.points[k][robust],
                                      reference.quantize_input(fmt, x)[robust])
    np.testing.assert_array_equal(result.correct[0], result.clean_correct)


def test_restarts_and_steps_only_help():
    """More restarts (same seed stream: the first run is a prefix) never lose a broken pair."""
    program, x, y = compiled("Sigmoid")
    eps = [0.05, 0.1]
    one = hwq.attack(program, x, y, eps, method=PGD(steps=8, restarts=1, seed=1), bounds=(0, 1))
    three = hwq.attack(program, x, y, eps, method=PGD(steps=8, restarts=3, seed=1), bounds=(0, 1))
    assert np.all(three.correct <= one.correct)


def test_chunking_does_not_change_results_without_random_start():
    program, x, y = compiled()
    a = hwq.attack(program, x, y, [0.05, 0.2], method=PGD(random_start=False, steps=5), bounds=(0, 1))
    b = hwq.attack(program, x, y, [0.05, 0.2], method=PGD(random_start=False, steps=5), bounds=(0, 1),
                   batch_size=7)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.points, b.points)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_strength_gives_the_same_result_alone_or_in_a_longer_list(norm):
    """Issue 16: PGD at 0.05 gave 0.448 alone and 0.444 beside other strengths (the random
    starts were drawn for the whole list, per chunk). Each strength's randomness now comes from
    (seed, eps, restart, input): the same result alone, in a longer list, in other chunks."""
    program, x, y = compiled("Relu", n_in=16)
    attack = PGD(norm, steps=6, restarts=2, seed=4)
    e = 0.05 if norm == "linf" else 0.4
    alone = hwq.attack(program, x, y, [e], method=attack, bounds=(0, 1), diagnostics=False)
    longer = [0.0, e / 3, e, 2 * e, 3 * e]
    within = hwq.attack(program, x, y, longer, method=attack, bounds=(0, 1), diagnostics=False, batch_size=37)
    np.testing.assert_array_equal(within.correct[2], alone.correct[0])
    np.testing.assert_array_equal(within.points[2], alone.points[0])
    assert 0 < alone.accuracy[0] < alone.clean_accuracy  # some inputs break, some do not


@pytest.mark.parametrize("steps", [5, 20])
def test_the_default_step_follows_the_steps_so_pgd_is_at_least_fgsm(steps, monkeypatch):
    """Issue 22: with foolbox's fixed 0.01/0.3 x eps step, 20 steps travel 2/3 eps and PGD was
    weaker than FGSM at every strength (here at 5 and 20 steps: 0.92/0.80/0.68 and
    0.81/0.57/0.31 against FGSM's 0.63/0.34/0.16); the default is now 2.5 eps / steps."""
    monkeypatch.setattr(sys.modules[__name__], "RNG", np.random.default_rng(1))  # the network measured
    program, x, y = compiled("Relu", n_in=16)
    eps = [0.0, 0.02, 0.05, 0.1, 0.2]
    fgsm = hwq.attack(program, x, y, eps, method=FGSM(), bounds=(0, 1), diagnostics=False)
    pgd = hwq.attack(program, x, y, eps, method=PGD(steps=steps), bounds=(0, 1))
    assert pgd.params["rel_stepsize"] == 2.5 / steps
    assert np.all(pgd.accuracy <= fgsm.accuracy) and pgd.accuracy[-1] < fgsm.accuracy[-1]
    assert pgd.diagnostics["flags"] == [] and pgd.diagnostics["pgd_weaker_than_fgsm"]["fgsm"] == "rerun"


def test_one_step_pgd_without_start_is_fgsm():
    """One full-size l-inf step from x is FGSM's point (before quantization), so the same
    decisions."""
    program, x, y = compiled("Relu")
    eps = [0.0, 0.05, 0.2]
    pgd = hwq.attack(program, x, y, eps, method=PGD(steps=1, rel_stepsize=1.0, random_start=False),
                     bounds=(0, 1))
    fgsm = hwq.attack(program, x, y, eps, method=FGSM(), bounds=(0, 1))
    np.testing.assert_array_equal(pgd.correct, fgsm.correct)


def test_records_parameters():
    program, x, y = compiled()
    r = hwq.attack(program, x[:10], y[:10], [0.1], method=make_attack("pgd", norm="l2", steps=3))
    # the default step follows the steps (2.5 eps / steps, Madry et al.), l2 as l-inf
    assert r.attack == "pgd" and r.params["steps"] == 3 and r.params["rel_stepsize"] == 2.5 / 3


@pytest.mark.parametrize("params", [dict(steps=0), dict(restarts=0), dict(rel_stepsize=-1),
                                    dict(restarts=2, random_start=False), dict(norm="l1"),
                                    dict(abs_stepsize=float("nan")), dict(steps=2.5)])
def test_bad_parameters(params):
    with pytest.raises(UsageError):
        PGD(**params)
