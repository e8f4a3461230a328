"""The paper's geometric robustness model (Section 3) as pure, vectorised functions.

Decision regions are regular n-simplices of edge ``s``; data points lie uniformly inside them.
Every function broadcasts over its array arguments. Volumes are computed in log space
(``math.lgamma``), so n = 784 neither overflows nor needs ``n!``:

- volume          V = s^n / n! * sqrt((n+1) / 2^n)
- surface         S = (n+1) s^(n-1) / (n-1)! * sqrt(n / 2^(n-1))
- inradius        h = n V / S = s / sqrt(2 n (n+1))
- mean distance   eps_bar = h / (n+1)  (exact);  paper's approximation V / S = h / n
- edge from bits  s = sqrt(n) 2^-q  (Draghici, large n);  exact bound max(2^(1-q), sqrt(n) 2^-q)
- eq. (8)         eps_bar ~ 1 / (2^(q+1/2) n^(3/2))
- density         f(eps) = n / h^n (h - eps)^(n-1) = (n / h) (1 - eps/h)^(n-1) on [0, h]
- distribution    F(eps) = 1 - (1 - eps/h)^n on [0, h]  (0 below, 1 above)
- bound, eq. (14) A_r >= 1 - F(eps) = ((h - eps) / h)^n for eps < h, else 0
"""

from __future__ import annotations

import math

import numpy as np

_lgamma = np.vectorize(math.lgamma, otypes=[float])


def log_volume(s, n):
    """ln V = n ln s - ln n! + (ln(n+1) - n ln 2) / 2."""
    s, n = np.asarray(s, float), np.asarray(n, float)
    return n * np.log(s) - _lgamma(n + 1) + 0.5 * (np.log(n + 1) - n * np.log(2))


def log_surface(s, n):
    """ln S = ln(n+1) + (n-1) ln s - ln (n-1)! + (ln n - (n-1) ln 2) / 2."""
    s, n = np.asarray(s, float), np.asarray(n, float)
    return (
        np.log(n + 1) + (n - 1) * np.log(s) - _lgamma(n) + 0.5 * (np.log(n) - (n - 1) * np.log(2))
    )


def volume(s, n):
    """V = s^n / n! * sqrt((n+1) / 2^n) (underflows to 0.0 rather than overflowing)."""
    return np.exp(log_volume(s, n))


def surface(s, n):
    """S = (n+1) s^(n-1) / (n-1)! * sqrt(n / 2^(n-1))."""
    return np.exp(log_surface(s, n))


def inradius(s, n):
    """h = n V / S = s / sqrt(2 n (n+1)), also the height of each incenter sub-simplex."""
    s, n = np.asarray(s, float), np.asarray(n, float)
    return s / np.sqrt(2 * n * (n + 1))


def mean_distance(s, n):
    """Exact mean distance from a uniform point to its nearest face: eps_bar = h / (n+1)."""
    return inradius(s, n) / (np.asarray(n, float) + 1)


def mean_distance_paper(s, n):
    """The paper's approximation eps_bar ~ V / S = s / sqrt(2 n^3 (n+1)) (= h / n)."""
    return np.exp(log_volume(s, n) - log_surface(s, n))


def edge_length(bits, n, *, large_n=True):
    """s = sqrt(n) 2^-q (large n, the paper's choice); else max(2^(1-q), sqrt(n) 2^-q)."""
    q, n = np.asarray(bits, float), np.asarray(n, float)
    s = np.sqrt(n) * 2.0**-q
    return s if large_n else np.maximum(2.0 ** (1 - q), s)


def mean_distance_bits(bits, n):
    """Eq. (8): eps_bar ~ 1 / (2^(q+1/2) n^(3/2))."""
    q, n = np.asarray(bits, float), np.asarray(n, float)
    return 1.0 / (2.0 ** (q + 0.5) * n**1.5)


def _unit(eps, h):
    """u = 1 - eps/h clipped to [0, 1]: the relative gap left to the face."""
    return np.clip(1.0 - np.asarray(eps, float) / np.asarray(h, float), 0.0, 1.0)


def density(eps, h, n):
    """f(eps) = (n / h) (1 - eps/h)^(n-1) for 0 <= eps <= h, 0 elsewhere."""
    eps, n = np.asarray(eps, float), np.asarray(n, float)
    inside = (eps >= 0) & (eps <= h)
    return np.where(inside, n / np.asarray(h, float) * _unit(eps, h) ** (n - 1), 0.0)


def distribution(eps, h, n):
    """F(eps) = 1 - (1 - eps/h)^n, with F = 0 for eps <= 0 and F = 1 for eps >= h."""
    return 1.0 - _unit(eps, h) ** np.asarray(n, float)


def relative_accuracy_bound(eps_l2, h, n):
    """Eq. (14): A_r >= 1 - F(eps) = ((h - eps) / h)^n for eps < h, else 0."""
    return _unit(eps_l2, h) ** np.asarray(n, float)


def relative_accuracy_bound_linf(eps_linf, n, bits, *, large_n=True):
    """The bound for an l-inf FGSM step: l2 = eps_inf sqrt(n), h from s = edge_length(q, n)."""
    h = inradius(edge_length(bits, n, large_n=large_n), n)
    return relative_accuracy_bound(np.asarray(eps_linf, float) * np.sqrt(n), h, n)


def model_summary(n: int, bits: int, *, large_n: bool = True) -> dict:
    """Every quantity of the model for one (n, q), exact and approximate, as plain floats.

    ``volume``/``surface`` may underflow to 0.0 for large n; ``log_volume``/``log_surface``
    stay exact. ``linf_bound_zero`` is the l-inf strength h / sqrt(n) where the bound reaches 0.
    """
    s = float(edge_length(bits, n, large_n=large_n))
    h = float(inradius(s, n))
    lv, ls = float(log_volume(s, n)), float(log_surface(s, n))
    return {
        "n": int(n),
        "bits": int(bits),
        "edge": s,
        "log_volume": lv,
        "log_surface": ls,
        "volume": float(np.exp(lv)),
        "surface": float(np.exp(ls)),
        "inradius": h,
        "inradius_nV_over_S": n * float(np.exp(lv - ls)),
        "mean_distance_exact": h / (n + 1),
        "mean_distance_V_over_S": float(np.exp(lv - ls)),
        "mean_distance_s_over_sqrt2_n2": s / (math.sqrt(2) * n**2),
        "mean_distance_eq8": float(mean_distance_bits(bits, n)),
        "linf_bound_zero": h / math.sqrt(n),
    }
