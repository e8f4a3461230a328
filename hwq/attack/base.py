"""FGSM against the bit-exact model, foolbox style: one call, a list of epsilons.

The attack proposes a direction per input from a gradient source (computed once, reused for
every epsilon); the shared loop builds ``x_adv = clip(x + eps * d, bounds)``, puts it on the
device's input grid, runs the target's integer forward pass and judges it there. Foolbox's
convention: an input counts as a *success* when the model gets it wrong (clean mistakes
included); ``clean_correct`` keeps the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba as nb
import numpy as np

from hwq.epsilons import check_epsilons
from hwq.errors import DataError, UsageError
from hwq.gradients import GradientSource, SurrogateGradient
from hwq.reference import quantize_input

BIG = 1e30  # "unbounded" data range: the input format's saturation does the clipping
CHUNK_ELEMENTS = 2**24  # perturbed codes per evaluation chunk (64 MB of float32)


@dataclass(frozen=True)
class FGSM:
    """Fast gradient method. ``linf``: ``d = sign(g)`` (the paper's FGSM); ``l2``: ``d = g / |g|_2``."""

    norm: str = "linf"

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise UsageError(f"unknown norm '{self.norm}'", hint="use linf or l2")

    def direction(self, grad: np.ndarray) -> np.ndarray:
        if self.norm == "linf":
            return np.sign(grad).astype(np.float32)
        norms = np.linalg.norm(grad, axis=1, keepdims=True)
        return np.divide(grad, norms, out=np.zeros_like(grad), where=norms > 0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class AttackResult:
    epsilons: np.ndarray  # (K,)
    correct: np.ndarray  # (K, N) bool: the integer model is right on x_adv(eps_k)
    predictions: np.ndarray  # (K, N) int
    clean_correct: np.ndarray  # (N,) bool
    zero_gradient: np.ndarray  # (N,) bool: the gradient source gave exactly 0
    direction: np.ndarray  # (N, d) float32
    x: np.ndarray
    labels: np.ndarray
    bounds: tuple[float, float] | None
    norm: str
    gradient: str
    target: str

    @property
    def success(self) -> np.ndarray:
        return ~self.correct

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct.mean(axis=1)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def relative_accuracy(self) -> np.ndarray:
        return self.accuracy / self.clean_accuracy if self.clean_accuracy > 0 else np.zeros_like(self.accuracy)

    def adversarial(self, k: int) -> np.ndarray:
        """The perturbed inputs for ``epsilons[k]`` (before input quantization)."""
        lo, hi = self.bounds or (-BIG, BIG)
        return np.clip(self.x + self.epsilons[k] * self.direction, lo, hi)


@nb.njit(parallel=True, cache=True)
def perturb_quantize(x, direction, eps, lo, hi, inv_scale, qmin, qmax, out):
    """``out[k*N + i] = clip(floor(clip(x_i + eps_k d_i, lo, hi) * inv_scale + 1/2), qmin, qmax)``:
    the points of every epsilon, already on the device's input grid (integer codes)."""
    n, d = x.shape
    for k in nb.prange(eps.shape[0]):
        e = eps[k]
        for i in range(n):
            for j in range(d):
                v = min(max(x[i, j] + e * direction[i, j], lo), hi)
                q = np.floor(v * inv_scale + 0.5)
                out[k * n + i, j] = min(max(q, qmin), qmax)


def code_dtype(fmt) -> np.dtype:
    """The narrowest container for the device's input codes (less memory traffic per point)."""
    if fmt.bits <= 8:
        return np.dtype(np.int8 if fmt.signed else np.uint8)
    return np.dtype(np.int16 if fmt.signed else np.uint16)


def evaluate_codes(program, x_q: np.ndarray) -> np.ndarray:
    return program.decide(program.forward(x_q))


def check_inputs(program, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != program.net.n_features:
        raise DataError(f"data has {x.shape[1]} features per sample, the model expects {program.net.n_features}")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),) or (y.size and (y.min() < 0 or y.max() >= program.net.n_classes)):
        raise DataError(f"labels must be {len(x)} integers in 0..{program.net.n_classes - 1}")
    return x, y


def attack(
    program,
    x: np.ndarray,
    y: np.ndarray,
    epsilons,
    *,
    method: FGSM = FGSM(),
    gradient: GradientSource | None = None,
    bounds: tuple[float, float] | None = None,
    batch_size: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """Attack ``program`` (a compiled target program) on inputs ``x`` with labels ``y``."""
    x, y = check_inputs(program, x, y)
    eps = check_epsilons(epsilons)
    gradient = gradient or SurrogateGradient(program)
    fmt = program.net.input
    lo, hi = bounds if bounds is not None else (-BIG, BIG)
    n, d = x.shape
    direction = np.empty((n, d), np.float32)
    zero = np.empty(n, bool)
    preds = np.empty((len(eps), n), np.int64)
    clean = np.empty(n, np.int64)
    step = max(1, min(batch_size, CHUNK_ELEMENTS // max(1, len(eps) * d)))
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        _, grad = gradient.value_and_grad(x[sl], y[sl])
        zero[sl] = ~np.any(grad != 0, axis=1)
        direction[sl] = method.direction(grad)
        clean[sl] = evaluate_codes(program, quantize_input(fmt, x[sl]))
        codes = np.empty((len(eps) * (sl.stop - sl.start), d), code_dtype(fmt))
        perturb_quantize(x[sl], direction[sl], eps, lo, hi, fmt.inv_scale, fmt.qmin, fmt.qmax, codes)
        preds[:, sl] = evaluate_codes(program, codes).reshape(len(eps), -1)
        if progress:
            progress(sl.stop - sl.start)
    return AttackResult(eps, preds == y, preds, clean == y, zero, direction, x, y,
                        None if bounds is None else tuple(bounds), method.norm, gradient.name,
                        program.target)
