"""What every float IR node is made of: read-only arrays, weight grids, the magnitude limit.

Its own module so that ``hwq.ir.graph`` (the chain) and ``hwq.ir.conv`` (convolutions and
poolings) both build on it without importing each other in a circle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_MAGNITUDE = 1e18  # |weight|, |bias|, gain of a float layer: beyond it scales overflow int64 requantization


def frozen_array(a, dtype=np.float64) -> np.ndarray:
    """A read-only copy: IR values cannot be mutated after construction."""
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Grid:
    """Weights that already sit on a quantization grid: ``weight == codes * scale`` exactly."""

    scheme: str
    bits: int
    weight_scale: tuple[float, ...]  # one value per tensor, or one per output row
    source: str = ""  # where the grid was read: "DequantizeLinear", "Quant", "metadata", ...
