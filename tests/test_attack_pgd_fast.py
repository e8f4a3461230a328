"""PGD's fast paths against the plain ones: the fused judge-and-trace pass, the float32
sign-only surrogate, the in-place l-inf step kernel."""

from __future__ import annotations

import numpy as np
import pytest
from builders import torch_style_mlp

import hwq
from hwq.attack import PGD, gradients
from hwq.attack.base import Judge
from hwq.attack.gradients import SurrogateGradient, default_gradient
from hwq.attack.pgd import linf_step, project
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference
from hwq.target.protocol import ReferenceProgram

RNG = np.random.default_rng(11)


def compiled(act="Relu", n_in=20, hidden=12, n_out=10, bits=4, input_bits=8, scale=1.0):
    w1 = RNG.uniform(-1, 1, (hidden, n_in)) * scale
    w2 = RNG.uniform(-1, 1, (n_out, hidden)) * scale
    model = torch_style_mlp(w1, -0.5 * w1.sum(axis=1), w2, np.zeros(n_out), act=act,
                            out="Sigmoid" if n_out == 1 else "Softmax")
    x = RNG.uniform(0, 1, (150, n_in))
    net = hwq.quantize(graph_from_model(model), bits, calibration=x, bounds=(0, 1), act_bits=8,
                       input_bits=input_bits)
    return hwq.compile(net, "sim"), x, reference.predict(net, x)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "step"])
@pytest.mark.parametrize("input_bits", [8, 16])
def test_judged_point_is_forward_and_trace(act, input_bits):
    program, x, _ = compiled(act, input_bits=input_bits)
    g = default_gradient(program)
    assert g.fuses_with(program) and not g.fuses_with(ReferenceProgram(program.net))
    codes = Judge(program, (0, 1)).codes(x)
    scores, zs = g.judged_point(codes)
    np.testing.assert_array_equal(scores, program.forward(codes))
    for got, want in zip(zs, program.trace(codes)):
        np.testing.assert_array_equal(got, want)


class PlainSource:
    """Only ``value_and_grad`` (float64): the path every custom gradient source takes."""

    name = "surrogate"

    def __init__(self, program):
        self.inner = SurrogateGradient(program, sign_dtype=None)

    def value_and_grad(self, x, y):
        return self.inner.value_and_grad(x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_fused_split_and_plain_sources_agree(norm, random_start):
    """One integer pass per step (fused, sim), the reference's trace (split), a source with
    only ``value_and_grad``: the same decisions and points (float32 signs as float64 here)."""
    program, x, y = compiled("Relu")
    eps = np.array([0.0, 0.05, 0.2]) * (1 if norm == "linf" else 3)
    attack = PGD(norm, steps=10, rel_stepsize=0.1, random_start=random_start, seed=2)
    runs = [hwq.attack(program, x, y, eps, method=attack, bounds=(0, 1), gradient=g, diagnostics=False)
            for g in (None, SurrogateGradient(ReferenceProgram(program.net)), PlainSource(program))]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.predictions, runs[0].predictions)
        np.testing.assert_array_equal(r.points, runs[0].points)
    assert runs[0].accuracy[-1] < runs[0].accuracy[0]


@pytest.mark.parametrize("act,scale", [("Relu", 1.0), ("Sigmoid", 1.0), ("step", 1.0),
                                       ("Relu", 200.0), ("Sigmoid", 300.0)])
def test_float32_sign_only_gradient_has_float64_signs(act, scale, monkeypatch):
    """Large weights: softmax deltas of 1e-60 and sigmoid derivatives of 1e-100, which
    float32 alone would flush to 0; the power-of-two row scaling keeps every sign."""
    program, x, y = compiled(act, n_in=30, hidden=16, bits=6, scale=scale)
    g = default_gradient(program)
    zs = g.point(Judge(program, (0, 1)).codes(x))
    _, fast = g.grad_at(zs, y, sign_only=True)
    _, exact = g.grad_at(zs, y)
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(np.sign(fast), np.sign(exact))
    if scale > 1:  # the case the scaling is for: float64's gradient is far below float32's range
        assert np.any((np.abs(exact) < 1e-45) & (exact != 0))
        monkeypatch.setattr(gradients, "pow2_rows", lambda a: a)  # float32 without the scaling
        _, unscaled = g.grad_at(zs, y, sign_only=True)
        assert np.any(np.sign(unscaled) != np.sign(exact))


def test_linf_step_kernel_is_numpy_project_then_codes():
    """The kernel moves only the alive rows (in any order) of the iterate buffer in place;
    a NaN or Inf gradient component counts as 0 and marks its row."""
    program, x, _ = compiled(input_bits=16)
    judge = Judge(program, (0.0, 1.0))
    rows, d = 3 * len(x), x.shape[1]
    src = np.tile(np.arange(len(x)), 3)
    eps = np.repeat([0.01, 0.1, 0.5], len(x))
    alpha = eps / 3
    cur = np.clip(x[src] + RNG.uniform(-1, 1, (rows, d)) * eps[:, None], 0, 1)
    alive = RNG.permutation(rows)[: rows // 2]
    g = RNG.standard_normal((alive.size, d)).astype(np.float32)
    g[RNG.random(g.shape) < 0.2] = 0
    g[3, 5], g[7, 0] = np.nan, -np.inf
    clean_g = np.where(np.isfinite(g), g, 0)
    want = cur.copy()
    want[alive] = project(x[src[alive]], cur[alive] + alpha[alive, None] * np.sign(clean_g), eps[alive],
                          "linf", 0.0, 1.0)
    codes, bad = np.empty((alive.size, d), judge.codes(x).dtype), np.zeros(rows, bool)
    fmt = judge.fmt
    linf_step(cur, alive, g, x, src, eps, alpha, 0.0, 1.0, fmt.inv_scale, fmt.qmin, fmt.qmax, codes, bad)
    np.testing.assert_array_equal(cur, want)  # the rows not alive are untouched
    np.testing.assert_array_equal(codes, judge.codes(want[alive]))
    np.testing.assert_array_equal(np.flatnonzero(bad), np.sort(alive[[3, 7]]))


def blas_threads() -> int:
    """The largest thread count of the BLAS libraries loaded (numpy's, and scipy's if loaded)."""
    from threadpoolctl import ThreadpoolController

    return max(lib["num_threads"] for lib in ThreadpoolController().select(user_api="blas").info())


def test_gradient_products_run_on_one_blas_thread(monkeypatch):
    """backprop's products run on one BLAS thread, and the count before is restored after."""
    program, x, y = compiled()
    monkeypatch.setitem(gradients._BLAS, "controller", None)  # made again: every library loaded now
    original, seen = blas_threads(), []
    products = gradients._products
    monkeypatch.setattr(gradients, "_products", lambda *a: (seen.append(blas_threads()), products(*a))[1])
    g = default_gradient(program)
    g.value_and_grad(x, y)
    g.grad_at(g.point(Judge(program, (0, 1)).codes(x)), y, sign_only=True)
    assert seen == [1, 1] and blas_threads() == original
