"""Float IR nodes of convolutional networks, named as NIR names them: ``Conv2d``,
``AvgPool2d``, ``SumPool2d`` and ``MaxPool2d`` (which NIR lacks). Each is frozen, validated on
construction and knows its output shape; the geometry is a shared
:class:`hwq.ir.window.Window`. Samples are ``(C, H, W)`` maps, flattened in C-order wherever a
flat vector is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import InvalidModelError
from hwq.ir.values import MAX_MAGNITUDE, Grid, frozen_array
from hwq.ir.window import Window


@dataclass(frozen=True, eq=False)
class Conv2d:
    """``y[o] = gain[o] * (sum_patch W[o] * x + b[o])``, a cross-correlation (PyTorch, ONNX and NIR
    all correlate) with ``weight`` of shape ``(C_out, C_in / groups, kh, kw)`` over ``window``.
    ``gain`` is per output channel: a folded BatchNormalization's ``gamma / sqrt(var + eps)``
    (ones otherwise), kept apart from the weights so that QAT codes stay on their grid; a
    negative gain flips that channel's codes when quantized."""

    weight: np.ndarray
    bias: np.ndarray
    window: Window
    gain: np.ndarray | None = None
    grid: Grid | None = None

    def __post_init__(self):
        object.__setattr__(self, "weight", frozen_array(self.weight))
        object.__setattr__(self, "bias", frozen_array(self.bias))
        n_out = self.weight.shape[0] if self.weight.ndim == 4 else 0
        gain = np.ones(n_out) if self.gain is None else self.gain
        object.__setattr__(self, "gain", frozen_array(gain))
        if not isinstance(self.window, Window):
            raise InvalidModelError("a Conv2d needs a Window")
        self.window.validate()
        w = self.weight
        if w.ndim != 4 or w.size == 0:
            raise InvalidModelError(f"a convolution's weight must be (C_out, C_in/groups, kh, kw), got {w.shape}")
        if w.shape[1] != self.window.group_channels or tuple(w.shape[2:]) != tuple(self.window.kernel):
            raise InvalidModelError(f"a convolution's weight {w.shape} does not fit {self.window.group_channels} "
                                    f"channels per group and a {self.window.kernel} kernel")
        if w.shape[0] % self.window.groups:
            raise InvalidModelError(f"{w.shape[0]} output channels do not divide into {self.window.groups} groups")
        if self.bias.shape != (w.shape[0],) or self.gain.shape != (w.shape[0],):
            raise InvalidModelError(f"a convolution's bias {self.bias.shape} or gain {self.gain.shape} "
                                    f"does not have its {w.shape[0]} channels")
        for name, a in (("weight", w), ("bias", self.bias), ("gain", self.gain)):
            if not np.all(np.isfinite(a)):
                raise InvalidModelError(f"Conv2d {name} contains NaN or Inf values")
        if np.any(self.gain == 0):
            raise InvalidModelError("a convolution channel's scale (BatchNormalization gamma) is 0: the channel "
                                    "is a constant, not a convolution")
        top = max(float(np.abs(w).max()), float(np.max(np.abs(self.bias), initial=0)))
        g = np.abs(self.gain)
        if top * max(float(g.max()), 1.0) > MAX_MAGNITUDE or g.min() < 1 / MAX_MAGNITUDE:
            raise InvalidModelError(f"a convolution's weights, bias or scale reach {top:.3g}; hwq reads values "
                                    f"within 1e{int(np.log10(MAX_MAGNITUDE))} (not a trained network)")

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def n_in(self) -> int:
        return self.window.n_in

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.window.out_hw)

    @property
    def matrix(self) -> np.ndarray:
        """The weight as the integer layer keeps it: ``(C_out, cg kh kw)`` in patch order."""
        return self.weight.reshape(self.weight.shape[0], -1)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return (int(self.weight.shape[0]), self.window.patch_len)


@dataclass(frozen=True)
class _Pool:
    window: Window

    def __post_init__(self):
        if not isinstance(self.window, Window):
            raise InvalidModelError(f"a {type(self).__name__} needs a Window")
        self.window.validate()
        if self.window.groups != self.window.channels or self.window.dilation != (1, 1):
            raise InvalidModelError(f"a {type(self).__name__} pools each channel alone, without dilation")

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.window.channels, *self.window.out_hw)

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    """The window's mean; padding counts as zero and the divisor is the whole window
    (ONNX ``count_include_pad=1``; with ``0`` and padding the divisor varies: refused at import)."""


@dataclass(frozen=True)
class SumPool2d(_Pool):
    """The window's sum, then ``floor(sum / 2^shift)`` (QONNX ``Trunc`` after Brevitas'
    ``QuantAvgPool2d``; ``shift = 0``: the plain sum, as NIR's ``SumPool2d``)."""

    shift: int = 0


@dataclass(frozen=True)
class MaxPool2d(_Pool):
    """The window's maximum; padding never wins (ONNX pads MaxPool with -inf). NIR has none."""


Pool2d = AvgPool2d | SumPool2d | MaxPool2d
