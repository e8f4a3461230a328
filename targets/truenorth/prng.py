"""hwq's own pseudo-random numbers for the stochastic modes (the hardware's LFSR and draw order
are not public: shared/specs/truenorth.md section 2).

Every draw is addressed, not sequential: the draw for (core seed, frame, tick, neuron,
purpose, axon) is ``splitmix64`` chained over those fields::

    h = mix(seed + 0x9E3779B97F4A7C15 * (frame + 1))
    h = mix(h ^ (tick * 0xD1B54A32D192ED03))
    u = mix(h ^ (purpose << 16 | neuron << 8 | axon))          # 64 random bits

with purpose 0 for a synapse (axon ``i``), 1 for the leak, 2 for the threshold (axon 0).
``rho = u & 255`` (8 bits) for synapses and leak; the threshold draw is
``eta = (u >> 8) & (2^TM - 1)``. Addressed draws make results independent of evaluation
order and of how frames are batched: frame ``f`` of a batch started at ``frame_offset`` uses
frame index ``frame_offset + f``.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
TICK_MUL = np.uint64(0xD1B54A32D192ED03)
C1, C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
SYNAPSE, LEAK, THRESHOLD = 0, 1, 2


def mix(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> np.uint64(30))) * C1
    z = (z ^ (z >> np.uint64(27))) * C2
    return z ^ (z >> np.uint64(31))


def draws(seed: int, frames: np.ndarray, tick: int, purpose: int, neurons: np.ndarray,
          axons: np.ndarray | int = 0) -> np.ndarray:
    """64-bit draws, broadcast over ``frames``, ``neurons`` and ``axons``."""
    with np.errstate(over="ignore"):
        f = np.asarray(frames, np.uint64) + np.uint64(1)
        h = mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + GOLDEN * f)
        h = mix(h ^ (np.uint64(tick) * TICK_MUL))
        key = (np.uint64(purpose) << np.uint64(16)) | (np.asarray(neurons, np.uint64) << np.uint64(8)) \
            | np.asarray(axons, np.uint64)
        return mix(h ^ key)


def rho8(u: np.ndarray) -> np.ndarray:
    return (u & np.uint64(255)).astype(np.int32)


def threshold_noise(u: np.ndarray, tm: np.ndarray) -> np.ndarray:
    mask = (np.uint64(1) << np.asarray(tm, np.uint64)) - np.uint64(1)
    return ((u >> np.uint64(8)) & mask).astype(np.int32)
