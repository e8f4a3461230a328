"""Weights stored on a quantization grid in ONNX: QDQ and QONNX, read exactly.

Each function folds a constant quantizer into float weights and returns the ``ir.Grid`` they
sit on, so that quantization keeps them bit for bit instead of rounding them again.

* ``DequantizeLinear(x, scale, zero_point, axis=1)``: ``w = (x - zp) * scale`` on integer
  initializers (the form Brevitas and onnxruntime write for weights).
* QONNX ``Quant``/``IntQuant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)``:
  ``q = round(clip(x / scale + zeropt, min_int, max_int))``, ``w = (q - zeropt) * scale``.
* QONNX ``BipolarQuant(x, scale)``: ``w = (+1 if x >= 0 else -1) * scale``.
"""

from __future__ import annotations

import numpy as np

from hwq import ir
from hwq.errors import InvalidModelError
from hwq.ir.codes import code_range

ROUNDING = {
    "ROUND": np.rint, "HALF_EVEN": np.rint, "CEIL": np.ceil, "FLOOR": np.floor,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)), "DOWN": np.trunc,
    "HALF_UP": lambda v: np.floor(v + 0.5), "HALF_DOWN": lambda v: np.ceil(v - 0.5),
}


def narrow_bits(codes: np.ndarray) -> int:
    """The fewest bits of the ``narrow`` scheme whose codes include all of ``codes``."""
    m = int(np.max(np.abs(codes))) if codes.size else 0
    if m <= 1 and not np.any(codes == 0):
        return 1
    return max(2, int(np.ceil(np.log2(m + 1))) + 1)


def scale_tuple(scale: np.ndarray) -> tuple[float, ...]:
    """One scale, or one per output channel (quantize checks the count against the rows)."""
    return tuple(float(v) for v in np.asarray(scale, dtype=np.float64).reshape(-1))


def declared_bits(lo: int, hi: int) -> int:
    """The ``narrow`` bits of a declared signed range ``[lo, hi]`` (a Clip or a QONNX bit
    width), from its top: ``[-7, 7]`` and ``[-8, 7]`` are 4 bits, ``[-1, 1]`` is 2 (ternary).
    ``make_grid`` widens it by one bit if a code uses a non-narrow range's extra ``-2^(b-1)``."""
    top = int(hi) if int(hi) > 0 else abs(int(lo))
    return max(2, int(np.ceil(np.log2(top + 1))) + 1) if top > 0 else 1


def make_grid(codes: np.ndarray, scale: np.ndarray, source: str, bits: int | None = None):
    """The grid of ``codes``: ``bits`` is the file's declared width where it says one (a Clip
    range, a QONNX bit width), widened if a code does not fit hwq's ``narrow`` levels."""
    if not np.all(np.isfinite(scale)) or np.any(np.asarray(scale) <= 0):
        raise InvalidModelError(f"{source}: scales must be positive and finite")
    seen = narrow_bits(codes)
    bits = seen if bits is None else max(bits, seen)
    return ir.Grid("narrow", bits, scale_tuple(scale), source)


def DequantizeLinear(x, scale, zero_point=None, axis=1, block_size=0, output_dtype=0, declared=None):
    if not np.issubdtype(x.dtype, np.integer):
        raise InvalidModelError("DequantizeLinear on a float tensor is not a weight grid")
    zp = np.zeros(1) if zero_point is None else np.asarray(zero_point).astype(np.float64)
    if np.any(zp != 0):
        raise InvalidModelError("DequantizeLinear weights with a non-zero zero point",
                                hint="hwq reads symmetric weight grids (zero point 0)")
    s = np.asarray(scale, dtype=np.float64)
    if block_size or (s.size > 1 and (x.ndim == 0 or not -x.ndim <= axis < x.ndim or s.ndim != 1
                                      or x.shape[axis % x.ndim] != s.size)):
        raise InvalidModelError(f"DequantizeLinear: {s.size} scales do not fit weights of shape {x.shape} "
                                f"along axis {axis}" + (" (blocked quantization)" if block_size else ""))
    bshape = [1] * x.ndim
    if s.size > 1:
        bshape[axis % x.ndim] = s.size
    w = x.astype(np.float64) * s.reshape(bshape)
    bits = None if declared is None else declared_bits(*declared)
    return w, make_grid(x.astype(np.int64), s, "DequantizeLinear", bits)


def Quant(x, scale, zeropt, bitwidth, signed=1, narrow=0, rounding_mode="ROUND", declared=None):
    width = np.asarray(bitwidth, dtype=np.float64).reshape(-1)
    if width.size != 1 or not (np.isfinite(width[0]) and width[0] == int(width[0]) and 2 <= width[0] <= 32):
        raise InvalidModelError(f"QONNX Quant: bit width {width.tolist()[:4]} is not one integer in 2..32")
    bits = int(width[0])
    if np.any(np.asarray(zeropt) != 0):
        raise InvalidModelError("QONNX Quant with a non-zero zero point is not supported")
    lo, hi = code_range(bits, signed, narrow)
    mode = rounding_mode.decode() if isinstance(rounding_mode, bytes) else rounding_mode
    if str(mode).upper() not in ROUNDING:
        raise InvalidModelError(f"QONNX Quant: rounding mode '{mode}' is not one of {', '.join(ROUNDING)}")
    s = np.asarray(scale, dtype=np.float64)
    check_scale(s, x.shape, "QONNX Quant")
    codes = ROUNDING[mode.upper()](np.clip(x / s, lo, hi))
    w = codes * s
    return w, make_grid(codes.astype(np.int64), s, "QONNX Quant", bits=declared_bits(lo, hi))


def check_scale(s: np.ndarray, shape: tuple, source: str) -> None:
    """Scales must be positive, finite and broadcast onto the weights without growing them."""
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InvalidModelError(f"{source}: scales must be positive and finite")
    try:
        fits = np.broadcast_shapes(s.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise InvalidModelError(f"{source}: scales of shape {s.shape} do not fit weights of shape {tuple(shape)}")


def BipolarQuant(x, scale, declared=None):
    codes = np.where(x >= 0, 1, -1)
    s = np.asarray(scale, dtype=np.float64)
    check_scale(s, x.shape, "QONNX BipolarQuant")
    return codes * s, make_grid(codes.astype(np.int64), s, "QONNX BipolarQuant", bits=1)


QUANT_OPS = {"DequantizeLinear": DequantizeLinear, "Quant": Quant, "IntQuant": Quant,
             "BipolarQuant": BipolarQuant}
