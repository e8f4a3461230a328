"""The backward products of the surrogate give each row the same result whatever rows share
the call (``hwq.attack.transpose.row_product``): attacks batch every strength's rows together,
so a row's gradient must not depend on the batch (OpenBLAS chooses kernels, and summation
orders, by matrix size and, for float32, by a row's position in the block)."""

from __future__ import annotations

import numpy as np
import pytest

from hwq.attack import transpose
from hwq.attack.transpose import row_product


def invariant(product, a, w) -> bool:
    whole = product(a, w)
    return all(np.array_equal(product(a[i:i + m], w), whole[i:i + m])
               for m in (1, 3, 5, 31, 64, 93, 100) for i in (0, 3, 17, 40))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,n", [(10, 9), (9, 16), (100, 784), (784, 100)])
def test_a_row_gets_the_same_product_in_any_batch(dtype, k, n):
    rng = np.random.default_rng(k * n)
    w = rng.normal(size=(k, n)).astype(dtype)
    a = rng.normal(size=(480, k)).astype(dtype)
    assert invariant(row_product, a, w)
    assert row_product(a, w).dtype == dtype
    np.testing.assert_allclose(row_product(a, w), a.astype(np.float64) @ w.astype(np.float64),
                               rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_the_check_catches_a_batch_dependent_product():
    """The wrong variant: a product whose summation order follows the batch's size (as
    OpenBLAS's kernel choice does) fails ``invariant``; plain ``np.matmul`` is reported for
    the record (it varies on OpenBLAS 0.3.34)."""
    def by_batch(a, w):
        half = a.shape[1] // 2 if len(a) % 2 else a.shape[1] // 3
        return a[:, :half] @ w[:half] + a[:, half:] @ w[half:]
    rng = np.random.default_rng(0)
    a, w = rng.normal(size=(480, 100)).astype(np.float32), rng.normal(size=(100, 784)).astype(np.float32)
    assert not invariant(by_batch, a, w)
    assert invariant(row_product, a, w)


def test_the_surrogate_backward_uses_it(monkeypatch):
    calls = []
    monkeypatch.setattr(transpose, "row_product", lambda d, w: calls.append(len(d)) or d @ w)
    transpose.product(np.eye(3), np.ones((2, 3)), None)
    assert calls == [2]
