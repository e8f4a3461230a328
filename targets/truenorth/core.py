"""The state of a TrueNorth model: cores of 256 axons x 256 neurons (shared/specs/truenorth.md).

A :class:`Model` is a value: a tuple of :class:`Core` (addressed by ``id``), each holding its
binary crossbar ``w[axon, neuron]``, the axon types ``G[axon]`` and a :class:`Neurons` table
with one entry per neuron slot. Arrays are read-only.

Per neuron ``j`` (spec section 2):

* ``weight[j, g] = sigma_g * s_g`` in -255..255, the weight an active axon of type ``g`` adds;
* ``stochastic[j, g]`` (``b_g``), ``leak`` (``sigma_lambda * lambda``, -255..255),
  ``stochastic_leak`` (``c_lambda``), ``leak_reversal`` (``epsilon``);
* ``alpha``, ``beta`` >= 0, threshold mask width ``tm`` (``M = 2^TM - 1``);
* ``gamma`` (0 normal, 1 linear, 2 non-reset), ``kappa`` (negative saturation);
* ``reset`` ``R = sigma_VR * (2^VR - 1)`` and the initial potential ``v0``;
* one destination ``(dest_core, dest_axon, dest_delay)``: ``dest_core == -1`` is unused, other
  negative values are off-chip outputs, delays 1..15.

``exists[j]`` is False for slots whose ``types`` entry is 0 (no neuron): they never fire.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from hwq.errors import FileFormatError

AXONS = 256
NEURONS = 256
TYPES = 4
SLOTS = 16  # scheduler tick slots (delays 1..15)
MAX_DELAY = 15
CHIP_CORES = 4096
WEIGHT_MAX = 255
LEAK_MAX = 255
THRESHOLD_BITS = 18  # alpha, beta: believed 18 bits (spec section 2, [P*])
MAX_TM = 18
MAX_VR = 18
UNUSED = -1  # destCore of a neuron without a destination


def frozen_array(values, dtype, shape) -> np.ndarray:
    a = np.array(values, dtype=dtype)
    if a.shape != shape:
        raise FileFormatError(f"expected an array of shape {shape}, got {a.shape}")
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Neurons:
    """The 256 neuron slots of one core; every field has one row per neuron."""

    exists: np.ndarray
    weight: np.ndarray
    stochastic: np.ndarray
    leak: np.ndarray
    stochastic_leak: np.ndarray
    leak_reversal: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    tm: np.ndarray
    gamma: np.ndarray
    kappa: np.ndarray
    reset: np.ndarray
    v0: np.ndarray
    dest_core: np.ndarray
    dest_axon: np.ndarray
    dest_delay: np.ndarray

    DTYPES = {"exists": bool, "weight": np.int32, "stochastic": bool, "leak": np.int32,
              "stochastic_leak": bool, "leak_reversal": bool, "alpha": np.int32, "beta": np.int32,
              "tm": np.int32, "gamma": np.int32, "kappa": bool, "reset": np.int32, "v0": np.int32,
              "dest_core": np.int64, "dest_axon": np.int32, "dest_delay": np.int32}

    def __post_init__(self):
        for f in fields(self):
            shape = (NEURONS, TYPES) if f.name in ("weight", "stochastic") else (NEURONS,)
            object.__setattr__(self, f.name, frozen_array(getattr(self, f.name), self.DTYPES[f.name], shape))

    @classmethod
    def empty(cls) -> Neurons:
        """256 absent neurons (``types`` all 0)."""
        z = np.zeros(NEURONS, np.int64)
        return cls(exists=z.astype(bool), weight=np.zeros((NEURONS, TYPES)),
                   stochastic=np.zeros((NEURONS, TYPES), bool), leak=z, stochastic_leak=z,
                   leak_reversal=z, alpha=z, beta=z, tm=z, gamma=z, kappa=z, reset=z, v0=z,
                   dest_core=z - 1, dest_axon=z, dest_delay=z + 1)

    def replace(self, **changes) -> Neurons:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Neurons(**values)

    @property
    def deterministic(self) -> np.ndarray:
        """Neurons without stochastic synapses, leak or threshold (the matrix-product path)."""
        return ~self.stochastic.any(axis=1) & ~self.stochastic_leak & (self.tm == 0)


@dataclass(frozen=True)
class Core:
    """One neurosynaptic core: crossbar ``w[axon, neuron]``, axon types and neurons."""

    id: int
    crossbar: np.ndarray
    axon_type: np.ndarray
    neurons: Neurons
    rng_seed: int = 0
    time_scale_exponent: int = 0
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "crossbar", frozen_array(self.crossbar, bool, (AXONS, NEURONS)))
        object.__setattr__(self, "axon_type", frozen_array(self.axon_type, np.int8, (AXONS,)))
        if np.any((self.axon_type < 0) | (self.axon_type >= TYPES)):
            raise FileFormatError(f"core {self.id}: axon types must be 0..{TYPES - 1}")

    def effective_weights(self) -> np.ndarray:
        """``W_eff[i, j] = w[i, j] * s_j^{G_i}`` (int32, axons x neurons), the deterministic
        synaptic weights (spec section 6)."""
        per_axon = self.neurons.weight[:, self.axon_type].T  # [i, j] = s_j^{G_i}
        return np.where(self.crossbar, per_axon, 0).astype(np.int32)


@dataclass(frozen=True)
class Model:
    """A TrueNorth network: cores addressed by ``id`` (ids need not be contiguous)."""

    cores: tuple[Core, ...]
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "cores", tuple(self.cores))
        ids = [c.id for c in self.cores]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise FileFormatError(f"core ids must be unique, repeated: {dup[:5]}")

    @property
    def ids(self) -> np.ndarray:
        return np.array([c.id for c in self.cores], np.int64)

    def index(self) -> dict[int, int]:
        """Core id -> position in ``cores``."""
        return {c.id: k for k, c in enumerate(self.cores)}
