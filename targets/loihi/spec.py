"""The Lava process graph, step by step, in plain numpy: the living spec of the loihi target.

It runs the very processes ``lavanet.py`` builds, with the arithmetic of Lava 0.10.0's CPU
fixed-point models (shared/specs/lava_fixed_point.md): Dense weights as Lava clips
and truncates them, one step of Dense latency, sums floored by ``weight_exp``, graded or
binary payloads, LIFReset with 24-bit wrap and saturation, SigmaDelta, GradedVec and Sigma.
Samples are presented back to back, one per step; sample k's scores are the output SigmaDelta's ``act``
at step ``k + 1 + L``. Slow and literal: the tests compare the emulator with it.
"""

from __future__ import annotations

import numpy as np

from .conv import dense_view
from .limits import ACT_SHIFT, STATE_MAX, STATE_WRAP
from .mapping import LayerMap, Mapping
from .synapses import lava_effective, shift


class DenseSpec:
    def __init__(self, weights, weight_exp, mode, binary):
        self.w = lava_effective(weights, mode)
        self.exp, self.binary = weight_exp, binary
        self.buf = np.zeros(self.w.shape[0], np.int64)

    def step(self, s_in) -> np.ndarray:
        """Send the buffer of the previous step; accumulate this step's input."""
        sent = self.buf
        s = (s_in != 0).astype(np.int64) if self.binary else s_in
        self.buf = shift(self.w @ s, self.exp)
        return sent


class LifResetSpec:
    """LIFReset with reset_interval 1: u = v = 0 before every update."""

    def __init__(self, lm: LayerMap):
        self.b, self.theta = lm.bias, lm.theta

    def step(self, a) -> np.ndarray:
        u = a << ACT_SHIFT
        u = np.where(u > STATE_WRAP, u - 2 * STATE_WRAP, np.where(u <= -STATE_WRAP, u + 2 * STATE_WRAP, u))
        v = np.clip(u + self.b, -STATE_MAX, STATE_MAX)
        return (v > self.theta).astype(np.int64)


class SigmaDeltaSpec:
    """SigmaDelta with vth 0 and state_exp 0: sigma += a_in; act = f(sigma + B); send delta."""

    def __init__(self, n, bias, relu):
        self.bias = bias
        self.relu = relu
        self.sigma = np.zeros(n, np.int64)
        self.act = np.zeros(n, np.int64)

    def step(self, a) -> np.ndarray:
        self.sigma = self.sigma + a
        act = self.sigma + self.bias
        act = np.maximum(act, 0) if self.relu else act
        delta, self.act = act - self.act, act
        return delta


class LayerSpec:
    """Dense groups -> neuron; SigmaDelta layers add the relay/cancel path and a Sigma. The
    GradedVec relay (v = a_in, send v if |v| > 0, v = 0) is the identity."""

    def __init__(self, lm: LayerMap, hidden: bool):
        binary = lm.in_bits == 0
        self.dense = [DenseSpec(s.lava_weights, s.lava_weight_exp, s.mode, binary)
                      for s in lm.sets]
        self.lif = lm.neuron == "lif"
        n = lm.n_out
        if self.lif:
            self.neuron = LifResetSpec(lm)
            return
        self.neuron = SigmaDeltaSpec(n, lm.bias, relu=lm.neuron == "relu")
        self.cancel = DenseSpec(-np.eye(n, dtype=np.int64), 0, "inhibitory", False)
        self.hidden = hidden
        self.integral = np.zeros(n, np.int64)

    def step(self, s_in) -> np.ndarray:
        a = sum(d.step(s_in) for d in self.dense)
        if self.lif:
            return self.neuron.step(a)
        back = self.cancel.buf
        msg = self.neuron.step(a + back)
        self.cancel.step(a)  # the GradedVec relay (vth 0) passes a on unchanged
        if not self.hidden:
            return self.neuron.act
        self.integral = self.integral + msg
        return self.integral


def run_spec(mapping: Mapping, x_q: np.ndarray) -> np.ndarray:
    """Scores (S, n_out) of S samples presented back to back from a RingBuffer."""
    x = np.asarray(x_q, dtype=np.int64)
    n_layers = len(mapping.layers)
    layers = [LayerSpec(dense_view(lm), i + 1 < n_layers) for i, lm in enumerate(mapping.layers)]
    rows = []
    for t in range(len(x) + n_layers):
        msg = x[t % len(x)]  # the RingBuffer wraps around
        for layer in layers:
            msg = layer.step(msg)
        rows.append(msg)
    return np.array(rows[n_layers:n_layers + len(x)], dtype=np.int64)
