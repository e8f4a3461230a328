"""The quantized integer network: what every target compiles and the reference defines.

All integer fields are int64 and read-only. Real values follow from codes and scales:
``x = x_q / inv_scale`` at the input, ``w = W[i, j] * weight_scale[i]`` for weights, and
``z_i = gain * weight_scale[i] * in_scale * acc_i`` for a layer's pre-activation. The exact
integer semantics are in ``hwq/reference.py`` and ``docs/integer-semantics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError
from hwq.ir import frozen_array
from hwq.quant.bounds import MAX_SHIFT

SIGMOID_INDEX_BITS = 12  # sigmoid LUT index: z in [-8, 8) with step 2^-8


@dataclass(frozen=True)
class InputFormat:
    """How the device receives a sample: ``x_q = clip(floor(x * inv_scale + 1/2), lo, hi)``
    with ``[lo, hi]`` the ``bits``-bit signed or unsigned range. ``bounds`` records the data's
    valid range as given to ``quantize`` (None: unbounded); it is not what attacks clip to:
    ``hwq.attack`` clips to its own ``bounds`` argument (the CLI and sweeps pass the data
    set's bounds), then quantizes."""

    bits: int
    signed: bool
    inv_scale: float
    bounds: tuple[float, float] | None = None

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def scale(self) -> float:
        return 1.0 / self.inv_scale

    @property
    def name(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits} x 1/{self.inv_scale:g}"


@dataclass(frozen=True, eq=False)
class Requant:
    """Per-output-channel rescaling ``y = floor((acc * multiplier + 2^(shift-1)) / 2^shift)``
    (round half up; ``shift == 0`` gives ``acc * multiplier``)."""

    multiplier: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "multiplier", frozen_array(self.multiplier, np.int64))
        object.__setattr__(self, "shift", frozen_array(self.shift, np.int64))
        if np.any(self.multiplier < 0) or np.any((self.shift < 0) | (self.shift > MAX_SHIFT)):
            raise InvalidModelError(f"requantization needs multipliers >= 0 and shifts in 0..{MAX_SHIFT}")


@dataclass(frozen=True, eq=False)
class QLayer:
    """One dense layer and its activation, in integers.

    ``acc = W @ h + bias`` (exact, int64). Then by ``activation``:
    ``identity``: the output scores are ``acc``; ``step``: ``[acc > 0]``;
    ``relu``: ``clip(requant(acc), 0, 2^act_bits - 1)``;
    ``sigmoid``: ``lut[clip(requant(acc), -2^11, 2^11 - 1) + 2^11]``.
    """

    weight: np.ndarray
    bias: np.ndarray
    weight_scale: np.ndarray
    in_scale: float
    gain: float
    activation: str
    act_bits: int = 0
    requant: Requant | None = None
    lut: np.ndarray | None = None
    out_scale: float = 1.0
    in_max: int = 1  # largest |input code| this layer can receive

    def __post_init__(self):
        object.__setattr__(self, "weight", frozen_array(self.weight, np.int64))
        object.__setattr__(self, "bias", frozen_array(self.bias, np.int64))
        object.__setattr__(self, "weight_scale", frozen_array(self.weight_scale))
        if self.lut is not None:
            object.__setattr__(self, "lut", frozen_array(self.lut, np.int64))

    @property
    def acc_scale(self) -> np.ndarray:
        """Real value of one accumulator unit, per output channel (gain included)."""
        return self.gain * self.weight_scale * self.in_scale

    @property
    def real_weight(self) -> np.ndarray:
        return self.weight * self.weight_scale[:, None]

    @property
    def acc_bound(self) -> int:
        """max |acc| over all inputs the layer can receive, in Python integers (exact even
        beyond int64; ``hwq.quant.bounds``)."""
        from hwq.quant.bounds import accumulator_bound

        return accumulator_bound(self.weight, self.bias, self.in_max)


@dataclass(frozen=True)
class TensorReport:
    """What quantization did to one tensor."""

    tensor: str
    format: str
    max_abs_error: float
    clipped: int
    on_grid: bool


@dataclass(frozen=True)
class QuantSettings:
    bits: int
    scheme: str = "narrow"
    per_channel: bool = False
    act_bits: int = 8
    input_bits: int = 8
    calibration: str = ""  # what calibrated the input/activation formats (set by quantize)


@dataclass(frozen=True)
class QuantizedNetwork:
    input: InputFormat
    layers: tuple[QLayer, ...]
    output: str  # "argmax" (lowest index wins ties) or "sign" (class 1 iff score > 0)
    settings: QuantSettings
    float_graph: ir.Graph
    report: tuple[TensorReport, ...] = field(default=())

    @property
    def n_features(self) -> int:
        return self.layers[0].weight.shape[1]

    @property
    def n_classes(self) -> int:
        return 2 if self.output == "sign" else self.layers[-1].weight.shape[0]
