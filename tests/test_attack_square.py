"""Square attack: only queries the program, every query on the device's input grid inside
the ball, budgets and query counts, the margin, and a program without trace (a device)."""

from __future__ import annotations

import numpy as np
import pytest
from test_attack_pgd import compiled

import hwq
from hwq.attack import Square
from hwq.attack.base import margin
from hwq.attack.square import image_shape, p_schedule
from hwq.errors import UsageError
from hwq.quant import reference


class Recording:
    """A device-like program: ``forward``/``decide`` only (no trace), recording every query."""

    def __init__(self, program):
        self.net, self.target, self.inner = program.net, "recording", program
        self.artifacts, self.report, self.seen = {}, {}, []

    def forward(self, x_q):
        self.seen.append(np.array(x_q))
        return self.inner.forward(x_q)

    def decide(self, scores):
        return self.inner.decide(scores)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("n_in", [16, 12])  # a 4x4 image, a 1x12 row
def test_every_query_on_the_grid_and_in_the_ball(norm, n_in):
    program, x, y = compiled("Relu", n_in=n_in, input_bits=6)
    device = Recording(program)
    eps = [0.0, 0.1, 0.3] if norm == "linf" else [0.0, 0.3, 1.0]
    result = hwq.attack(device, x, y, eps, method=Square(norm, queries=60), bounds=(0, 1))
    fmt = program.net.input
    pts = np.concatenate(device.seen).astype(np.float64)
    assert np.all(pts == np.round(pts)) and pts.min() >= fmt.qmin and pts.max() <= fmt.qmax
    assert np.all(pts * fmt.scale <= 1 + 1e-12)
    assert result.gradient == "none" and result.zero_gradient.sum() == 0
    # queries: at most the budget per pair, and the counts add up to what the device answered
    assert result.queries.max() <= 60 and np.all(result.queries[0] == 1)
    n_queries = sum(len(s) for s in device.seen)
    assert n_queries == len(x) + (result.queries[1:] - 1).sum()
    slack = fmt.scale / 2 * (1 if norm == "linf" else np.sqrt(n_in))
    for k, e in enumerate(eps):
        kept = result.adversarial(k)
        np.testing.assert_array_equal(reference.predict(program.net, kept), result.predictions[k])
        dist = np.abs(kept - x).max(axis=1) if norm == "linf" else np.linalg.norm(kept - x, axis=1)
        assert np.all(dist <= e + slack + 1e-9)
    assert result.accuracy[2] < result.accuracy[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_strength_gives_the_same_result_alone_or_in_a_longer_list(norm):
    """Issue 16: per-strength randomness must not depend on the list (nor on the chunking)."""
    program, x, y = compiled("Relu", n_in=16)
    attack = Square(norm, queries=60, seed=2)
    e = 0.1 if norm == "linf" else 0.6
    alone = hwq.attack(program, x, y, [e], method=attack, bounds=(0, 1), diagnostics=False)
    within = hwq.attack(program, x, y, [0.0, e / 2, e, 2 * e], method=attack, bounds=(0, 1),
                        diagnostics=False, batch_size=45)
    np.testing.assert_array_equal(within.correct[2], alone.correct[0])
    np.testing.assert_array_equal(within.points[2], alone.points[0])
    np.testing.assert_array_equal(within.queries[2], alone.queries[0])
    assert 0 < alone.accuracy[0] < alone.clean_accuracy


def test_broken_pairs_stop_and_robust_pairs_spend_the_budget():
    program, x, y = compiled("Relu", n_in=16)
    result = hwq.attack(program, x, y, [0.05, 0.5], method=Square(queries=40), bounds=(0, 1))
    robust = result.correct
    assert np.all(result.queries[robust] == 40)
    assert np.all(result.queries[~robust & result.clean_correct[None]] <= 40)
    assert result.accuracy[1] <= result.accuracy[0]


@pytest.mark.parametrize("n_out", [1, 4])
def test_margin_sign_is_the_reference_decision(n_out):
    rng = np.random.default_rng(0)
    scores = rng.integers(-3, 4, (500, n_out))
    y = rng.integers(0, 2 if n_out == 1 else n_out, 500)
    decision = reference.decide(scores, "sign" if n_out == 1 else "argmax")
    np.testing.assert_array_equal(margin(scores, y, n_out == 1) > 0, decision == y)


def test_seeded_and_parameters_recorded():
    program, x, y = compiled("step", n_in=16)
    r = hwq.attack(program, x, y, [0.1], method=Square(queries=200, seed=4), bounds=(0, 1))
    assert r.params == {"norm": "linf", "queries": 200, "p_init": 0.3, "seed": 4}
    again = hwq.attack(program, x, y, [0.1], method=Square(queries=200, seed=4), bounds=(0, 1))
    np.testing.assert_array_equal(r.predictions, again.predictions)


def test_schedule_and_shape():
    assert p_schedule(0.8, 0, 1000) == 0.8 and p_schedule(0.8, 3, 1000) == 0.4
    assert p_schedule(0.8, 999, 1000) == 0.8 / 512
    assert image_shape(784) == (28, 28) and image_shape(64) == (8, 8) and image_shape(2) == (1, 2)


@pytest.mark.parametrize("params", [dict(queries=0), dict(p_init=0), dict(p_init=2), dict(norm="l1")])
def test_bad_parameters(params):
    with pytest.raises(UsageError):
        Square(**params)
