"""Monte Carlo check of the geometric model: uniform points in a regular n-simplex.

A uniform point in an n-simplex has barycentric weights lambda ~ Dirichlet(1, ..., 1) (n+1
components; sampled as normalised standard exponentials). Its distance to the face opposite
vertex i is lambda_i * H, where H = (n+1) h is the vertex-to-face height of the regular simplex
(h = inradius), so the distance to the nearest face is

    d = (n+1) h min_i lambda_i,    P(d > eps) = (1 - eps/h)^n,    E[d] = h / (n+1),

which is exactly the model's F and eps_bar. The fit is checked with a one-sample
Kolmogorov-Smirnov test: D = sup |F_N - F|, p = Q_KS(sqrt(N) D) with the asymptotic
Kolmogorov tail Q_KS(x) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 x^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hwq.study.analysis import geometry

_CHUNK_VALUES = 1 << 22  # at most ~4M doubles per chunk


def sample_barycentric(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` uniform points of the n-simplex as barycentric weights, shape (size, n+1)."""
    e = rng.standard_exponential((size, n + 1))
    return e / e.sum(axis=1, keepdims=True)


def sample_distances(h: float, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Distances d = (n+1) h min_i lambda_i of ``size`` uniform points to the nearest face."""
    rows = max(1, _CHUNK_VALUES // (n + 1))
    parts = [
        sample_barycentric(n, min(rows, size - start), rng).min(axis=1)
        for start in range(0, size, rows)
    ]
    return (n + 1) * h * np.concatenate(parts) if parts else np.empty(0)


def simulate(bits: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Nearest-face distances in the simplex of edge s = sqrt(n) 2^-q (the paper's Fig. 2)."""
    h = float(geometry.inradius(geometry.edge_length(bits, n), n))
    return sample_distances(h, n, size, rng)


def kolmogorov_sf(x):
    """Q_KS(x) = P(K > x) for the Kolmogorov distribution (the asymptotic KS p-value).

    For x < 1 the equivalent form 1 - sqrt(2 pi)/x sum_k exp(-(2k-1)^2 pi^2 / (8 x^2))
    converges faster; both series use 100 terms.
    """
    x = np.atleast_1d(np.asarray(x, float))
    k = np.arange(1, 101)[:, None]
    xp = np.maximum(x, 1e-3)  # Q_KS(1e-3) == 1 in double precision
    large_x = 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * xp**2), axis=0)
    small_x = 1 - np.sqrt(2 * np.pi) / xp * np.sum(
        np.exp(-((2 * k - 1) ** 2) * np.pi**2 / (8 * xp**2)), axis=0
    )
    q = np.where(x < 1, small_x, large_x)
    return np.clip(np.where(x <= 0, 1.0, q), 0.0, 1.0)


@dataclass(frozen=True)
class KSResult:
    """One-sample Kolmogorov-Smirnov test: statistic D, asymptotic p-value, sample size."""

    statistic: float
    pvalue: float
    size: int


def ks_test(samples, cdf: Callable[[np.ndarray], np.ndarray]) -> KSResult:
    """D = max_i max(i/N - F(x_(i)), F(x_(i)) - (i-1)/N) over the sorted samples x_(i)."""
    x = np.sort(np.asarray(samples, float).ravel())
    size = x.size
    if size == 0:
        return KSResult(float("nan"), float("nan"), 0)
    f = np.asarray(cdf(x), float)
    i = np.arange(1, size + 1)
    d = float(max(np.max(i / size - f), np.max(f - (i - 1) / size)))
    return KSResult(d, float(kolmogorov_sf(np.sqrt(size) * d)[0]), size)


def ks_test_model(distances, h: float, n: int) -> KSResult:
    """KS test of distances against the model F(eps) = 1 - (1 - eps/h)^n."""
    return ks_test(distances, lambda e: geometry.distribution(e, h, n))


def mean_agreement(bits: int, n: int, size: int, rng: np.random.Generator) -> dict:
    """Monte Carlo mean against the exact h/(n+1) and the paper's V/S, with the standard error."""
    h = float(geometry.inradius(geometry.edge_length(bits, n), n))
    d = sample_distances(h, n, size, rng)
    exact = h / (n + 1)
    stderr = float(d.std(ddof=1) / np.sqrt(size))
    return {
        "bits": bits,
        "n": n,
        "size": size,
        "mean_mc": float(d.mean()),
        "mean_exact": exact,
        "mean_paper_V_over_S": h / n,
        "abs_error": float(d.mean() - exact),
        "rel_error": float(d.mean() / exact - 1),
        "stderr": stderr,
    }
