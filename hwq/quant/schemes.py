"""Weight quantization schemes: which integer codes a q-bit weight may take, and how to round.

A quantized weight is ``w = code * scale``. A scheme fixes the set of codes for ``q`` bits,
the rounding rule that maps ``w / scale`` to a code, and how post-training quantization picks
``scale`` from float weights. Levels (``unit_scale`` makes the grid span [-1, 1]):

========  ==========================================  ===============================
scheme    codes for q bits                             rounding of v = w / scale
========  ==========================================  ===============================
narrow    q = 1: {-1, +1};  q >= 2: integers in        q = 1: +1 if v >= 0 else -1;
          [-(2^(q-1)-1), 2^(q-1)-1] (zero included)    q >= 2: nearest, ties to even
pow2      as narrow, but PTQ rounds the scale up to    as narrow
          a power of two (a shift in hardware)
uniform   2^q odd integers in [-(2^q-1), 2^q-1]        nearest odd integer, ties away
          (no zero: q = 2 -> {-3,-1,1,3} / 3)          from zero (0 -> +1)
========  ==========================================  ===============================

Codes are clipped to the scheme's range after rounding (saturation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import UsageError

MIN_BITS, MAX_BITS = 1, 16


def check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise UsageError(
            f"weight bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}"
        )
    return int(bits)


@dataclass(frozen=True)
class Scheme:
    """A named weight-level scheme. See the module docstring for the exact levels."""

    name: str
    odd_codes: bool  # True: codes are the odd integers (no zero level)
    pow2_scale: bool = False

    def max_code(self, bits: int) -> int:
        bits = check_bits(bits)
        if self.odd_codes:
            return 2**bits - 1
        return 1 if bits == 1 else 2 ** (bits - 1) - 1

    def unit_scale(self, bits: int) -> float:
        """The scale that makes the largest code equal 1 (the [-1, 1] grid of QAT)."""
        return 1.0 / self.max_code(bits)

    def levels(self, bits: int) -> np.ndarray:
        """All codes this scheme allows at ``bits``, ascending."""
        m = self.max_code(bits)
        if self.odd_codes or bits == 1:
            return np.arange(-m, m + 1, 2, dtype=np.int64)
        return np.arange(-m, m + 1, dtype=np.int64)

    def to_codes(self, v: np.ndarray, bits: int) -> np.ndarray:
        """Round ``v = w / scale`` to codes (int64) and saturate to the scheme's range."""
        v = np.asarray(v, dtype=np.float64)
        m = self.max_code(bits)
        if self.odd_codes or bits == 1:
            sign = np.where(v >= 0, 1, -1)
            codes = sign * (2 * np.floor(np.abs(v) / 2) + 1)
        else:
            codes = np.rint(v)
        return np.clip(codes, -m, m).astype(np.int64)

    def ptq_scale(self, w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
        """Scale chosen by post-training quantization, per tensor (axis None) or per row.

        The scale with the least squared rounding error among 64 candidates from
        ``max|w| / max_code`` (no clipping) down to 5 % of it; at 1 bit the mean |w|, which is
        that optimum in closed form (XNOR-Net). ``pow2`` rounds the chosen scale up to 2^k.
        """
        w = np.asarray(w, dtype=np.float64)
        rows = w.reshape(1, -1) if axis is None else w
        a = np.abs(rows)
        if bits == 1:
            scale = a.mean(axis=1)
        else:
            top = a.max(axis=1) / self.max_code(bits)
            best, scale = np.full(len(rows), np.inf), top.copy()
            for f in np.linspace(1.0, 0.05, 64):
                cand = np.where(top > 0, top * f, 1.0)
                err = ((self.to_codes(rows / cand[:, None], bits) * cand[:, None] - rows) ** 2).sum(axis=1)
                better = err < best
                best, scale = np.where(better, err, best), np.where(better, cand, scale)
        scale = np.where(scale > 0, scale, 1.0)
        if self.pow2_scale:
            scale = 2.0 ** np.ceil(np.log2(scale))
        return scale
    def fake_quantize(self, w: np.ndarray, bits: int, scale: float | None = None) -> np.ndarray:
        """Round float weights onto the grid (float result); default scale: the unit grid."""
        s = self.unit_scale(bits) if scale is None else scale
        return self.to_codes(np.asarray(w) / s, bits) * s


SCHEMES: dict[str, Scheme] = {
    "narrow": Scheme("narrow", odd_codes=False),
    "pow2": Scheme("pow2", odd_codes=False, pow2_scale=True),
    "uniform": Scheme("uniform", odd_codes=True),
}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise UsageError(
            f"unknown quantization scheme '{name}'", hint="choose one of " + ", ".join(SCHEMES)
        ) from None
