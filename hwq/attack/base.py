"""The attack seam, foolbox style: one call, a list of epsilons, one shared judging loop.

An attack proposes points; the base owns everything that makes the answer trustworthy and
the same for every attack: input checks, chunking, the clean pass, and for every proposed
point ``clip(x', bounds)`` -> the device's input quantization -> the integer model's
decision. Success is judged there, never on a float model. Foolbox's convention: an input
counts as a *success* when the model gets it wrong (clean mistakes included);
``clean_correct`` keeps the two apart.

Writing an attack: subclass :class:`Attack`, set ``name``, give ``params()`` and implement
``run_chunk(judge, x, y, eps, gradient)`` returning a :class:`ChunkOutcome`. ``judge`` is the
shared loop (:class:`Judge`): ``judge.codes(points)`` puts real points on the device grid,
``judge.decide(codes)`` runs the program, ``judge.along(x, d, eps)`` does both for
``x + eps_k d`` at every epsilon in one fused kernel; ``judge.judge(codes, y)`` gives the
decisions and the margin of the integer scores (what score-based attacks minimise) and
counts every query.

Iterative attacks (PGD, Square) keep the worst point found per input and epsilon: the first
judged point the integer model gets wrong, else the clean input. They return those points as
device codes (``ChunkOutcome.codes``), which the base keeps when they fit in memory
(``KEEP_POINTS``) so that ``result.adversarial(k)`` gives the very points that were judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba as nb
import numpy as np

from hwq.errors import DataError
from hwq.quant.reference import quantize_input
from hwq.ranges import check_epsilons

BIG = 1e30  # "unbounded" data range: the input format's saturation does the clipping
CHUNK_ELEMENTS = 2**24  # perturbed codes per evaluation chunk (64 MB of float32)
TRACE_ELEMENTS = 2**23  # a CNN's per-layer values per chunk (64 MB of float64 for each copy a gradient keeps)
KEEP_POINTS = 2**25  # keep the judged points of iterative attacks up to K x N x d codes


@dataclass(frozen=True, eq=False)
class AttackResult:
    epsilons: np.ndarray  # (K,)
    correct: np.ndarray  # (K, N) bool: the integer model is right on the worst point found
    predictions: np.ndarray  # (K, N) int: its decision there
    clean_correct: np.ndarray  # (N,) bool
    zero_gradient: np.ndarray  # (N,) bool: the gradient source gave exactly 0
    x: np.ndarray
    labels: np.ndarray
    bounds: tuple[float, float] | None
    attack: str  # the attack's name ("fgsm", ...)
    params: dict[str, Any]  # its parameters (norm, steps, ...), JSON-serialisable
    gradient: str
    target: str
    direction: np.ndarray | None = None  # (N, d) float32: FGSM's one direction per input
    diagnostics: dict[str, Any] = field(default_factory=dict)
    points: np.ndarray | None = None  # (K, N, d) device codes of the worst point found
    queries: np.ndarray | None = None  # (K, N) int64: model queries spent per input and eps
    nonfinite_gradient: np.ndarray | None = None  # (N,) bool: a NaN/Inf gradient was seen
    members: tuple = ()  # a suite's per-attack results
    input_scale: float = 1.0  # real value of one input code

    @property
    def norm(self) -> str:
        """The attack's norm; a suite's is its members' (a suite states no norm of its own)."""
        if "norm" not in self.params and self.members:
            norms = sorted({m.norm for m in self.members})
            return norms[0] if len(norms) == 1 else ",".join(norms)
        return self.params.get("norm", "linf")

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
        """The perturbed inputs for ``epsilons[k]``: FGSM's before input quantization; for
        iterative attacks the judged points themselves (on the device's input grid)."""
        if self.points is not None:
            return self.points[k].astype(np.float64) * self.input_scale
        if self.direction is None:
            raise DataError(f"the {self.attack} result keeps no adversarial points",
                            hint="attack fewer inputs or strengths at once")
        lo, hi = self.bounds or (-BIG, BIG)
        return np.clip(self.x + self.epsilons[k] * self.direction, lo, hi)


@dataclass(frozen=True, eq=False)
class ChunkOutcome:
    """What an attack found for one chunk of inputs: ``predictions`` (K, n) of the worst point
    per input and epsilon, ``zero_gradient`` (n,), optionally FGSM's ``direction`` (n, d),
    the worst points' device ``codes`` (K, n, d), ``queries`` (K, n), ``nonfinite`` (n,) and
    the ``clean`` decisions (n,) when the attack queried them (saves a query per input)."""

    predictions: np.ndarray
    zero_gradient: np.ndarray
    direction: np.ndarray | None = None
    codes: np.ndarray | None = None
    queries: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    clean: np.ndarray | None = None  # (n,) the clean decisions, when the attack made them


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


class Judge:
    """The shared perturb -> clip -> input quantization -> judge loop for one program."""

    def __init__(self, program, bounds: tuple[float, float] | None):
        self.program, self.fmt = program, program.net.input
        self.lo, self.hi = bounds if bounds is not None else (-BIG, BIG)
        self.single = program.net.output == "sign"
        self.queries = 0  # points sent to the program through judge()
        self.offset = 0  # index of the chunk's first input (seeds random attacks per chunk)

    def codes(self, points: np.ndarray) -> np.ndarray:
        """Real points -> clip to the data bounds -> the device's input codes."""
        return quantize_input(self.fmt, np.clip(points, self.lo, self.hi)).astype(code_dtype(self.fmt))

    def decide(self, codes: np.ndarray) -> np.ndarray:
        return self.program.decide(self.program.forward(codes))

    def judge(self, codes: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decisions and margins of the integer model on ``codes`` for labels ``y``; the
        decision is the program's own (``decide``), the margin only ranks points."""
        scores = self.program.forward(codes)
        self.queries += len(codes)
        return self.program.decide(scores), margin(scores, y, self.single)

    def along(self, x: np.ndarray, direction: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Decisions (K, n) on ``x + eps_k * direction`` for every epsilon, fused."""
        codes = np.empty((len(eps) * len(x), x.shape[1]), code_dtype(self.fmt))
        perturb_quantize(x, np.asarray(direction, np.float32), eps, self.lo, self.hi,
                         self.fmt.inv_scale, self.fmt.qmin, self.fmt.qmax, codes)
        return self.decide(codes).reshape(len(eps), -1)


def margin(scores: np.ndarray, y: np.ndarray, single: bool) -> np.ndarray:
    """Margin of the true label on integer scores, > 0 exactly where ``reference.decide`` is
    right: argmax (lowest index wins ties): ``min(s_y - max_{j<y} s_j - 1/2,
    s_y - max_{j>y} s_j + 1/2)``; one sign output: ``s`` for label 1, ``1/2 - s`` for 0."""
    s = np.asarray(scores, np.float64)
    if single:
        return np.where(y == 1, s[:, 0], 0.5 - s[:, 0])
    out = np.empty(len(y), np.float64)
    _argmax_margin(s, np.asarray(y, np.int64), out)
    return out


@nb.njit(cache=True)
def _argmax_margin(s, y, out):
    """``margin`` of argmax scores, row by row: ``s_y - max_j (s_j + 1/2 if j < y else s_j - 1/2)``
    (``-inf`` when there is one class). Every term is a float64 sum, as numpy would compute it."""
    for r in range(s.shape[0]):
        t = y[r]
        best = -np.inf
        for j in range(s.shape[1]):
            if j != t:
                v = s[r, j] + 0.5 if j < t else s[r, j] - 0.5
                if v > best:
                    best = v
        out[r] = s[r, t] - best


class Attack:
    """Base of every attack: ``attack.run(program, x, y, epsilons, gradient)``."""

    name = "attack"
    needs_gradient = True

    def params(self) -> dict[str, Any]:
        return {}

    def chunk_size(self, n_eps: int, d: int, batch_size: int) -> int:
        return max(1, min(batch_size, CHUNK_ELEMENTS // max(1, n_eps * d)))

    def run_chunk(self, judge: Judge, x, y, eps, gradient) -> ChunkOutcome:
        raise NotImplementedError

    def run(self, program, x, y, epsilons, gradient=None, *, bounds=None, batch_size: int = 2048,
            progress: Callable[[int], None] | None = None) -> AttackResult:
        """Attack ``program`` on real inputs ``x`` (N, d) with labels ``y`` at every epsilon.
        ``gradient`` None: the surrogate of the judged program's bit-exact model."""
        from hwq.attack.gradients import default_gradient

        x, y = check_inputs(program, x, y)
        eps = check_epsilons(epsilons)
        if gradient is None and self.needs_gradient:
            gradient = default_gradient(program)
        judge = Judge(program, bounds)
        n, d = x.shape
        preds = np.empty((len(eps), n), np.int64)
        clean, zero = np.empty(n, np.int64), np.zeros(n, bool)
        direction = codes = queries = nonfinite = None
        keep = len(eps) * n * d <= KEEP_POINTS
        step = self.chunk_size(len(eps), d, batch_size)
        if not program.net.dense:  # a CNN's feature maps outgrow its input: bound what a gradient keeps
            step = min(step, max(1, TRACE_ELEMENTS // sum(node.n_out for node in program.net.layers)))
        for start in range(0, n, step):
            sl = slice(start, min(n, start + step))
            judge.offset = start
            out = self.run_chunk(judge, x[sl], y[sl], eps, gradient)
            clean[sl] = out.clean if out.clean is not None else judge.decide(
                quantize_input(program.net.input, x[sl]))
            preds[:, sl], zero[sl] = out.predictions, out.zero_gradient
            if out.direction is not None:
                if direction is None:
                    direction = np.empty((n, d), np.float32)
                direction[sl] = out.direction
            if out.codes is not None and keep:
                if codes is None:
                    codes = np.empty((len(eps), n, d), out.codes.dtype)
                codes[:, sl] = out.codes
            if out.queries is not None:
                if queries is None:
                    queries = np.zeros((len(eps), n), np.int64)
                queries[:, sl] = out.queries
            if out.nonfinite is not None:
                if nonfinite is None:
                    nonfinite = np.zeros(n, bool)
                nonfinite[sl] = out.nonfinite
            if progress:
                progress(sl.stop - sl.start)
        return AttackResult(eps, preds == y, preds, clean == y, zero, x, y,
                            None if bounds is None else tuple(bounds), self.name, self.params(),
                            getattr(gradient, "name", "none") if self.needs_gradient else "none",
                            program.target, direction, points=codes, queries=queries,
                            nonfinite_gradient=nonfinite, input_scale=program.net.input.scale)


def check_inputs(program, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != program.net.n_features:
        if program.net.input_shape:  # a CNN: name the maps it reads
            from hwq.ir.graph import shape_text

            raise DataError(f"the model takes {shape_text(program.net.input_shape)}, the data has {x.shape[1]} "
                            "features per sample")
        raise DataError(f"data has {x.shape[1]} features per sample, the model expects {program.net.n_features}")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),) or (y.size and (y.min() < 0 or y.max() >= program.net.n_classes)):
        raise DataError(f"labels must be {len(x)} integers in 0..{program.net.n_classes - 1}")
    return x, y
