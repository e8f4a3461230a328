"""The geometric model, its Monte Carlo check and the critical attack strength."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq.errors import UsageError
from hwq.study.analysis import critical as cr
from hwq.study.analysis import geometry as g
from hwq.study.analysis import montecarlo as mc

PAIRS = [(2, 2), (3, 4), (1, 5)]  # (q, n) of the paper's Fig. 2


def trapezoid(y, x):
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def h_of(q, n):
    return float(g.inradius(g.edge_length(q, n), n))


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, v, s_",
    [
        (1, lambda s: s, lambda s: 2.0),  # segment: two end points
        (2, lambda s: math.sqrt(3) / 4 * s**2, lambda s: 3 * s),  # equilateral triangle
        (3, lambda s: s**3 / (6 * math.sqrt(2)), lambda s: math.sqrt(3) * s**2),  # tetrahedron
    ],
)
def test_volume_and_surface_match_known_shapes(n, v, s_):
    for s in (0.3, 1.0, 2.5):
        assert g.volume(s, n) == pytest.approx(v(s), rel=1e-12)
        assert g.surface(s, n) == pytest.approx(s_(s), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2000), st.floats(1e-3, 100.0))
def test_inradius_is_n_v_over_s(n, s):
    assert n * np.exp(g.log_volume(s, n) - g.log_surface(s, n)) == pytest.approx(
        g.inradius(s, n), rel=1e-9
    )
    assert g.mean_distance_paper(s, n) == pytest.approx(g.inradius(s, n) / n, rel=1e-9)
    assert g.mean_distance_paper(s, n) == pytest.approx(s / math.sqrt(2 * n**3 * (n + 1)))


def test_edge_length_and_eq8():
    assert g.edge_length(3, 16) == pytest.approx(0.5)
    assert g.edge_length(3, 2, large_n=False) == pytest.approx(0.25)  # max(2^-2, sqrt2/8)
    n, q = np.array([10, 100, 784]), np.array([1, 4, 10])
    s = g.edge_length(q, n)
    assert np.allclose(g.mean_distance_bits(q, n), s / (math.sqrt(2) * n**2))


@pytest.mark.parametrize("q, n", PAIRS + [(1, 784), (10, 784)])
def test_density_and_distribution(q, n):
    h = h_of(q, n)
    e = np.linspace(0, h, 200_001)
    f = g.density(e, h, n)
    assert trapezoid(f, e) == pytest.approx(1.0, abs=1e-5)  # trapezoid error at n = 784
    assert trapezoid(e * f, e) == pytest.approx(h / (n + 1), rel=1e-4)
    assert g.distribution(0.0, h, n) == 0.0 and g.distribution(h, h, n) == 1.0
    assert g.distribution(-1.0, h, n) == 0.0 and g.distribution(2 * h, h, n) == 1.0
    assert g.density(-0.1 * h, h, n) == 0.0 and g.density(1.1 * h, h, n) == 0.0
    mid = np.linspace(0.1, 0.4, 5) * h
    dF = (g.distribution(mid + 1e-9 * h, h, n) - g.distribution(mid - 1e-9 * h, h, n)) / (2e-9 * h)
    assert np.allclose(dF, g.density(mid, h, n), rtol=1e-4)


def test_relative_accuracy_bound():
    h, n = 0.2, 3
    eps = np.array([0.0, 0.05, 0.1, 0.2, 0.3])
    assert np.allclose(g.relative_accuracy_bound(eps, h, n), [1, 0.75**3, 0.5**3, 0, 0])
    q, n = 2, 784
    e_inf = np.linspace(0, 0.01, 11)
    expect = g.relative_accuracy_bound(e_inf * 28.0, h_of(q, n), n)
    assert np.array_equal(g.relative_accuracy_bound_linf(e_inf, n, q), expect)


def test_large_n_does_not_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for q in range(1, 11):
            m = g.model_summary(784, q)
            assert all(math.isfinite(v) for v in m.values())
            assert m["inradius_nV_over_S"] == pytest.approx(m["inradius"], rel=1e-9)
            assert m["mean_distance_exact"] == pytest.approx(m["inradius"] / 785)
            assert m["linf_bound_zero"] == pytest.approx(m["inradius"] / 28)


# --- Monte Carlo ------------------------------------------------------------------------------


def regular_simplex(n, s):
    """Vertices s / sqrt(2) e_i in R^(n+1): a regular n-simplex of edge s."""
    return s / math.sqrt(2) * np.eye(n + 1)


def distance_to_face(p, face):
    base, span = face[0], (face[1:] - face[0]).T
    coef = np.linalg.lstsq(span, p - base, rcond=None)[0]
    return np.linalg.norm(p - base - span @ coef)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_face_distance_is_barycentric_weight_times_height(n):
    s = 0.7
    verts = regular_simplex(n, s)
    lam = mc.sample_barycentric(n, 20, np.random.default_rng(n))
    for row in lam:
        p = row @ verts
        got = [distance_to_face(p, np.delete(verts, i, axis=0)) for i in range(n + 1)]
        assert np.allclose(got, row * (n + 1) * g.inradius(s, n), rtol=1e-10)


@pytest.mark.parametrize("q, n", PAIRS)
def test_monte_carlo_mean_matches_h_over_n_plus_1(q, n):
    r = mc.mean_agreement(q, n, 2_000_000, np.random.default_rng(2021))
    assert abs(r["abs_error"]) < 5e-4  # three decimals
    assert abs(r["abs_error"]) < 4 * r["stderr"]
    assert abs(r["mean_mc"] - r["mean_paper_V_over_S"]) > 10 * r["stderr"]  # V/S is only approx


def test_monte_carlo_chunks_large_n():
    n, h = 784, h_of(1, 784)
    d = mc.sample_distances(h, n, 12_000, np.random.default_rng(0))  # three chunks
    assert d.shape == (12_000,) and np.all((d >= 0) & (d <= h))
    assert abs(d.mean() - h / (n + 1)) < 5 * d.std() / math.sqrt(d.size)


def test_seeded_generator_is_reproducible():
    a = mc.simulate(2, 2, 1000, np.random.default_rng(7))
    b = mc.simulate(2, 2, 1000, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_kolmogorov_tail_known_values():
    x = np.array([0.0, 1.2238, 1.3581, 1.6276])
    assert np.allclose(mc.kolmogorov_sf(x), [1.0, 0.10, 0.05, 0.01], atol=2e-4)


def test_ks_statistic_by_hand():
    r = mc.ks_test([0.5], lambda x: x)
    assert r.statistic == 0.5 and r.size == 1


@pytest.mark.parametrize("q, n", PAIRS)
def test_ks_accepts_model_and_rejects_uniform(q, n):
    h = h_of(q, n)
    d = mc.simulate(q, n, 20_000, np.random.default_rng(q * 10 + n))
    assert mc.ks_test_model(d, h, n).pvalue > 0.01
    assert mc.ks_test(d, lambda e: np.clip(e / h, 0, 1)).pvalue < 1e-6


# --- critical strength ------------------------------------------------------------------------

BITS = np.arange(1, 11)
EPS = np.round(np.arange(101) * 0.005, 3)
EPS_C = 0.0123


def synthetic_sweep():
    """Slope over bits 0.1 (EPS_C - eps): more bits help below EPS_C, hurt above; zero past 0.1."""
    base = 0.9 * np.clip(1 - EPS / 0.1, 0, 1)
    slope = 0.1 * (EPS_C - EPS)
    acc = base + np.outer(BITS - BITS.mean(), slope)
    acc[:, EPS >= 0.1] = 0.0  # every curve at zero: variance exactly 0
    return acc


def test_min_variance_excludes_the_all_zero_regime():
    acc = synthetic_sweep()
    trap = cr.min_variance_strength(acc, BITS, EPS, chance=-1.0, margin=0.0)
    assert trap.eps_linf >= 0.1  # the degenerate answer the restriction exists for
    got = cr.min_variance_strength(acc, BITS, EPS, chance=0.1, n_features=784)
    assert got == cr.CriticalStrength(0.01, 0.01 * 28, "min-variance", 2)


def test_slope_crossing_interpolates():
    acc = synthetic_sweep()
    assert np.allclose(cr.bit_slopes(acc, BITS), [np.polyfit(BITS, c, 1)[0] for c in acc.T])
    got = cr.slope_crossing_strength(acc, BITS, EPS, n_features=2)
    assert got.eps_linf == pytest.approx(EPS_C, abs=1e-12)
    assert got.eps_l2 == pytest.approx(EPS_C * math.sqrt(2))
    assert (got.definition, got.index) == ("slope-crossing", 2)
    same = cr.critical_strength(acc, BITS, EPS, definition="slope-crossing", chance=0.1)
    assert same.eps_linf == pytest.approx(EPS_C)


def test_none_when_nothing_qualifies():
    helps = 0.5 + np.outer(BITS, np.full(EPS.size, 0.01))  # more bits always help
    assert cr.slope_crossing_strength(helps, BITS, EPS) is None
    zeros = np.zeros((BITS.size, EPS.size))
    assert cr.min_variance_strength(zeros, BITS, EPS, chance=0.1) is None
    assert cr.slope_crossing_strength(zeros, BITS, EPS) is None


def test_zero_slope_run_counts_only_before_a_negative_slope():
    eps = np.array([0.0, 0.1, 0.2, 0.3])
    bits = np.array([1, 2])
    flat_then_down = np.array([[0.4, 0.5, 0.5, 0.6], [0.6, 0.5, 0.5, 0.4]])
    got = cr.slope_crossing_strength(flat_then_down, bits, eps)
    assert (got.eps_linf, got.index) == (0.1, 0)
    flat_then_up = np.array([[0.4, 0.5, 0.5, 0.4], [0.6, 0.5, 0.5, 0.6]])
    assert cr.slope_crossing_strength(flat_then_up, bits, eps) is None


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError):
        cr.min_variance_strength(np.zeros((3, 4)), BITS, EPS, chance=0.1)
    with pytest.raises(UsageError):
        cr.slope_crossing_strength(np.zeros((1, 3)), [4], [0, 0.1, 0.2])
    with pytest.raises(UsageError, match="slope-crossing"):
        cr.critical_strength(synthetic_sweep(), BITS, EPS, definition="flattest", chance=0.1)


def test_relative_accuracy_safe_division():
    adv = np.array([[0.5, 0.25], [0.0, 0.0]])
    clean = np.array([0.5, 0.0])
    got = cr.relative_accuracy(adv, clean[:, None])
    assert np.array_equal(got[0], [1.0, 0.5]) and np.all(np.isnan(got[1]))
