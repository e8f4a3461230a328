"""The compiled loihi program: one mapping, two ways to run it, one answer."""

from __future__ import annotations

import numpy as np

from hwq.errors import DataError
from hwq.quant.qnet import QLayer, QuantizedNetwork
from hwq.quant.reference import decide
from hwq.target.protocol import refuse_outside_format

from .artifacts import to_artifacts
from .emulator import Emulator
from .limits import ACT_SHIFT, Limits
from .mapping import LayerMap, Mapping
from .report import build_report

NAME = "loihi"
BACKENDS = ("emulator", "lava")


def offset(lm: LayerMap) -> np.ndarray:
    """What the neuron adds to ``a`` before its decision, in units of ``a``."""
    if lm.neuron == "lif":
        return lm.expand(lm.bias - lm.theta) / 2.0**ACT_SHIFT
    return lm.expand(lm.bias).astype(np.float64)


class LoihiProgram:
    """``forward`` runs the emulator (default) or Lava's CPU fixed-point processes; both give
    the same int64 scores. ``trace`` always uses the emulator (bit-identical)."""

    target = NAME

    def __init__(self, net: QuantizedNetwork, mapping: Mapping, limits: Limits,
                 backend: str = "emulator"):
        self.net, self.mapping, self.limits, self.backend = net, mapping, limits, backend
        self.report = build_report(net, mapping, limits, backend)  # refuses what does not fit the chips
        self.emulator = Emulator(mapping, fuse_pools=True)  # a direct conv and its pooling in one pass
        self.artifacts = to_artifacts(mapping, limits, backend)
        self.options = {"backend": backend}
        # Decisions equal the integer reference only where the mapping changed nothing
        # (ReLU rescaling as a power of two, floored sums ... are listed as adjustments).
        self.exact = not self.report.get("adjustments")

    def _check(self, x_q) -> np.ndarray:
        x_q = np.asarray(x_q)
        if x_q.ndim != 2 or x_q.shape[1] != self.net.n_features:
            raise DataError(f"inputs must have shape (N, {self.net.n_features}), got {x_q.shape}")
        refuse_outside_format(NAME, self.net.input, x_q)  # shifts, offsets and 24-bit state fit the format
        return x_q

    def forward(self, x_q) -> np.ndarray:
        """Integer scores (N, n_out) for integer-valued input codes (any numeric dtype)."""
        x_q = self._check(x_q)
        if self.backend == "lava" and len(x_q):
            from .lavanet import run_lava

            return run_lava([self.mapping], x_q)[0]
        return self.emulator.run(x_q)

    def trace(self, x_q) -> list[np.ndarray]:
        """Real pre-activations per layer: ``z = unit * (a + offset)``, the Loihi operating point
        (``z > 0`` exactly where a step neuron fires or a ReLU passes)."""
        inputs = self.emulator.inputs(self._check(x_q))
        return [lm.expand(lm.unit) * (a + offset(lm)) for a, lm in zip(inputs, self.mapping.layers)]

    def surrogate_layers(self) -> tuple[list[np.ndarray], list[None]]:
        """What the surrogate gradient backpropagates (``hwq.attack.gradients``): the real
        weights Loihi computes with (rounded where the mapping rounds them) and no ReLU
        saturation (a Loihi ReLU has no upper clip, docs/loihi.md section 5)."""
        weights = [lm.effective_codes() * layer.weight_scale[:, None] if isinstance(layer, QLayer) else None
                   for lm, layer in zip(self.mapping.layers, self.net.layers)]
        return weights, [None] * len(weights)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return decide(scores, self.net.output)
