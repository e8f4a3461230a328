"""Numba kernels of one tick of one core, batched over frames (shared/specs/truenorth.md
section 3). ``V``, ``syn``: (frames, 256) int32.

Neuron ``j``, given the synaptic input ``syn`` of this tick (eq. 1)::

    V <- sat(V + syn)
    Omega = 1 - eps + eps * sgn(V)
    V <- sat(V + Omega * ((1 - c) * lam + c * sgn(lam) * [|lam| >= rho]))          (eq. 2)
    eta = rho_T & (2^TM - 1)
    if V >= alpha + eta:               spike; V <- R | V - (alpha + eta) | V   (gamma = 0|1|2)
    elif V < -(beta*kappa + (beta + eta)*(1 - kappa)):
        V <- -beta                     if kappa
        V <- -R | V + (beta + eta) | V (gamma = 0|1|2) otherwise                    (eq. 3)
    V <- sat(V)

``sat`` clips to the potential's range ``[vmin, vmax]`` (docs/truenorth.md: 20 bits by
default). No "ringing" fix: an epsilon leak may carry V across 0.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def integrate_sparse(active, weights, syn):
    """``syn[f] = sum_i active[f, i] * weights[i]``; work proportional to the active axons."""
    frames, axons = active.shape
    n = weights.shape[1]
    for f in range(frames):
        for j in range(n):
            syn[f, j] = 0
        for i in range(axons):
            if active[f, i]:
                for j in range(n):
                    syn[f, j] += weights[i, j]


@nb.njit(cache=True, inline="always")
def sgn(x):
    return (x > 0) - (x < 0)


@nb.njit(cache=True)
def neuron_step(v, syn, exists, leak, stoch_leak, eps, alpha, beta, gamma, kappa, reset,
                rho_leak, eta, stochastic, vmin, vmax, fire):
    """One tick of eqs. 1-3 in place on ``v``; ``fire[f, j]`` is set to the spikes.
    ``rho_leak``/``eta`` are read only when ``stochastic`` (else pass any (1, n) arrays)."""
    frames, n = v.shape
    for f in range(frames):
        for j in range(n):
            if not exists[j]:
                fire[f, j] = False
                continue
            x = v[f, j] + syn[f, j]
            x = min(max(x, vmin), vmax)
            lam = leak[j]
            if stochastic and stoch_leak[j]:
                lam = sgn(lam) * (abs(lam) >= rho_leak[f, j])
            if eps[j]:
                lam = lam * sgn(x)
            x = min(max(x + lam, vmin), vmax)
            e = eta[f, j] if stochastic else 0
            thr = alpha[j] + e
            g = gamma[j]
            if x >= thr:
                fire[f, j] = True
                if g == 0:
                    x = reset[j]
                elif g == 1:
                    x = x - thr
            else:
                fire[f, j] = False
                b = beta[j]
                if kappa[j]:
                    if x < -b:
                        x = -b
                elif x < -(b + e):
                    if g == 0:
                        x = -reset[j]
                    elif g == 1:
                        x = x + b + e
            v[f, j] = min(max(x, vmin), vmax)


def step_arrays(n: int):
    """Dummy (1, n) ``rho_leak``/``eta`` for deterministic cores."""
    return np.zeros((1, n), np.int32), np.zeros((1, n), np.int32)
