"""APGD (Croce & Hein, ICML 2020; ``fra31/auto-attack``, ``autoattack/autopgd_base.py``):
PGD without a step-size parameter, judged on the integer model at every iterate.

For every epsilon, restart and (targeted) target class, from a random point of the ball's
surface (l-inf: ``x + eps t / max|t|``, ``t`` uniform in [-1, 1]^d; l2: ``x + eps t / |t|_2``,
``t`` normal), ``steps`` times (default 100), with ``eta`` starting at ``2 eps``::

    z       = P(x_t + eta sign(g_t))                     l2: eta g_t / |g_t|_2
    x_t+1   = P(x_t + a (z - x_t) + (1 - a)(x_t - x_t-1))  a = 1 at the first step, then 0.75
    g_t+1, L_t+1 = the gradient and value of the loss at x_t+1 (the gradient source)
    judged  = decide(forward(codes(x_t+1)))              the device's grid, the integer model

``P`` projects on the eps ball, then clips to the data bounds. The best point (highest loss)
is remembered; at the checkpoints ``p_j`` (the first after ``0.22 steps`` iterations, then
intervals shrinking by ``0.03 steps`` down to ``0.06 steps``) a row halves ``eta`` and restarts
from its best point (and its gradient) when the loss rose in at most ``rho = 0.75`` of the
steps since the last checkpoint, or when it was not halved last time and its best loss has not
improved since: the reference implementation's ``check_oscillation`` and
``fl_reduce_no_impr``, index for index.

Losses (all maximised; ``z`` the scores the gradient source sees, for the surrogate the
integer model's scores in real units):

* ``ce``: cross-entropy of the label (``apgd-ce``); targeted: ``-CE(z, t)``.
* ``dlr``: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (``apgd-dlr``); targeted
  (``apgd-t``): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, ``pi`` the scores
  sorted in decreasing order. Needs at least 3 (targeted: 4) classes.

Targeted: the targets are the 2nd to ``targets + 1``-th largest clean integer scores (ties:
the lower class index first, as ``decide``), one full run per target (AutoAttack: 9 targets,
one restart each). Every judged point is the quantized iterate; the first one the integer
model gets wrong is kept and that pair (input, epsilon) stops (its later iterates would not
change any other pair: each row's step size and checkpoints are its own). Random starts come
from ``(seed, eps, run, input)`` (``hwq.attack.noise``).

Differences from the reference: the reference judges the float model on the float iterate,
hwq the integer model on its input codes; the reference keeps iterating broken rows and
returns the last adversarial iterate, hwq stops at the first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from hwq.attack import noise
from hwq.attack.base import Attack, ChunkOutcome
from hwq.attack.pgd import PGD_CHUNK_ELEMENTS, _positive, _positive_int
from hwq.errors import UsageError
from hwq.params import declared_values, param
from hwq.ranges import check_norm

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75
START_STEP = 2.0  # eta_0 = 2 eps (l-inf and l2)


def ce_targeted(t):
    """``z -> (-CE(z, t), d/dz)``: the log-probability of the target ``t``."""
    def loss(z):
        r = np.arange(len(z))
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        grad = -np.exp(logp)
        grad[r, t] += 1
        return logp[r, t], grad
    return loss


def dlr(y):
    """``z -> (DLR, d/dz)``: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``."""
    def loss(z):
        r = np.arange(len(z))
        order = np.argsort(z, axis=1, kind="stable")
        top, second, third = order[:, -1], order[:, -2], order[:, -3]
        other = np.where(top == y, second, top)
        gap = z[r, y] - z[r, other]
        den = z[r, top] - z[r, third] + 1e-12
        grad = np.zeros_like(z)
        grad[r, y] -= 1 / den
        grad[r, other] += 1 / den
        grad[r, top] += gap / den**2
        grad[r, third] -= gap / den**2
        return -gap / den, grad
    return loss


def dlr_targeted(y, t):
    """``z -> (DLR-T, d/dz)``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``."""
    def loss(z):
        r = np.arange(len(z))
        order = np.argsort(z, axis=1, kind="stable")
        top, third, fourth = order[:, -1], order[:, -3], order[:, -4]
        gap = z[r, y] - z[r, t]
        den = z[r, top] - 0.5 * (z[r, third] + z[r, fourth]) + 1e-12
        grad = np.zeros_like(z)
        grad[r, y] -= 1 / den
        grad[r, t] += 1 / den
        grad[r, top] += gap / den**2
        grad[r, third] -= 0.5 * gap / den**2
        grad[r, fourth] -= 0.5 * gap / den**2
        return -gap / den, grad
    return loss


def checkpoints(steps: int) -> tuple[int, int, int]:
    """``(first interval, smallest interval, decrement)``: 0.22, 0.06 and 0.03 of ``steps``."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def oscillation(loss_steps: np.ndarray, i: int, k: int, rho: float) -> np.ndarray:
    """The reference's ``check_oscillation``: rows whose loss rose in at most ``k rho`` of the
    last ``k`` steps (``loss_steps[j - 1]`` wraps to the last row at ``j = 0``, as in torch)."""
    t = np.zeros(loss_steps.shape[1])
    for c in range(k):
        t += loss_steps[i - c] > loss_steps[i - c - 1]
    return t <= k * rho


def halving(loss_steps, i, k, rho, loss_best, best_last_check, reduced_last_check) -> np.ndarray:
    """Rows that halve their step at this checkpoint: the loss oscillated (``oscillation``), or
    the row was not halved at the last checkpoint and its best loss has not improved since
    (the reference's ``fl_reduce_no_impr``)."""
    return oscillation(loss_steps, i, k, rho) | (~reduced_last_check & (best_last_check >= loss_best))


def sorted_classes(scores: np.ndarray) -> np.ndarray:
    """Classes by decreasing score, ties by increasing index (the order ``decide`` breaks them)."""
    return np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")


@dataclass(frozen=True)
class APGD(Attack):
    norm: str = param("linf", help="Norm: linf (the paper's) | l2.")
    loss: str = param("ce", help="Loss: ce | dlr.", cli=False)  # set by the attack's name
    # 0: untargeted; k: one run per each of the k most likely other classes
    targets: int = param(0, help="Target classes, the most likely after the label.", flags=("--target-classes",),
                         name="target_classes", attacks=("apgd-t",))
    steps: int = param(100, help="Gradient steps.")
    restarts: int = param(1, help="Restarts.")
    rho: float = param(0.75, help="Checkpoint rule: halve the step where the loss rose in at most this share "
                                  "of the steps.")
    seed: int = param(0, help="Seed of random starts and Square's windows.", flags=("--attack-seed",))

    def __post_init__(self):
        check_norm(self.norm)
        if self.loss not in LOSSES:
            raise UsageError(f"unknown APGD loss '{self.loss}'", hint="use ce | dlr")
        _positive_int("steps", self.steps)
        _positive_int("restarts", self.restarts)
        if isinstance(self.targets, bool) or not isinstance(self.targets, (int, np.integer)) or self.targets < 0:
            raise UsageError(f"--target-classes must be a non-negative integer, got {self.targets!r}")
        _positive("rho", self.rho)

    @property
    def name(self) -> str:
        return "apgd-t" if self.targets else f"apgd-{self.loss}"

    def params(self):
        return {**declared_values(self), "targets": int(self.targets)}

    def chunk_size(self, n_eps, d, batch_size):
        return max(1, min(batch_size, PGD_CHUNK_ELEMENTS // max(1, n_eps * d)))

    def check_classes(self, program):
        classes = 2 if program.net.output == "sign" else program.net.n_classes
        need = (4 if self.targets else 3) if self.loss == "dlr" else (3 if self.targets else 2)
        if classes < need:
            raise UsageError(f"{self.name} ({self.loss.upper()} loss{', targeted' if self.targets else ''}) needs "
                             f"at least {need} classes; the model has {classes}", hint="use apgd-ce")

    def run_chunk(self, judge, x, y, eps, gradient) -> ChunkOutcome:
        self.check_classes(judge.program)
        k_eps, (n, d) = len(eps), x.shape
        ev = Evaluator(judge, gradient, self.norm == "linf")
        clean_codes = judge.codes(x)
        clean_scores = judge.program.forward(clean_codes)
        clean_pred = judge.program.decide(clean_scores)
        ranked = sorted_classes(clean_scores) if self.targets else None
        first = ranked[:, 1] if self.targets else None
        _, _, g0 = ev.evaluate(x, clean_codes, y, self.loss_fn(y, first), clean=True)
        zero = ~np.any(g0 != 0, axis=1)
        nonfinite = ~np.all(np.isfinite(g0), axis=1)
        rows = k_eps * n
        src = np.tile(np.arange(n), k_eps)
        index = judge.offset + src
        labels = y[src]
        e = np.repeat(np.asarray(eps, np.float64), n)
        pred = np.tile(clean_pred, k_eps)
        best = np.tile(clean_codes, (k_eps, 1))
        found = pred != labels
        bad = np.zeros(rows, bool)
        n_targets = min(int(self.targets), judge.program.net.n_classes - 1) if self.targets else 0
        runs = [(r, t) for t in range(1, n_targets + 1) for r in range(self.restarts)] if self.targets \
            else [(r, 0) for r in range(self.restarts)]
        for run, (_, target_rank) in enumerate(runs):
            idx = np.flatnonzero(~found & (e > 0))
            if idx.size == 0:
                break
            target = ranked[src[idx], target_rank] if self.targets else None
            key = noise.keys(self.seed, eps, run)[idx // n]
            p, codes, hit_bad = self.single_run(ev, judge, x[src[idx]], labels[idx], target, e[idx], key,
                                                index[idx], d)
            hit = p != labels[idx]
            pred[idx[hit]], best[idx[hit]], found[idx[hit]] = p[hit], codes[hit], True
            bad[idx] |= hit_bad
        nonfinite |= bad.reshape(k_eps, n).any(axis=0)
        return ChunkOutcome(pred.reshape(k_eps, n), zero, codes=best.reshape(k_eps, n, d), nonfinite=nonfinite,
                            clean=clean_pred)

    def loss_fn(self, y, target):
        """The loss callable for rows with labels ``y`` (and targets); None: the source's own CE."""
        if target is None:
            return None if self.loss == "ce" else dlr(y)
        return ce_targeted(target) if self.loss == "ce" else dlr_targeted(y, target)

    def single_run(self, ev, judge, x0, y, target, e, key, index, d):
        """One APGD run (the reference's ``attack_single_run``) of ``m`` rows: the decision and
        codes of each row's first adversarial iterate (else of its last), and a NaN/Inf mask."""
        m = len(x0)
        lo, hi = judge.lo, judge.hi
        if self.norm == "linf":
            t = 2.0 * noise.uniform(key, index, d) - 1.0
            start = x0 + e[:, None] * t / np.abs(t).max(axis=1, keepdims=True)
        else:
            t = noise.normal(key, index, d)
            start = x0 + e[:, None] * t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
        cur = np.clip(start, lo, hi)
        pred = np.empty(m, np.int64)
        codes_out = np.empty((m, d), judge.codes(cur[:1]).dtype)
        alive = np.ones(m, bool)
        bad = np.zeros(m, bool)

        def loss_of(a):
            return self.loss_fn(y[a], None if target is None else target[a])

        def judged(a, points):
            codes = judge.codes(points)
            p, value, g = ev.evaluate(points, codes, y[a], loss_of(a))
            finite = np.isfinite(g)
            if not finite.all():
                bad[a[~finite.all(axis=1)]] = True
                g = np.where(finite, g, 0.0)
            pred[a], codes_out[a] = p, codes
            alive[a[p != y[a]]] = False
            return value, g

        every = np.arange(m)
        loss_now, grad = judged(every, cur)
        x_best, grad_best, loss_best = cur.copy(), grad.copy(), loss_now.copy()
        step = START_STEP * e
        x_old = cur.copy()
        loss_steps = np.zeros((self.steps, m))
        k, k_min, decrement = checkpoints(self.steps)
        counter = 0
        best_last_check, reduced_last_check = loss_best.copy(), np.ones(m, bool)
        for i in range(self.steps):
            a = np.flatnonzero(alive)
            if a.size == 0:
                break
            momentum = MOMENTUM if i > 0 else 1.0
            if self.norm == "linf":  # in place: x_old[a] = cur[a], cur[a] = z (linf_step_reference)
                z = linf_step(cur, x_old, x0, a, e, step, grad, momentum, float(lo), float(hi))
            else:
                xa, x0a, ea = cur[a], x0[a], e[a, None]
                previous = xa - x_old[a]
                x_old[a] = xa
                z = l2_project(x0a, xa + step[a, None] * unit(grad[a]), ea, lo, hi)
                z = l2_project(x0a, xa + (z - xa) * momentum + previous * (1 - momentum), ea, lo, hi)
                cur[a] = z
            value, g = judged(a, z)
            grad[a] = g
            loss_steps[i, a] = value
            better = value > loss_best[a]
            x_best[a[better]], grad_best[a[better]], loss_best[a[better]] = z[better], g[better], value[better]
            counter += 1
            if counter == k:
                halve = halving(loss_steps, i, k, self.rho, loss_best, best_last_check, reduced_last_check)
                reduced_last_check, best_last_check = halve, loss_best.copy()
                step[halve] /= 2.0
                cur[halve], grad[halve] = x_best[halve], grad_best[halve]
                k = max(k - decrement, k_min)
                counter = 0
        return pred, codes_out, bad


def linf_step_reference(cur, x_old, x0, a, e, step, grad, momentum, lo, hi) -> np.ndarray:
    """The l-inf APGD step of rows ``a`` (the reference's, in numpy): a signed-gradient step of
    ``step``, projected on the eps-ball around ``x0`` and the bounds, then momentum with the
    previous iterate, projected again; ``x_old[a]`` becomes the current iterate, ``cur[a]`` the
    new one, which is returned. ``linf_step`` computes the same, bit for bit, in one pass."""
    xa, x0a, ea = cur[a], x0[a], e[a, None]
    previous = xa - x_old[a]
    x_old[a] = xa
    z = np.clip(np.clip(xa + step[a, None] * np.sign(grad[a]), x0a - ea, x0a + ea), lo, hi)
    z = np.clip(np.clip(xa + (z - xa) * momentum + previous * (1 - momentum), x0a - ea, x0a + ea), lo, hi)
    cur[a] = z
    return z


@nb.njit(cache=True)
def _clip(v, lo, hi):
    return min(max(v, lo), hi)


@nb.njit(cache=True)
def linf_step(cur, x_old, x0, a, e, step, grad, momentum, lo, hi):
    """``linf_step_reference`` in one Numba pass over rows ``a``: the same float64 operations
    in the same order (no fast-math), without the temporaries of the numpy form."""
    d = cur.shape[1]
    z = np.empty((len(a), d))
    keep = 1.0 - momentum
    for k in range(len(a)):
        i = a[k]
        ei, si = e[i], step[i]
        for j in range(d):
            xa = cur[i, j]
            previous = xa - x_old[i, j]
            x_old[i, j] = xa
            g = grad[i, j]
            sign = 1.0 if g > 0 else (-1.0 if g < 0 else 0.0)
            low, high = x0[i, j] - ei, x0[i, j] + ei
            v = _clip(_clip(xa + si * sign, low, high), lo, hi)
            v = _clip(_clip(xa + (v - xa) * momentum + previous * keep, low, high), lo, hi)
            cur[i, j] = v
            z[k, j] = v
    return z


def unit(g: np.ndarray) -> np.ndarray:
    """``g / (|g|_2 + 1e-12)`` per row (the reference's ``normalize``)."""
    return g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-12)


def l2_project(x0, v, eps, lo, hi):
    """``clip(x0 + unit(v - x0) min(eps, |v - x0|_2), lo, hi)`` (the reference's l2 projection)."""
    delta = v - x0
    size = np.linalg.norm(delta, axis=1, keepdims=True)
    return np.clip(x0 + delta / (size + 1e-12) * np.minimum(eps, size), lo, hi)


class Evaluator:
    """One judged point: the integer model's decisions on its codes, and the loss value and
    gradient from the gradient source at the same point (one integer pass where the source
    fuses with the judged program, ``SurrogateGradient.judged_point``)."""

    def __init__(self, judge, gradient, sign_only: bool):
        self.judge, self.gradient, self.sign_only = judge, gradient, sign_only
        self.fused = callable(getattr(gradient, "fuses_with", None)) and gradient.fuses_with(judge.program)

    def evaluate(self, points, codes, y, loss, clean: bool = False):
        """``(decisions, loss values, gradients)``; ``clean``: float64 (the diagnostics')."""
        program = self.judge.program
        if self.fused and bool(np.all((points >= self.judge.lo) & (points <= self.judge.hi))):
            scores, zs = self.gradient.judged_point(codes)
            value, g = self.gradient.grad_at(zs, y, sign_only=self.sign_only and not clean, loss=loss)
            return program.decide(scores), value, g
        decisions = self.judge.decide(codes)
        if loss is None:
            value, g = self.gradient.value_and_grad(points, y)
        else:
            try:
                value, g = self.gradient.value_and_grad(points, y, loss=loss)
            except TypeError:
                raise UsageError(f"the gradient source '{getattr(self.gradient, 'name', '?')}' takes no loss "
                                 "(value_and_grad(x, y, loss=...)); DLR and targeted APGD need one",
                                 hint="use apgd-ce") from None
        return decisions, np.asarray(value, np.float64), g
