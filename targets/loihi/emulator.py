"""The batched emulator: Loihi's integer arithmetic for thousands of inputs at once.

Each synapse group's product ``h @ D.T`` runs in float32 BLAS when every partial sum is
below 2^24, in float64 BLAS below 2^53 (both exact for integers), and in a Numba int64 loop
otherwise; the shifts, 24-bit wrap and saturation, thresholds and biases run in Numba
kernels (``kernels.py``). Its outputs equal Lava's fixed-point models bit for bit
(tests/test_loihi_lava.py) and the step-by-step spec (tests/test_loihi.py).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .mapping import LayerMap, Mapping

F32_EXACT, F64_EXACT = 2**24, 2**53
KINDS = {"lif": 0, "relu": 1, "identity": 2}
NONE = np.empty((0, 0), np.int64)
CHUNK_ROWS = 32768


def product_dtype(lm: LayerMap):
    peak = max(abs(lm.in_range[0]), abs(lm.in_range[1]))
    bound = max(int(np.abs(s.digits).sum(axis=1).max(initial=0)) for s in lm.sets) * peak
    return np.float32 if bound < F32_EXACT else (np.float64 if bound < F64_EXACT else np.int64)


class CompiledLayer:
    def __init__(self, lm: LayerMap, variant: int):
        self.lm, self.variant = lm, variant
        self.dtype = product_dtype(lm)
        self.w_t = [np.ascontiguousarray(s.digits.T, dtype=self.dtype) for s in lm.sets]
        self.exps = [s.exp for s in lm.sets]
        self.kind = KINDS[lm.kind]
        self.bias = np.ascontiguousarray(lm.bias, dtype=np.int64)

    def product(self, h: np.ndarray, g: int) -> np.ndarray:
        return kernels.int_matmul(h, self.w_t[g]) if self.dtype is np.int64 else h @ self.w_t[g]

    def inputs(self, h: np.ndarray, groups: int | None = None) -> np.ndarray:
        """``a = sum_s shift(h @ D_s.T, E_s)`` (int64) over the first ``groups`` groups."""
        a = np.zeros((len(h), self.lm.n_out), np.int64)
        for g in range(len(self.w_t) if groups is None else groups):
            kernels.add_shifted(self.product(h, g), self.exps[g], self.variant, a)
        return a

    def __call__(self, h, out_dtype, pres=None) -> np.ndarray:
        h = np.ascontiguousarray(h, dtype=self.dtype)
        out = np.empty((len(h), self.lm.n_out), dtype=out_dtype)
        if pres is not None:  # keep a for trace
            a = self.inputs(h)
            pres.append(a)
            y, e, rest = a, 0, NONE
        else:  # fuse the last group's shift into the neuron kernel
            last = len(self.w_t) - 1
            y, e = self.product(h, last), self.exps[last]
            rest = self.inputs(h, last) if last else NONE
        kernels.fused(y, e, rest, self.kind, self.bias, self.lm.theta, self.variant, out)
        return out


class Emulator:
    """``run(x_q)`` -> int64 scores; ``inputs(x_q)`` -> every layer's ``a`` (int64)."""

    def __init__(self, mapping: Mapping, variant: str = "exact"):
        if variant not in kernels.VARIANTS:
            raise ValueError(f"unknown emulator variant {variant!r}")
        self.mapping = mapping
        self.layers = [CompiledLayer(lm, kernels.VARIANTS[variant]) for lm in mapping.layers]

    def _out_dtype(self, i: int):
        return self.layers[i + 1].dtype if i + 1 < len(self.layers) else np.int64

    def _chunk(self, x: np.ndarray, pres: list | None) -> np.ndarray:
        h = x
        for i, c in enumerate(self.layers):
            h = c(h, self._out_dtype(i), pres)
        return h

    def run(self, x_q: np.ndarray) -> np.ndarray:
        x_q = np.asarray(x_q)
        n_out = self.layers[-1].lm.n_out
        if len(x_q) <= CHUNK_ROWS:
            return self._chunk(x_q, None)
        out = np.empty((len(x_q), n_out), np.int64)
        for start in range(0, len(x_q), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self._chunk(x_q[start:start + CHUNK_ROWS], None)
        return out

    def inputs(self, x_q: np.ndarray) -> list[np.ndarray]:
        pres: list[np.ndarray] = []
        self._chunk(np.asarray(x_q), pres)
        return pres
