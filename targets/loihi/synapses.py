"""Integer weight matrices as Loihi synapse groups (one Lava ``Dense`` each) whose sum is exact.

A group holds 8-bit weights and one exponent. It adds ``shift(D @ h, E)`` to its neurons,
with ``shift(y, e) = y * 2^e`` for ``e >= 0`` and ``floor(y / 2^-e)`` otherwise. In Lava,
``weights = D * 2^s``, ``weight_exp = E - s`` and ``num_weight_bits = 8``, with ``s >= 1``
for mixed sign so that Lava's dropped weight LSB is always zero.

Codes that do not fit one group (``hwq`` codes of 9..16 bits, and the 8-bit ``uniform``
codes, which reach 255) are split into base-256 digits: ``W = sum_k D_k * 256^k``. The low
digits are in [0, 255] (excitatory groups); the top digit is in [-128, 127] (mixed) or of
one sign. All groups feed the same neurons. The sum is exact when at most the lowest group
has a negative exponent; otherwise each group floors separately (Lava does the same, and the
report says so).

A mixed-sign digit needs ``s >= 1``, so its ``weight_exp`` cannot reach the lowest exponent.
When its exponent would fall below the range, it is split by sign instead of rounding the
weights: an excitatory group ``max(D, 0)`` and an inhibitory group ``min(D, 0)``, both exact
and at ``s = 0``. Their sums floor separately, so ``a`` may be one unit below the single
floor ``floor(D @ h / 2^-E)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .limits import Limits

CLIP = {"mixed": (-256, 255), "excitatory": (0, 255), "inhibitory": (-255, 0)}


def shift(y, e: int):
    """``y * 2^e`` for ``e >= 0``, else ``floor(y / 2^-e)`` (an arithmetic right shift)."""
    return y << e if e >= 0 else y >> -e


def sign_mode(d: np.ndarray) -> str:
    """Lava's inference: excitatory if no weight is negative, inhibitory if none is positive."""
    if d.min(initial=0) >= 0:
        return "excitatory"
    return "inhibitory" if d.max(initial=0) <= 0 else "mixed"


def lava_effective(weights: np.ndarray, mode: str, num_weight_bits: int = 8) -> np.ndarray:
    """The weights Lava's bit-accurate Dense uses: clipped to the sign mode's 8-bit range, then
    ``8 - num_weight_bits + [mixed]`` LSBs dropped (magnitude truncated for inhibitory)."""
    lo, hi = CLIP[mode]
    w = np.clip(np.asarray(weights, dtype=np.int64), lo, hi)
    k = 8 - num_weight_bits + (mode == "mixed")
    if mode == "inhibitory":
        return -(((-w) >> k) << k)
    return (w >> k) << k


def native(w: np.ndarray) -> bool:
    lo, hi = int(w.min(initial=0)), int(w.max(initial=0))
    return (-128 <= lo and hi <= 127) or (lo >= 0 and hi <= 255) or (hi <= 0 and lo >= -255)


def split_digits(w: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """``[(D_k, 8k)]`` with ``sum D_k 2^(8k) = w``; all-zero digits are left out."""
    parts, e = [], 0
    while not native(w):
        low = np.mod(w, 256)
        parts.append((low, e))
        w, e = (w - low) // 256, e + 8
    parts.append((w, e))
    kept = [(d, e) for d, e in parts if d.any()]
    return kept or [(np.zeros_like(w), 0)]


@dataclass(frozen=True, eq=False)
class SynapseSet:
    """One synapse group: adds ``shift(digits @ h, exp)`` to its neurons."""

    digits: np.ndarray  # int64 (n_out, n_in)
    exp: int
    mode: str  # mixed, excitatory or inhibitory
    scale: int  # Lava stores digits * 2^scale with weight_exp = exp - scale

    @property
    def lava_weights(self) -> np.ndarray:
        return self.digits << self.scale

    @property
    def lava_weight_exp(self) -> int:
        return self.exp - self.scale


def scale_range(d: np.ndarray, mode: str) -> tuple[int, int]:
    """Left shifts ``s`` for which ``d * 2^s`` survives Lava's clip and LSB drop."""
    lo, hi = CLIP[mode]
    s_min = 1 if mode == "mixed" else 0
    s = s_min
    while (d << (s + 1)).min(initial=0) >= lo and (d << (s + 1)).max(initial=0) <= hi and s < 8:
        s += 1
    return s_min, s


def place(d: np.ndarray, exp: int, limits: Limits) -> SynapseSet | str:
    """A group for digits ``d`` at exponent ``exp``, or 'low'/'high' when no stored scale puts
    ``weight_exp`` inside the limits (the layer shift must then grow, or weights be rounded)."""
    mode = sign_mode(d)
    s_min, s_max = scale_range(d, mode)
    e_lo, e_hi = limits.weight_exp
    s = max(s_min, exp - e_hi)
    if s > s_max:
        return "high"
    if exp - s < e_lo:
        return "low"
    return SynapseSet(d, exp, mode, s)


def round_weights(w: np.ndarray, k: int) -> np.ndarray:
    """``w / 2^k`` rounded to nearest, ties to even: unbiased, unlike half up, which would
    shift every sum by about a quarter of the fan-in (k = 0: unchanged)."""
    return w if k == 0 else np.rint(w / 2.0**k).astype(np.int64)


def synapse_sets(w: np.ndarray, shift_r: int, k: int, limits: Limits) -> list[SynapseSet] | str:
    """Groups whose sum is ``shift(round_weights(w, k) @ h, k - shift_r)`` digit by digit."""
    sets = []
    for d, e in split_digits(round_weights(np.asarray(w, dtype=np.int64), k)):
        placed = place(d, e + k - shift_r, limits)
        if placed == "low" and sign_mode(d) == "mixed":
            # one sign per group needs no spare LSB, so its weight_exp reaches one lower
            halves = [place(h, e + k - shift_r, limits)
                      for h in (np.maximum(d, 0), np.minimum(d, 0))]
            if not any(isinstance(h, str) for h in halves):
                sets.extend(halves)
                continue
        if isinstance(placed, str):
            return placed
        sets.append(placed)
    return sets
