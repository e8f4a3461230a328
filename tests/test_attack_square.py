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


@pytest.mark.parametrize("n_out", [2, 3, 10])
def test_margin_values_are_the_numpy_formula(n_out):
    """The compiled margin equals ``min(s_y - max_{j<y} s_j - 1/2, s_y - max_{j>y} s_j + 1/2)``
    written in numpy, value for value (Square ranks proposals by it)."""
    rng = np.random.default_rng(n_out)
    s = rng.integers(-2**40, 2**40, (400, n_out)).astype(np.float64)
    s[::7] = rng.integers(-2, 3, (len(s[::7]), n_out))  # ties
    y = rng.integers(0, n_out, 400)
    rows, idx = np.arange(400), np.arange(n_out)
    other = np.where(idx[None, :] < y[:, None], s + 0.5, s - 0.5)
    other[rows, y] = -np.inf
    np.testing.assert_array_equal(margin(s, y, False), s[rows, y] - other.max(axis=1))


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


@pytest.mark.parametrize("c,h,w", [(1, 8, 8), (3, 6, 5), (2, 1, 12)])
def test_linf_window_is_the_numpy_step_then_the_device_codes(c, h, w):
    """The fused l-inf iteration (``square.linf_window``) = ``Square._linf_step`` followed by
    ``Judge.codes`` (clip, ``floor(x * inv_scale + 1/2)``, saturate), bit for bit, including
    rows whose window would not change (every sign flipped) and windows on the edges."""
    from hwq.attack.square import linf_window

    rng = np.random.default_rng(c * 100 + h * 10 + w)
    rows = 30
    for inv_scale, qmin, qmax, dtype in ((255.0, 0, 255, np.uint8), (127.0, -127, 127, np.int8),
                                         (65535.0, 0, 65535, np.uint16)):
        lo, hi = (0.0, 1.0) if qmin == 0 else (-1.0, 1.0)
        xs = rng.uniform(lo, hi, (rows, c, h, w))
        es = rng.choice([0.01, 0.05, 0.3], rows)
        sign = rng.choice([-1.0, 1.0], (rows, c))
        cur = np.clip(xs + es[:, None, None, None] * rng.choice([-1.0, 1.0], (rows, c, 1, w)), lo, hi)
        for r0, c0, sh, sw in ((0, 0, 1, 1), (h - 1, w - 3, 1, 3), (0, 1, h, 2)):
            cur_k = cur.copy()
            cur_k[::3, :, r0:r0 + sh, c0:c0 + sw] = np.clip(  # a third of the rows: the proposal is no change
                xs[::3, :, r0:r0 + sh, c0:c0 + sw] + es[::3, None, None, None] * sign[::3, :, None, None], lo, hi)
            want = Square._linf_step(sign[:, :, None, None], xs, cur_k, es[:, None, None, None], r0, c0, sh, sw,
                                     lo, hi)
            want_codes = np.clip(np.floor(np.clip(want, lo, hi) * inv_scale + 0.5), qmin, qmax).astype(dtype)
            new, codes = np.empty_like(cur_k), np.empty(cur_k.shape, dtype)
            linf_window(xs, cur_k, es, sign, r0, c0, sh, sw, lo, hi, inv_scale, float(qmin), float(qmax), new, codes)
            np.testing.assert_array_equal(new, want)
            np.testing.assert_array_equal(codes, want_codes)
