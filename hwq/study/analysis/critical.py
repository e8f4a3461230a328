"""Critical attack strength: where more weight bits stop helping and start hurting.

Input: ``acc[b, k]``, the accuracy (mean over seeds) at ``bits[b]`` and l-inf strength ``eps[k]``.
Two definitions; every result says which one it used:

- ``min-variance`` (the paper's): eps_c = eps[argmin_k Var_b acc[b, k]] over the strengths whose
  mean accuracy over bits exceeds ``chance + margin``. Without that restriction the regime where
  every curve sits at zero (variance ~0) would win.
- ``slope-crossing``: m_k = least-squares slope of acc[:, k] against bits,
  m_k = sum_b (q_b - q_bar)(a_bk - a_bar_k) / sum_b (q_b - q_bar)^2. eps_c is the first place where
  m goes from positive (more bits help) to negative (more bits hurt), linearly interpolated:
  eps_c = eps_k + m_k / (m_k - m_{k+1}) (eps_{k+1} - eps_k). A run of exactly-zero slopes
  counts only if a negative slope follows it; eps_c is then the first zero.

An l-inf step eps in n features has l2 length eps sqrt(n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import UsageError

DEFINITIONS = ("min-variance", "slope-crossing")


@dataclass(frozen=True)
class CriticalStrength:
    """A critical strength: ``index`` is its eps index (for slope-crossing: the lower bracket)."""

    eps_linf: float
    eps_l2: float
    definition: str
    index: int


def _arrays(acc, bits, eps):
    acc, bits, eps = (np.asarray(a, float) for a in (acc, bits, eps))
    if acc.ndim != 2 or acc.shape != (bits.size, eps.size):
        raise UsageError(
            f"accuracy array has shape {acc.shape}, expected (len(bits), len(eps)) = "
            f"({bits.size}, {eps.size})",
            hint="average over seeds first: acc[bits_index, eps_index]",
        )
    if np.unique(bits).size < 2:
        raise UsageError("a critical strength needs at least two distinct bit widths")
    return acc, bits, eps


def _result(eps_c: float, definition: str, index: int, n_features: int) -> CriticalStrength:
    return CriticalStrength(float(eps_c), float(eps_c * np.sqrt(n_features)), definition, index)


def bit_slopes(acc, bits) -> np.ndarray:
    """Least-squares slope of accuracy against bits, one per eps: shape (n_eps,)."""
    acc, q = np.asarray(acc, float), np.asarray(bits, float)
    dq = q - q.mean()
    return dq @ (acc - acc.mean(axis=0)) / np.sum(dq**2)


def min_variance_strength(acc, bits, eps, *, chance, margin=0.05, n_features=1):
    """The paper's definition (see module docstring); None if no strength is above chance."""
    acc, bits, eps = _arrays(acc, bits, eps)
    var = np.var(acc, axis=0)
    usable = (acc.mean(axis=0) > chance + margin) & np.isfinite(var)
    if not usable.any():
        return None
    k = int(np.flatnonzero(usable)[np.argmin(var[usable])])
    return _result(eps[k], "min-variance", k, n_features)


def slope_crossing_strength(acc, bits, eps, *, chance=None, margin=0.05, n_features=1):
    """First +/- sign change of the slope over bits; None if there is none.

    With ``chance`` given, strengths whose mean accuracy is not above ``chance + margin`` are
    left out (their slopes count as missing, which breaks a bracket).
    """
    acc, bits, eps = _arrays(acc, bits, eps)
    m = bit_slopes(acc, bits)
    if chance is not None:
        m = np.where(acc.mean(axis=0) > chance + margin, m, np.nan)
    for k in np.flatnonzero(m[:-1] > 0):
        nxt = m[k + 1 :]
        run = np.flatnonzero(nxt != 0)  # NaN != 0, so a missing slope ends the zero run
        if run.size == 0 or not nxt[run[0]] < 0:
            continue
        if run[0] > 0:  # exactly flat at eps[k+1], then negative
            return _result(eps[k + 1], "slope-crossing", int(k), n_features)
        t = m[k] / (m[k] - m[k + 1])
        return _result(eps[k] + t * (eps[k + 1] - eps[k]), "slope-crossing", int(k), n_features)
    return None


def critical_strength(
    acc, bits, eps, *, definition="min-variance", chance, margin=0.05, n_features=1
):
    """Dispatch to one of ``DEFINITIONS``; the crossing definition also honours ``chance``."""
    if definition == "min-variance":
        return min_variance_strength(
            acc, bits, eps, chance=chance, margin=margin, n_features=n_features
        )
    if definition == "slope-crossing":
        return slope_crossing_strength(
            acc, bits, eps, chance=chance, margin=margin, n_features=n_features
        )
    raise UsageError(
        f"unknown critical-strength definition {definition!r}",
        hint="use one of: " + ", ".join(DEFINITIONS),
    )


def relative_accuracy(acc_adv, acc_clean) -> np.ndarray:
    """A_r = acc_adv / acc_clean (broadcast), NaN where the clean accuracy is not positive.

    Pass ``acc_clean[..., None]`` to divide a (..., n_eps) sweep by its clean accuracies.
    """
    adv, clean = np.broadcast_arrays(np.asarray(acc_adv, float), np.asarray(acc_clean, float))
    return np.divide(adv, clean, out=np.full(adv.shape, np.nan), where=clean > 0)
