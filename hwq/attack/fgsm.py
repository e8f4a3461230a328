"""FGSM, foolbox's fast gradient method, as pure configuration of the attack base.

One gradient per input, one direction reused for every epsilon: ``linf``: ``d = sign(g)``
(the paper's FGSM); ``l2``: ``d = g / |g|_2``. The points ``x + eps_k d`` of all epsilons are
judged in one fused pass (``Judge.along``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.attack.base import Attack, ChunkOutcome
from hwq.params import declared_values, param
from hwq.ranges import check_norm


@dataclass(frozen=True)
class FGSM(Attack):
    norm: str = param("linf", help="Norm: linf (the paper's) | l2.")
    name = "fgsm"

    def __post_init__(self):
        check_norm(self.norm)

    def params(self):
        return declared_values(self)

    def direction(self, grad: np.ndarray) -> np.ndarray:
        if self.norm == "linf":
            return np.sign(grad).astype(np.float32)
        norms = np.linalg.norm(grad, axis=1, keepdims=True)
        return np.divide(grad, norms, out=np.zeros_like(grad), where=norms > 0).astype(np.float32)

    def run_chunk(self, judge, x, y, eps, gradient) -> ChunkOutcome:
        _, grad = gradient.value_and_grad(x, y)
        direction = self.direction(grad)
        return ChunkOutcome(judge.along(x, direction, eps), ~np.any(grad != 0, axis=1), direction)
