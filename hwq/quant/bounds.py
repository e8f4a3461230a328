"""The numbers that prove an integer computation exact, in one place.

* A float type holds every integer up to ``2^p`` (p = 24 for float32, 53 for float64), so a
  product ``h @ W.T`` computed in float BLAS is exact, in any summation order, when every
  partial sum is below that: ``max_row sum|W| * max|h| < 2^p``.
* ``vpdpbusd`` sums u8 x s8 products in int32 lanes: exact when ``255 * max_row sum|W| < 2^31``.
* A u8 x s8 product that runs on whatever CPU onnxruntime finds must also survive AVX2's
  ``vpmaddubsw``, which adds two adjacent products into a *saturating* int16:
  ``2 * 255 * max|W| <= 2^15 - 1``, i.e. ``|W| <= 64`` (``U8S8_PAIR_WEIGHT``).
* AVX2's ``vpmaddwd`` multiplies int16 by int16 and adds two adjacent products into an int32
  lane (wrapping), ``vpaddd`` adds lanes (wrapping): exact when the weights fit int16, the
  stored codes are at most ``peak <= 2^15`` in magnitude and ``peak * max_row sum|W| < 2^31``
  (``pmaddwd_exact``).
* Requantization shifts stay in ``0..62`` so that ``2^(S-1)`` and ``x >> S`` are defined in int64.
* Every int64 intermediate stays below ``2^63`` (``INT64_LIMIT``): ``check_layers`` proves it
  for a whole network at compile time, or refuses the network naming the layer and the bound.
Bounds are computed in Python integers (``row_sums``), never in numpy int64, so that the
proof itself cannot wrap around. docs/integer-semantics.md states the rules.
"""

from __future__ import annotations

import numpy as np

from hwq.errors import InvalidModelError
from hwq.quant.walk import walk_layers

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 2**53
INT32_EXACT = 2**31
INT64_LIMIT = 2**63
MAX_SHIFT = 62  # docs/integer-semantics.md section 4
INT16_MAX = 2**15 - 1
U8S8_PAIR_WEIGHT = INT16_MAX // (2 * 255)  # 64: |w| bound for u8 x s8 pairs in saturating int16


def rounding_half(shift) -> np.ndarray:
    """``2^(S-1)`` elementwise, 0 where ``S == 0`` (int64): what ``(acc * M + half) >> S`` adds to
    round half up (docs/integer-semantics.md section 4)."""
    s = np.asarray(shift, np.int64)
    return np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), np.int64(0))


def check_shift_range(shift) -> None:
    """Refuse requantization shifts outside ``0..MAX_SHIFT`` (``InvalidModelError``, one line)."""
    s = np.asarray(shift)
    if np.any((s < 0) | (s > MAX_SHIFT)):
        bad = s[(s < 0) | (s > MAX_SHIFT)]
        raise InvalidModelError(f"requantization shifts must be in 0..{MAX_SHIFT}, got {int(bad.flat[0])}")


def u8s8_exact_on_every_cpu(weight: np.ndarray) -> bool:
    """True when ``h @ W.T`` for codes ``h`` in ``[0, 255]`` (or int8 codes stored as ``h + 128``)
    is exact in onnxruntime's ``MatMulInteger`` on every CPU it runs on: int8 weights whose
    adjacent-pair sums ``x1 w1 + x2 w2`` fit int16 (``2 * 255 * max|W| <= 2^15 - 1``, AVX2's
    ``vpmaddubsw`` saturates there) and whose row sums fit int32 (``255 * sum|W| < 2^31``).
    NEON (``smull``/``sdot``) and AVX-512 VNNI (``vpdpbusd``) are exact under the same bound."""
    w = np.asarray(weight)
    if w.size == 0:
        return True
    peak = max(abs(int(w.min())), abs(int(w.max())))
    return peak <= U8S8_PAIR_WEIGHT and 255 * row_sum_bound(w) < INT32_EXACT


def pmaddwd_exact(weight: np.ndarray, peak: int) -> bool:
    """True when ``h @ W.T`` summed in int32 lanes by ``vpmaddwd``/``vpaddd`` is exact for
    codes stored in int16 with ``|h| <= peak``: the weights fit int16, ``peak <= 2^15`` and
    ``peak * max_row sum|W| < 2^31``. Every partial sum (one pair ``x1 w1 + x2 w2``, or any sum
    of pairs) adds products ``|x w| <= peak |w|`` over part of one row, so its magnitude is at
    most ``peak * sum|W_row| < 2^31``: no lane ever wraps, in any order of summation. (The one
    pair ``vpmaddwd`` itself wraps, ``(-2^15)(-2^15) * 2 = 2^31``, has ``peak * S >= 2^31``.)"""
    w = np.asarray(weight)
    if w.size == 0 or not 0 <= int(peak) <= 2**15:
        return False
    if int(w.min()) < -(2**15) or int(w.max()) > INT16_MAX:
        return False
    return int(peak) * row_sum_bound(w) < INT32_EXACT


def row_sums(weight: np.ndarray) -> list[int]:
    """``sum_j |W[i, j]|`` for every row ``i``, as Python integers (exact for any int64
    weights: numpy's int64 sums are used only where ``max|W| * K < 2^63`` proves them exact)."""
    w = np.asarray(weight)
    if w.size == 0:
        return [0] * (w.shape[0] if w.ndim else 0)
    w = w.reshape(w.shape[0], -1)
    peak = max(abs(int(w.min())), abs(int(w.max())))
    if peak * w.shape[1] < INT64_LIMIT and peak < INT64_LIMIT:
        return [int(v) for v in np.abs(w.astype(np.int64)).sum(axis=1)]
    return [sum(abs(int(v)) for v in row) for row in w.tolist()]


def row_sum_bound(weight: np.ndarray) -> int:
    """``max_i sum_j |W[i, j]|`` as a Python integer (exact for any int64 weights)."""
    return max(row_sums(weight), default=0)


def channel_bounds(weight: np.ndarray, bias: np.ndarray, peak: int) -> list[int]:
    """``B_j = sum_i |W[j, i]| * peak + |b_j|`` per output channel, in Python integers:
    the largest ``|acc_j|`` for inputs of magnitude at most ``peak``."""
    b = [abs(int(v)) for v in np.asarray(bias).reshape(-1).tolist()]
    return [s * int(peak) + bj for s, bj in zip(row_sums(weight), b)]


def accumulator_bound(weight: np.ndarray, bias: np.ndarray, peak: int) -> int:
    """``max_j B_j`` (``channel_bounds``): the largest |acc| for inputs of magnitude at most
    ``peak``, in Python integers."""
    return max(channel_bounds(weight, bias, peak), default=0)


def output_range(layer, lo: int, hi: int) -> tuple[int, int]:
    """The codes ``layer`` (a ``QLayer``) passes on for inputs in ``[lo, hi]`` (``layer.out_range``)."""
    return layer.out_range(lo, hi)


def check_pool(node, index: int, lo: int, hi: int) -> int:
    """Prove a pooling node (``QPool``) exact in int64: the window sums ``kh kw * peak`` and, for
    average pooling, ``sum * M + 2^(S-1)`` stay below ``2^63``. Returns the largest |sum|."""
    a, b = node.sum_range(lo, hi)
    worst = max(abs(a), abs(b))
    top = worst
    if node.requant is not None:
        top = max(worst * int(m) + (2 ** (int(s) - 1) if s > 0 else 0)
                  for m, s in zip(node.requant.multiplier.tolist(), node.requant.shift.tolist()))
    if max(worst, top) >= INT64_LIMIT:
        raise InvalidModelError(f"layer {index}: the pooling sum can reach {max(worst, top)} (= "
                                f"{float(max(worst, top)):.3g}), beyond int64 (2^63 = 9.22e18)",
                                hint="use fewer activation bits before the pooling")
    return worst


def check_layer(layer, index: int, lo: int, hi: int) -> int:
    """Prove that ``layer`` (a ``QLayer``) computes in int64 without wrapping for inputs in
    ``[lo, hi]``: ``B_j < 2^63`` on every channel and, where it requantizes,
    ``B_j * M_j + 2^(S_j - 1) < 2^63``. Returns ``max_j B_j``; raises ``InvalidModelError``
    naming the layer and the bound otherwise."""
    peak = max(abs(int(lo)), abs(int(hi)))
    bounds = channel_bounds(layer.weight, layer.bias, peak)
    worst = max(bounds, default=0)
    if worst >= INT64_LIMIT:
        raise InvalidModelError(
            f"layer {index}: the accumulator can reach {worst} (= {float(worst):.3g}; "
            f"sum|W| * {peak} + |b|), beyond int64 (2^63 = 9.22e18)",
            hint="use fewer weight or input bits, smaller weights, or an activation that "
                 "requantizes between layers")
    rq = layer.requant if layer.activation_kind.requantizes else None
    if rq is not None:
        m = np.broadcast_to(rq.multiplier, (len(bounds),)).tolist()
        s = np.broadcast_to(rq.shift, (len(bounds),)).tolist()
        top = max((bj * int(mj) + (2 ** (int(sj) - 1) if sj > 0 else 0)
                   for bj, mj, sj in zip(bounds, m, s)), default=0)
        if top >= INT64_LIMIT:
            raise InvalidModelError(
                f"layer {index}: requantization acc * M + 2^(S-1) can reach {top} "
                f"(= {float(top):.3g}), beyond int64 (2^63 = 9.22e18)",
                hint="use fewer weight or input bits")
    return worst


def check_layers(layers, lo: int, hi: int, in_shape: tuple[int, ...] | None = None) -> list[int]:
    """``check_layer`` for every layer in order (``qnet.walk_layers``), the first receiving codes
    in ``[lo, hi]``; returns each layer's accumulator bound ``max_j B_j``."""
    if in_shape is None:
        in_shape = layers[0].in_shape if layers else ()
    return [(check_layer if hasattr(layer, "weight") else check_pool)(layer, i, a, b)
            for i, layer, _, (a, b) in walk_layers(layers, in_shape, lo, hi)]
