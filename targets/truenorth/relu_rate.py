"""A ReLU layer's rate-coded form: per unit the weight ``m``, threshold ``a`` and offset ``h`` with
``clip(floor((m acc + h) / a), 0, A)`` equal to hwq's requantization (docs/truenorth.md)."""

from __future__ import annotations

import math

import numpy as np

from hwq.errors import InvalidModelError, LimitError
from hwq.quant.bounds import rounding_half

from .limits import BIG_BETA, GATE_AXONS, GATE_W, M_MAX


def relu_params(layer, lo: np.ndarray, hi: np.ndarray, approximate: bool, li: int = 0) -> dict:
    """Per unit ``m <= 255``, ``a`` and ``h`` with ``clip(floor((m acc + h) / a), 0, A)`` equal
    to hwq's ``clip(requant(acc), 0, A)`` for every ``acc`` in ``[lo_u, hi_u]`` (searched
    over ``m`` and ``a`` near ``m 2^S / M``); with ``approximate``, where none exists, the
    nearest ratio. Returns arrays ``m, a, h``, ``exact`` per unit and the deviation."""
    A = 2**layer.act_bits - 1
    if layer.requant is None:
        raise InvalidModelError(f"layer {li} is ReLU without a requantization (multiplier and shift)")
    mult, shift = layer.requant.multiplier, layer.requant.shift
    units = len(mult)
    out = {"m": np.zeros(units, np.int64), "a": np.zeros(units, np.int64), "h": np.zeros(units, np.int64),
           "exact": np.ones(units, bool), "max_dev": 0, "mismatch_share": 0.0}
    r = np.arange(1, A + 1)
    mismatched, total = 0, 0
    half = rounding_half(shift)
    for u in range(units):
        M, S, hh = int(mult[u]), int(shift[u]), int(half[u])
        lo_u, hi_u = int(lo[u]), int(hi[u])
        # m bounded by the potential's range and by the gate and clear axons (GATE_AXONS each)
        m_cap = max(1, min(M_MAX, (BIG_BETA - 4 * GATE_W) // max(hi_u - lo_u + 1, 1),
                           GATE_AXONS * GATE_W // max(hi_u, 1)))
        found = None
        if M == 0:
            found = (1, 1, -(abs(lo_u) + abs(hi_u) + 1))  # always 0
        else:
            theta = -((hh - r * (1 << S)) // M)  # smallest acc with requant >= r
            up = np.maximum(theta, lo_u)
            low_pts = up <= hi_u
            dn = np.minimum(theta - 1, hi_u)
            up_pts = dn >= lo_u
            for m in range(1, m_cap + 1):
                centre = m * (1 << S) / M
                for a in sorted({max(1, int(math.floor(centre)) + d) for d in (-2, -1, 0, 1, 2)}):
                    if a > BIG_BETA:
                        continue
                    h_lo = int(np.max(a * r[low_pts] - m * up[low_pts], initial=-(1 << 40)))
                    h_hi = int(np.min(a * r[up_pts] - 1 - m * dn[up_pts], initial=1 << 40))
                    if h_lo <= h_hi:
                        h = h_lo if h_lo > -(1 << 40) else min(h_hi, 0)
                        found = (m, a, h)
                        break
                if found:
                    break
        if found is None:
            if not approximate:
                raise LimitError(
                    f"layer {li}: unit {u}'s requantization {M}/2^{S} has no exact "
                    "rate-coded form (no weight m <= 255 and threshold a with floor((m acc + h)/a) "
                    "equal on its accumulator range)",
                    hint="compile with --option relu=rate for the nearest ratio (approximate; the compile reports "
                         "its fidelity), or train with --activation step")
            m = m_cap
            a = max(1, round(m * (1 << S) / M))
            found = (m, a, round(m * hh / M))
            out["exact"][u] = False
        m, a, h = found
        out["m"][u], out["a"][u], out["h"][u] = m, a, h
        if not out["exact"][u]:
            acc = np.arange(lo_u, hi_u + 1)
            ref = np.clip((acc * M + hh) >> S, 0, A)
            got = np.clip(np.floor_divide(m * acc + h, a), 0, A)
            dev = np.abs(ref - got)
            out["max_dev"] = max(out["max_dev"], int(dev.max()))
            mismatched += int(np.count_nonzero(dev))
            total += len(acc)
    out["mismatch_share"] = mismatched / total if total else 0.0
    return out
