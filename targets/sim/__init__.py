"""``sim``: the bit-accurate integer simulator (Numba + exact BLAS paths).

Each layer's product ``h @ W.T`` runs in float32 BLAS when ``sum|W_row| * max|h| < 2^24``,
in float64 BLAS below 2^53 (every partial sum is then an exactly representable integer), and
in a Numba int64 loop otherwise. Bias, requantization and activations run in one Numba kernel.
Outputs equal ``hwq.reference`` bit for bit (tests/test_sim.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwq.qnet import SIGMOID_INDEX_BITS, QLayer, QuantizedNetwork
from hwq.reference import decide

from . import kernels

NAME = "sim"


@dataclass
class CompiledLayer:
    layer: QLayer
    path: str  # "float32", "float64" or "int64"
    weight_t: np.ndarray
    mode: int
    act_max: int
    lut: np.ndarray

    @classmethod
    def build(cls, layer: QLayer) -> CompiledLayer:
        products = int(np.max(np.abs(layer.weight).sum(axis=1))) * layer.in_max
        path = "float32" if products < kernels.F32_EXACT else (
            "float64" if products < kernels.F64_EXACT else "int64")
        dtype = {"float32": np.float32, "float64": np.float64, "int64": np.int64}[path]
        w_t = np.ascontiguousarray(layer.weight.T, dtype=dtype)
        lut = layer.lut if layer.lut is not None else np.zeros(1, np.int64)
        act_max = 2**layer.act_bits - 1 if layer.activation == "relu" else 0
        return cls(layer, path, w_t, kernels.MODES[layer.activation], act_max, lut)

    def __call__(self, h: np.ndarray, out_dtype, activate: bool = True) -> np.ndarray:
        """The layer's output codes; ``activate=False`` gives the accumulator ``acc``."""
        if self.path == "int64":
            acc = kernels.int_matmul(np.ascontiguousarray(h, dtype=np.int64), self.weight_t)
        else:
            acc = np.asarray(h, dtype=self.weight_t.dtype) @ self.weight_t
        rq = self.layer.requant
        mult = rq.multiplier if rq is not None else np.zeros(1, np.int64)
        shift = rq.shift if rq is not None else np.zeros(1, np.int64)
        out = np.empty(acc.shape, dtype=out_dtype)
        mode = self.mode if activate else kernels.MODES["identity"]
        kernels.finish_layer(acc, self.layer.bias, mult, shift, mode, self.act_max,
                             self.lut, 2 ** (SIGMOID_INDEX_BITS - 1), out)
        return out


@dataclass
class SimProgram:
    net: QuantizedNetwork
    target: str = NAME
    artifacts: dict[str, Any] = field(default_factory=dict)
    layers: list[CompiledLayer] = field(init=False)

    def __post_init__(self):
        self.layers = [CompiledLayer.build(layer) for layer in self.net.layers]

    @property
    def report(self) -> dict[str, Any]:
        return {"products": [c.path for c in self.layers]}

    def _next_dtype(self, i: int):
        nxt = self.layers[i + 1].path if i + 1 < len(self.layers) else None
        return {"float32": np.float32, "float64": np.float64}.get(nxt, np.int64)

    def accumulators(self, x_q: np.ndarray) -> list[np.ndarray]:
        h, accs = x_q, []
        for i, c in enumerate(self.layers):
            accs.append(c(h, np.int64, activate=False))
            if i + 1 < len(self.layers):
                h = c(h, self._next_dtype(i))
        return accs

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        """Integer scores (N, n_out) for integer-valued input codes ``x_q`` (any numeric dtype)."""
        h = x_q
        for i, c in enumerate(self.layers):
            h = c(h, self._next_dtype(i) if i + 1 < len(self.layers) else np.int64)
        return h

    def trace(self, x_q: np.ndarray) -> list[np.ndarray]:
        """Real pre-activations ``z = acc * acc_scale`` of every layer."""
        return [acc * c.layer.acc_scale for acc, c in zip(self.accumulators(x_q), self.layers)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return decide(scores, self.net.output)


class SimTarget:
    name = NAME

    def compile(self, net: QuantizedNetwork, **options: Any) -> SimProgram:
        return SimProgram(net)

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any]) -> SimProgram:
        return SimProgram(net, artifacts=dict(artifacts))
