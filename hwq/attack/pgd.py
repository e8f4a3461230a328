"""PGD (Madry et al. 2018; foolbox's ``LinfPGD``/``L2PGD``), judged on the integer model at
every step, keeping the worst point per input and epsilon (AutoAttack's worst case).

For every epsilon ``eps_k`` and restart, from ``x_0 = x`` (or a uniform random point of the
ball, ``random_start``), ``steps`` times::

    g       = dL/dx at x_t                       the gradient source (surrogate: at the
                                                 integer model's operating point of x_t)
    x_t+1   = P(x_t + a sign(g))                 l-inf; l2: a g / |g|_2
    P(v)    = clip(x + proj_eps(v - x), lo, hi)  the eps ball, then the data bounds
    judged  = decide(forward(codes(x_t+1)))      the device's input grid, the integer model

``a = rel_stepsize * eps_k``, by default ``2.5 eps_k / steps`` (Madry et al.: the steps
together travel 2.5 eps whatever their number; foolbox's fixed 0.01/0.3, tuned for 40 steps,
left 20 steps short of eps and weaker than FGSM, issue 22), or ``abs_stepsize``. The iterate
stays real-valued (a step smaller than one input code would otherwise never move it); every
judged point is its quantized version, like FGSM's. The first judged point the integer model
gets wrong is kept (its codes and decision) and that pair (input, epsilon) stops; pairs never
broken keep the clean input. All epsilons and inputs of a chunk run as one batch of ``K x n``
rows. The random start of input ``i`` at ``eps_k`` in restart ``r`` is drawn from ``(seed,
eps_k, r, i)`` alone (``hwq.attack.noise``): a strength's result does not depend on the other
strengths in the list, nor on the chunking.

Cost (docs/attacks.md, "How a step is computed"): with the surrogate of the judged program
itself (``sim``) one integer pass per step both judges the iterate and gives the next
gradient's operating point; without a random start the first step reuses the clean
gradient; l-inf steps take float32 signs (``SurrogateGradient.grad_at(sign_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from hwq.attack import noise
from hwq.attack.base import Attack, ChunkOutcome
from hwq.errors import UsageError
from hwq.params import param
from hwq.ranges import check_norm

STEP_BUDGET = 2.5  # Madry et al.: the default step is 2.5 eps / steps, a path of 2.5 eps in all
PGD_CHUNK_ELEMENTS = 2**22


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
    return value


def random_ball(key: np.ndarray, index: np.ndarray, d: int, norm: str) -> np.ndarray:
    """Uniform points of the unit l-inf or l2 ball (l2: foolbox's ``uniform_l2_n_balls``), one
    per row, from the stream ``key[r]`` of input ``index[r]`` (``hwq.attack.noise``)."""
    if norm == "linf":
        return 2.0 * noise.uniform(key, index, d) - 1.0
    z = noise.normal(key, index, d + 2)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z[:, :d]


def unit_step(g: np.ndarray, norm: str) -> np.ndarray:
    if norm == "linf":
        return np.sign(g)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    return np.divide(g, norms, out=np.zeros_like(g), where=norms > 0)


def project(x0: np.ndarray, v: np.ndarray, eps: np.ndarray, norm: str, lo: float, hi: float) -> np.ndarray:
    """``clip(x0 + proj_eps(v - x0), lo, hi)``, eps per row."""
    delta = v - x0
    if norm == "linf":
        delta = np.clip(delta, -eps[:, None], eps[:, None])
    else:
        norms = np.linalg.norm(delta, axis=1, keepdims=True)
        factor = np.minimum(1.0, np.divide(eps[:, None], norms, out=np.ones_like(norms), where=norms > 0))
        delta = delta * factor
    return np.clip(x0 + delta, lo, hi)


@dataclass(frozen=True)
class PGD(Attack):
    norm: str = param("linf", help="Norm: linf (the paper's) | l2.")
    steps: int = param(40, help="Gradient steps.")
    rel_stepsize: float | None = param(None, help="Step / eps.", auto="2.5 / steps")
    abs_stepsize: float | None = param(None, help="Step, absolute (overrides --rel-stepsize).")
    random_start: bool = param(True, help="Start at a uniform point of the eps-ball (else at the input).")
    restarts: int = param(1, help="Random restarts.")
    seed: int = param(0, help="Seed of random starts and Square's windows.", flags=("--attack-seed",))
    name = "pgd"

    def __post_init__(self):
        check_norm(self.norm)
        _positive_int("steps", self.steps)
        _positive_int("restarts", self.restarts)
        _positive("rel_stepsize", self.rel_stepsize)
        _positive("abs_stepsize", self.abs_stepsize)
        if self.restarts > 1 and not self.random_start:
            raise UsageError("--restarts > 1 needs a random start (the runs would be identical)")

    @property
    def stepsize(self) -> float:
        """The step relative to eps: ``rel_stepsize``, else ``2.5 / steps`` (Madry et al.)."""
        return self.rel_stepsize if self.rel_stepsize is not None else STEP_BUDGET / self.steps

    def params(self):
        out = {"norm": self.norm, "steps": self.steps, "random_start": self.random_start,
               "restarts": self.restarts, "seed": self.seed}
        if self.abs_stepsize is not None:
            out["abs_stepsize"] = self.abs_stepsize
        else:
            out["rel_stepsize"] = self.stepsize
        return out

    def chunk_size(self, n_eps, d, batch_size):
        return max(1, min(batch_size, PGD_CHUNK_ELEMENTS // max(1, n_eps * d)))

    def run_chunk(self, judge, x, y, eps, gradient) -> ChunkOutcome:
        k_eps, (n, d) = len(eps), x.shape
        ops = Operating(judge, gradient, x, self.norm == "linf")
        clean_codes = judge.codes(x)
        clean_pred, g0 = ops.clean(x, clean_codes, y)
        zero = ~np.any(g0 != 0, axis=1)
        nonfinite = ~np.all(np.isfinite(g0), axis=1)
        rows = k_eps * n
        src = np.tile(np.arange(n), k_eps)  # row -> its input
        labels = y[src]
        e = np.repeat(np.asarray(eps, np.float64), n)
        alpha = np.full(rows, self.abs_stepsize) if self.abs_stepsize is not None else self.stepsize * e
        pred = np.tile(clean_pred, k_eps)
        best = np.tile(clean_codes, (k_eps, 1))
        found = pred != labels
        index = judge.offset + src  # row -> the input's index in the whole data set
        lo, hi = judge.lo, judge.hi
        bad = np.zeros(rows, bool)  # a NaN/Inf gradient seen on this row

        def judge_rows(idx, codes):
            """Judge ``codes`` of rows ``idx``; keep the hits; the survivors' mask and point."""
            p, zs = ops.decide(codes)
            hit = p != labels[idx]
            pred[idx[hit]], best[idx[hit]], found[idx[hit]] = p[hit], codes[hit], True
            keep = ~hit
            return keep, None if zs is None else [z[keep] for z in zs]

        cur = np.empty((rows, d))  # every row's iterate; the alive rows ``idx`` move
        fmt = judge.fmt
        for restart in range(self.restarts):
            idx = np.flatnonzero(~found & (e > 0))
            if idx.size == 0:
                break
            start = (random_ball(np.repeat(noise.keys(self.seed, eps, restart), n)[idx], index[idx], d, self.norm)
                     if self.random_start else None)
            cur[idx], zs = x[src[idx]], None
            if start is not None:
                cur[idx] = np.clip(cur[idx] + e[idx, None] * start, lo, hi)
                keep, zs = judge_rows(idx, judge.codes(cur[idx]))
                idx = idx[keep]
            for step in range(self.steps):
                if idx.size == 0:
                    break
                # the clean gradient is the first step's without a random start
                g = g0[src[idx]] if start is None and step == 0 else ops.grad(cur, idx, zs, labels[idx])
                if self.norm == "linf":  # non-finite components count as 0 and mark the row
                    codes = np.empty((idx.size, d), best.dtype)
                    linf_step(cur, idx, g, x, src, e, alpha, lo, hi, fmt.inv_scale, fmt.qmin, fmt.qmax,
                              codes, bad)
                else:
                    finite = np.isfinite(g)
                    if not finite.all():
                        bad[idx[~finite.all(axis=1)]] = True
                        g = np.where(finite, g, 0.0)
                    cur[idx] = project(x[src[idx]], cur[idx] + alpha[idx, None] * unit_step(g, self.norm),
                                       e[idx], self.norm, lo, hi)
                    codes = judge.codes(cur[idx])
                keep, zs = judge_rows(idx, codes)
                idx = idx[keep]
        nonfinite |= bad.reshape(k_eps, n).any(axis=0)
        return ChunkOutcome(pred.reshape(k_eps, n), zero, codes=best.reshape(k_eps, n, d),
                            nonfinite=nonfinite, clean=clean_pred)


class Operating:
    """How PGD reaches the gradient source: the split form where the source has it (the
    operating point of the very codes just judged, ``SurrogateGradient.point``; with
    ``fuses_with`` the judged forward pass itself gives it: one integer forward per step),
    else ``value_and_grad`` of the real iterate (the same point: iterates lie in the bounds,
    so their codes are ``judge.codes``). ``sign_only``: l-inf (``SurrogateGradient.grad_at``)."""

    def __init__(self, judge, gradient, x, sign_only: bool):
        self.judge, self.gradient, self.sign_only = judge, gradient, sign_only
        self.split = callable(getattr(gradient, "grad_at", None))
        self.fused = self.split and gradient.fuses_with(judge.program)
        self.x_in_bounds = bool(np.all((x >= judge.lo) & (x <= judge.hi)))

    def clean(self, x, codes, y) -> tuple[np.ndarray, np.ndarray]:
        """Clean decisions and the float64 clean gradient (the diagnostics' and step 0's)."""
        if self.fused and self.x_in_bounds:  # else value_and_grad's codes are not judge.codes
            scores, zs = self.gradient.judged_point(codes)
            return self.judge.program.decide(scores), self.gradient.grad_at(zs, y)[1]
        return self.judge.decide(codes), self.gradient.value_and_grad(x, y)[1]

    def decide(self, codes) -> tuple[np.ndarray, list | None]:
        """The integer model's decisions on ``codes`` (and their operating point when fused)."""
        if self.fused:
            scores, zs = self.gradient.judged_point(codes)
            return self.judge.program.decide(scores), zs
        return self.judge.decide(codes), None

    def grad(self, cur, idx, zs, y) -> np.ndarray:
        """The gradient at the iterates ``cur[idx]`` (``zs``: their operating point, when the
        judged pass gave it)."""
        if not self.split:
            return self.gradient.value_and_grad(cur[idx], y)[1]
        if zs is None:
            zs = self.gradient.point(self.judge.codes(cur[idx]))
        return self.gradient.grad_at(zs, y, sign_only=self.sign_only)[1]


@nb.njit(cache=True)
def linf_step(cur, rows, g, x, src, eps, alpha, lo, hi, inv_scale, qmin, qmax, codes, bad):
    """One l-inf step of the rows ``rows`` of ``cur`` in place, with their device codes, bit
    for bit numpy's ``project`` of ``cur + alpha sign(g)`` followed by ``Judge.codes``: for
    row ``r = rows[i]`` of input ``x[src[r]]``,
    ``cur[r] = clip(x + clip(cur[r] + alpha[r] sign(g[i]) - x, -eps[r], eps[r]), lo, hi)`` and
    ``codes[i] = clip(floor(cur[r] * inv_scale + 1/2), qmin, qmax)``. A component of ``g``
    that is not finite counts as 0 and sets ``bad[r]``."""
    d = cur.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        a, e, xr = alpha[r], eps[r], x[src[r]]
        for j in range(d):
            s = g[i, j]
            if not np.isfinite(s):
                s = 0.0
                bad[r] = True
            v = cur[r, j] + a * (1.0 if s > 0 else (-1.0 if s < 0 else 0.0))
            c = min(max(xr[j] + min(max(v - xr[j], -e), e), lo), hi)
            cur[r, j] = c
            codes[i, j] = min(max(np.floor(c * inv_scale + 0.5), qmin), qmax)
