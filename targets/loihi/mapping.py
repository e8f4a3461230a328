"""QuantizedNetwork -> Loihi parameters: synapse groups, shifts, biases, thresholds.

Per layer the mapping picks a right shift ``r`` (the sums are floored to units of ``2^r``
accumulator steps), the synapse groups (``synapses.py``) and the neuron parameters:

* ``lif`` (step): ``LIFReset`` reset every step. ``v = sat(wrap(a * 2^6) + b)``, spike iff
  ``v > vth * 2^6``. ``r`` is the smallest shift for which ``|a| <= 2^17 - 1`` over every
  possible input, so ``u`` never wraps (unless ``shifts=`` forces a smaller one), raised
  further until the bias/threshold offsets are exact (``lif_offsets``); clipping them is the
  last resort.
* ``relu`` / ``identity``: ``SigmaDelta`` (RELU / UNIT) whose sigma sees ``a`` afresh every
  step; ``act = max(a + B, 0)`` or ``a + B``. A hidden ReLU's ``r`` approximates hwq's
  requantization ``M / 2^S`` by a power of two, traded against weight rounding in this layer
  and the next (``hidden_relu``); every ``r`` is raised if the 24-bit state would overflow
  or the bias ``B`` would clip.

Every place where this rounds or clips is recorded in ``Mapping.adjustments``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError, TargetError
from hwq.ir import activations
from hwq.ir.window import Window
from hwq.quant.qnet import QLayer, QPool, QuantizedNetwork

from .limits import ACT_SHIFT, INT32_SAFE_LIF, INT32_SAFE_SD, Limits
from .synapses import SynapseSet, round_weights, shift, synapse_sets

NEURON_MODELS = {"step": "lif", "relu": "relu", "identity": "identity"}  # hwq activation -> Loihi neuron model
MAX_SUM_SHIFT = 40  # the largest right shift r the mapping tries for one layer's sums


@dataclass(frozen=True, eq=False)
class LayerMap:
    """One layer on Loihi: ``a = sum_s shift(D_s @ h, E_s)``, then the neuron model ``neuron``."""

    neuron: str  # lif, relu or identity (the Lava neuron model)
    sets: tuple[SynapseSet, ...]
    bias_mant: np.ndarray  # int64 (n,)
    bias_exp: np.ndarray  # int64 (n,): LIF bias_exp; SigmaDelta spike_exp (all equal)
    vth: int  # LIF threshold mantissa (theta = vth * 2^6); 0 for SigmaDelta
    unit: np.ndarray  # float64 (n,): the real value of one unit of ``a``
    in_bits: int  # graded payload bits of this layer's input; 0 = binary spikes
    in_range: tuple[int, int]  # smallest and largest input value
    shift: int  # r
    weight_round: int  # k: weights rounded to multiples of 2^k before splitting
    window: Window | None = None  # a convolution's or pooling's geometry (conv.py); None: dense

    @property
    def channels(self) -> int:
        """Rows of the digit matrices: output channels (a dense layer: its neurons). The
        per-neuron arrays (``bias_mant``, ``bias_exp``, ``unit``) hold one entry per channel."""
        return self.sets[0].digits.shape[0]

    @property
    def positions(self) -> int:
        return 1 if self.window is None else self.window.positions

    @property
    def n_out(self) -> int:
        """Neurons (compartments): channels times window positions."""
        return self.channels * self.positions

    @property
    def n_in(self) -> int:
        return self.sets[0].digits.shape[1] if self.window is None else self.window.n_in

    def expand(self, v: np.ndarray) -> np.ndarray:
        """A per-channel array repeated over the positions (C-order neurons)."""
        return np.asarray(v) if self.window is None else np.repeat(np.asarray(v), self.positions)

    @property
    def bound_range(self) -> tuple[int, int]:
        """The input range the per-channel bounds assume: padding reads 0."""
        lo, hi = self.in_range
        if self.window is not None and self.window.padded:
            return min(lo, 0), max(hi, 0)
        return lo, hi

    @property
    def bias(self) -> np.ndarray:
        """Effective bias: ``b`` (LIF, in units of v) or ``B`` (SigmaDelta, units of a)."""
        return self.bias_mant << self.bias_exp

    @property
    def theta(self) -> int:
        return self.vth << ACT_SHIFT

    def effective_codes(self) -> np.ndarray:
        """The weight codes Loihi multiplies by, in units of the network's codes:
        ``sum_g D_g 2^(E_g + r)`` (the codes themselves unless the weights were rounded to
        multiples of ``2^k``: ``round(W / 2^k) 2^k``)."""
        return sum(np.asarray(s.digits, np.int64) << (s.exp + self.shift) for s in self.sets)

    def input_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per neuron (per channel of a convolution), the smallest and largest ``a`` any input
        in ``in_range`` can give (padding reads 0)."""
        return sum_bounds(self.sets, self.bound_range)


def sum_bounds(sets, in_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron, the smallest and largest ``a = sum_s shift(D_s @ h, E_s)`` over inputs in
    ``in_range``."""
    lo, hi = in_range
    n = sets[0].digits.shape[0]
    a_lo = np.zeros(n, np.int64)
    a_hi = np.zeros(n, np.int64)
    for s in sets:
        a_hi += shift(np.maximum(s.digits * lo, s.digits * hi).sum(axis=1), s.exp)
        a_lo += shift(np.minimum(s.digits * lo, s.digits * hi).sum(axis=1), s.exp)
    return a_lo, a_hi


@dataclass(frozen=True, eq=False)
class Mapping:
    layers: tuple[LayerMap, ...]
    adjustments: tuple[dict, ...] = ()
    forced: tuple[bool, ...] = ()  # per layer: shift given by the user

    @property
    def latency(self) -> int:
        """Steps from presenting a sample to its scores (one per Dense layer)."""
        return len(self.layers)


def round_half_up(x) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def neuron_of(layer: QLayer, index: int) -> str:
    if layer.activation_kind is activations.SIGMOID:
        raise TargetError(
            f"layer {index} uses a sigmoid activation, and Loihi has no sigmoid neuron model",
            hint="retrain with step or ReLU activations, or use the 'sim' target",
        )
    if isinstance(layer.activation_kind, activations.Clip):
        raise TargetError(f"layer {index} uses the clipped activation {layer.activation} (ReLU6/Hardtanh), and "
                          "Loihi has no neuron model with an upper clip", hint="use ReLU or step, or the 'sim' target")
    if layer.activation not in NEURON_MODELS:
        raise TargetError(f"layer {index}: activation '{layer.activation}' cannot be mapped")
    return NEURON_MODELS[layer.activation]


def fit_sets(w: np.ndarray, r: int, limits: Limits) -> tuple[list[SynapseSet], int] | None:
    """Groups for shift ``r``, rounding weights (``k``) only if the exponent range demands it;
    None when ``r`` is too small for the largest weights."""
    for k in range(0, 33):
        sets = synapse_sets(w, r, k, limits)
        if sets == "high":
            return None
        if sets != "low":
            return sets, k
    return None


class LayerPlan:
    """Working state for mapping one layer: what it receives and the sim layer it stands for."""

    def __init__(self, layer: QLayer, index: int, last: bool, in_unit: float,
                 in_range: tuple[int, int], in_bits: int, limits: Limits):
        self.layer, self.index, self.last, self.limits = layer, index, last, limits
        self.neuron = neuron_of(layer, index)
        self.in_unit, self.in_range, self.in_bits = in_unit, in_range, in_bits
        self.unit0 = np.abs(layer.gain * layer.weight_scale * in_unit)
        # the sim bias in units of this layer's unshifted sum W @ h
        self.bias0 = layer.bias * (layer.in_scale / in_unit)
        self.out_unit = 1.0  # the real value of a spike of a LIF layer (a pooling: its out_scale)
        self.notes: list[dict] = []

    def note(self, what: str, **fields):
        self.notes.append({"layer": self.index, "what": what, **fields})

    def requested_shift(self) -> int:
        if self.neuron == "lif" or self.last:
            return 0
        if len(set(self.layer.weight_scale.tolist())) > 1:
            raise LimitError(
                f"layer {self.index}: per-channel weight scales on a hidden {self.layer.activation} "
                "layer need a per-neuron requantization, and Loihi has one weight exponent per "
                "synapse group",
                hint="compile with --conv-per-tensor (hwq.quantize(..., conv_per_channel=False)), "
                     "or use the 'sim' target",
            )
        if self.neuron != "relu":
            return 0
        return max(0, int(round(math.log2(self.layer.out_scale / self.unit0[0]))))

    def build(self, r: int) -> LayerMap | None:
        self.notes = []
        fitted = fit_sets(self.layer.weight, r, self.limits)
        if fitted is None:
            return None
        sets, k = fitted
        win, (lo, hi) = self.layer.window, self.in_range
        bounds = sum_bounds(sets, (min(lo, 0), max(hi, 0)) if win is not None and win.padded else (lo, hi))
        mant, exp, vth = (self.lif_bias(r, bounds) if self.neuron == "lif"
                          else self.sd_bias(r, bounds))
        return LayerMap(self.neuron, tuple(sets), mant, exp, vth, self.unit0 * 2.0**r,
                        self.in_bits, self.in_range, r, k, self.layer.window)

    def fits(self, lm: LayerMap) -> bool:
        if not int32_ok(lm):
            return False
        a_lo, a_hi = lm.input_bounds()
        top = np.maximum(np.abs(a_lo), np.abs(a_hi))
        if lm.neuron == "lif":
            return int(top.max(initial=0)) <= self.limits.lif_input_max
        out = np.maximum(np.abs(a_lo + lm.bias), np.abs(a_hi + lm.bias))
        return int(max(top.max(initial=0), out.max(initial=0))) <= self.limits.state_max

    def lif_bias(self, r: int, bounds):
        """Offsets ``c`` such that ``a + c > 0`` best matches ``W h + bias > 0`` for floored
        ``a``, realised as ``b = bias_mant * 2^bias_exp`` and a shared threshold ``vth``.
        Where ``a`` cannot wrap, a neuron that fires for every input (``c >= 1 - a_lo``) or
        for none (``c <= -a_hi``) accepts any offset beyond that bound (``lif_offsets``)."""
        y_star = np.floor(-self.bias0) + 1  # smallest W @ h that should fire
        c = (1 - round_half_up(y_star / 2.0**r)).astype(np.int64)
        a_lo, a_hi = bounds
        lo, hi = c.copy(), c.copy()
        top = int(np.maximum(np.abs(a_lo), np.abs(a_hi)).max(initial=0))
        if top <= self.limits.lif_input_max:  # no wrap: decisions depend on c only in range
            on, off = c >= 1 - a_lo, c <= -a_hi
            lo = np.where(on, 1 - a_lo, np.where(off, -OPEN_END, c))
            hi = np.where(off, -a_hi, np.where(on, OPEN_END, c))
        mant, exp, vth, err, clipped = lif_offsets(c, lo, hi, self.limits)
        self.inexact = bool((err > 0).any())
        if clipped.any():
            self.note("LIF bias/threshold out of range (offset clipped)",
                      neurons=int(clipped.sum()), max_error=float(err.max()))
        rounded = (err > 0) & ~clipped
        if rounded.any():
            self.note("LIF offset rounded to the bias_exp grid", neurons=int(rounded.sum()),
                      max_error=float(err[rounded].max()))
        return mant, exp, vth

    def sd_bias(self, r: int, bounds):
        """``B`` nearest to the sim bias, with half a unit added when sums are floored. A ReLU
        whose ``a + B <= 0`` for every input may take any ``B <= -a_hi`` (it never passes)."""
        ideal = self.bias0 / 2.0**r + (0.5 * (1 - 2.0**-r))
        b = round_half_up(ideal)
        if self.neuron == "relu":
            dead = b <= -bounds[1]
            b = np.where(dead, np.maximum(b, -bounds[1]), b)
        mmax = 2 ** (self.limits.sd_bias_bits - 1) - 1
        top = int(np.abs(b).max(initial=0))
        e_lo, e_hi = self.limits.sd_bias_exp
        e = e_lo if top <= mmax << e_lo else min(max(e_lo, math.ceil(math.log2(top / mmax))),
                                                 e_hi)
        mant = np.clip(round_half_up(b / 2.0**e), -mmax, mmax)
        err = np.abs((mant << e) - b)
        clipped = np.abs(b) > (mmax << e) + (1 << e) // 2
        self.inexact = bool(clipped.any())
        if clipped.any():
            self.note("SigmaDelta bias out of range (clipped)", neurons=int(clipped.sum()),
                      max_error=float(err.max()))
        rounded = (err > 0) & ~clipped
        if rounded.any():
            self.note("SigmaDelta bias rounded to spike_exp", neurons=int(rounded.sum()),
                      spike_exp=e, max_error=float(err[rounded].max()))
        return mant, np.full(len(b), e, np.int64), 0


OPEN_END = 2**62  # an open end of a tolerance interval


def lif_encodings(limits: Limits) -> list[tuple[int, int, int, int]]:
    """``(step, t_min, t_max, bias_exp)`` per usable bias exponent, finest step first: the
    offsets ``t = b / 2^6`` (units of ``a``) that ``b = bias_mant * 2^bias_exp`` realises."""
    act_shift = limits.act_shift
    mmax = 2 ** (limits.lif_bias_mant_bits - 1)
    best: dict[int, tuple[int, int, int, int]] = {}
    for e in range(limits.lif_bias_exp[0], limits.lif_bias_exp[1] + 1):
        if e >= act_shift:
            step = 2 ** (e - act_shift)
            enc = (step, -mmax * step, (mmax - 1) * step, e)
        else:
            enc = (1, -(mmax >> (act_shift - e)), (mmax - 1) >> (act_shift - e), e)
        if enc[0] not in best or enc[2] - enc[1] > best[enc[0]][2] - best[enc[0]][1]:
            best[enc[0]] = enc
    return [best[k] for k in sorted(best)]


def lif_offsets(c, lo, hi, limits: Limits):
    """Encode per-neuron offsets ``c`` (any value in ``[lo, hi]`` gives the same decisions) as
    ``bias_mant``, ``bias_exp`` and one ``vth``: the neuron fires iff ``a + c' > 0`` with
    ``c' = t - vth``, ``t = bias_mant * 2^(bias_exp - 6)``. ``vth`` is the smallest that puts
    every interval inside the finest grid's range (else inside the union of all grids); each
    neuron then takes the grid value nearest ``c + vth`` within its interval. Returns
    ``mant, exp, vth, err, clipped``: ``err`` is how far ``c'`` lies outside ``[lo, hi]``,
    ``clipped`` where no grid value could reach the interval at all."""
    encs = lif_encodings(limits)
    vmax = 2**limits.lif_vth_bits - 1
    f0, f1 = encs[0][1], encs[0][2]
    u0, u1 = min(e[1] for e in encs), max(e[2] for e in encs)

    def vth_for(t0, t1):
        v_lo = max(0, int((t0 - hi).max(initial=0)))
        v_hi = min(vmax, int((t1 - lo).min(initial=vmax)))
        return v_lo if v_lo <= v_hi else None

    vth = vth_for(f0, f1)
    if vth is None:
        vth = vth_for(u0, u1)
    if vth is None:  # last resort: the lowest thresholds at the bottom of the range
        vth = int(min(max(0, int((u0 - np.minimum(hi, c)).max(initial=0))), vmax))
    tl, th = lo + vth, hi + vth
    goal = np.clip(np.clip(c + vth, f0, f1), tl, th)
    best_err = np.full(len(c), OPEN_END, np.int64)
    best_d = np.full(len(c), OPEN_END, np.int64)
    mant = np.zeros(len(c), np.int64)
    exp = np.zeros(len(c), np.int64)
    act_shift = limits.act_shift
    for step, t_min, t_max, e in encs:
        for m in (np.floor_divide(goal, step), -np.floor_divide(-goal, step)):
            m = np.clip(m, t_min // step, t_max // step)
            t = m * step
            err = np.maximum(np.maximum(tl - t, t - th), 0)
            d = np.abs(t - goal)
            better = (err < best_err) | ((err == best_err) & (d < best_d))
            raw = m if e >= act_shift else m << (act_shift - e)
            mant, exp = np.where(better, raw, mant), np.where(better, e, exp)
            best_err, best_d = np.where(better, err, best_err), np.where(better, d, best_d)
    realised = -np.floor(vth - (mant << exp) / 2.0**act_shift).astype(np.int64)
    err = np.maximum(np.maximum(lo - realised, realised - hi), 0)
    clipped = (err > 0) & ((th < u0) | (tl > u1))
    return mant.astype(np.int64), exp.astype(np.int64), int(vth), err, clipped


def plan_layer(plan: LayerPlan, forced: int | None, start: int | None = None) -> LayerMap:
    """The layer at shift ``forced``, or at the smallest shift from ``start`` (default: the
    requested one) that fits the limits and represents the bias/threshold offsets without
    clipping (LIF: exactly). If no shift does, the smallest that fits, with its clipping
    reported."""
    if forced is not None:
        lm = plan.build(int(forced))
        if lm is None:
            raise LimitError(f"layer {plan.index}: shift {forced} leaves weight_exp above "
                             f"{plan.limits.weight_exp[1]}", hint="use a larger shift")
        return lm
    r0 = plan.requested_shift() if start is None else start
    first = None
    for r in range(r0, MAX_SUM_SHIFT):
        lm = plan.build(r)
        if lm is None or not plan.fits(lm):
            continue
        if first is None:
            first = (lm, list(plan.notes))
        if not plan.inexact:
            break
    else:
        if first is None:
            raise LimitError(f"layer {plan.index}: no shift up to {MAX_SUM_SHIFT} fits Loihi's limits")
        lm, plan.notes = first
    r_state = first[0].shift
    if r_state > r0 and start is None:
        plan.note("shift raised to fit the 24-bit state and int32 sums", requested=r0,
                  shift=r_state)
    if lm.shift > r_state:
        plan.note("shift raised to represent the bias/threshold offsets", from_shift=r_state,
                  shift=lm.shift)
    return lm


def int32_ok(lm: LayerMap) -> bool:
    """Lava's CPU models compute in int32: each group's sum before its shift (Dense), ``a`` and
    ``a + B`` must stay exact (stricter for the LIF, which computes ``a << 6``)."""
    a_lo, a_hi = lm.input_bounds()
    lo, hi = lm.bound_range
    dense = max(int(np.maximum(np.abs(s.lava_weights * lo), np.abs(s.lava_weights * hi))
                    .sum(axis=1).max(initial=0)) for s in lm.sets)
    top = int(np.maximum(np.abs(a_lo), np.abs(a_hi)).max(initial=0))
    if lm.neuron != "lif":
        top = max(top, int(np.maximum(np.abs(a_lo + lm.bias), np.abs(a_hi + lm.bias)).max()))
    return dense < 2**31 and top < (INT32_SAFE_LIF if lm.neuron == "lif" else INT32_SAFE_SD)


def describe(plan: LayerPlan, lm: LayerMap):
    """Notes for what the mapping rounded: floors, weight rounding, split floors, requant."""
    if lm.shift > 0:
        plan.note("sums floored", shift=lm.shift)
    if lm.weight_round > 0:
        err = float(np.abs((round_weights(plan.layer.weight, lm.weight_round) << lm.weight_round)
                           - plan.layer.weight).max())
        plan.note("weights rounded to fit weight_exp", multiple=2**lm.weight_round, max_error=err)
    if any(s.mode != "mixed" for s in lm.sets) and sign_split(lm):
        plan.note("mixed-sign weights split into excitatory and inhibitory groups (exact "
                  "weights, each group's sum floored)", groups=len(lm.sets))
    if sum(s.exp < 0 for s in lm.sets) > 1:
        plan.note("synapse groups floored separately", groups=len(lm.sets))
    if lm.neuron == "relu" and not plan.last:
        ratio = float(lm.unit[0] / plan.layer.out_scale)
        plan.note("ReLU requantization as a power of two, no upper clip", unit_ratio=ratio)


def sign_split(lm: LayerMap) -> bool:
    """Whether two groups share an exponent: a mixed-sign digit split by sign."""
    exps = [s.exp for s in lm.sets]
    return len(set(exps)) < len(exps)


def next_input(lm: LayerMap, plan: LayerPlan) -> tuple[float, tuple[int, int], int]:
    """What the next layer receives: (real unit, value range, payload bits)."""
    if lm.neuron == "lif":
        return getattr(plan, "out_unit", 1.0), (0, 1), 0
    a_lo, a_hi = lm.input_bounds()
    lo, hi = int((a_lo + lm.bias).min()), int((a_hi + lm.bias).max())
    if lm.neuron == "relu":
        lo, hi = 0, max(hi, 0)
    bits = max(1, max(abs(lo), abs(hi)).bit_length()) + (lo < 0)
    if bits > plan.limits.message_bits:
        plan.note("graded payload wider than Loihi's", bits=bits)
    return float(lm.unit[0]), (lo, hi), bits


def split_floors(lm: LayerMap) -> int:
    """Floors beyond the first: groups with a negative exponent each floor their own sum."""
    return max(0, sum(s.exp < 0 for s in lm.sets) - 1)


def hidden_relu(make_plan, i: int) -> tuple[LayerPlan, LayerMap]:
    """A hidden ReLU's shift, from 0 up to the requested one: each group can scale by at most
    2^8 without rounding weights, and what this layer does not scale down the next one must.
    Pick the shift that rounds the fewest weight bits in this layer and the next together,
    then the one with the fewest separately floored groups (sign splits), then the one
    nearest the requested requantization."""
    best = None
    want = make_plan(i, None).requested_shift()
    for r in range(want, -1, -1):
        plan = make_plan(i, None)
        try:
            lm = plan_layer(plan, None, start=r)
            after = plan_layer(make_plan(i + 1, next_input(lm, plan)), None)
        except LimitError:
            continue
        cost = (lm.weight_round + after.weight_round, split_floors(lm) + split_floors(after),
                abs(lm.shift - want))
        if best is None or cost < best[0]:
            best = (cost, plan, lm)
    if best is None:
        raise LimitError(f"layer {i}: no shift fits Loihi's limits")
    return best[1], best[2]


def ones_layer(pool: QPool, bias: np.ndarray, in_unit: float) -> QLayer:
    """A pooling as a step layer: a ones kernel over its window (one channel per group)."""
    c, k = pool.window.channels, pool.window.size
    return QLayer(np.ones((c, k), np.int64), np.asarray(bias, np.int64), np.ones(c), in_unit, 1.0, "step",
                  window=pool.window)


def pool_map(net: QuantizedNetwork, i: int, prev: LayerMap | None, given,
             limits: Limits) -> tuple[LayerPlan, LayerMap]:
    """A pooling node as a Loihi layer (one ``Sparse`` ones kernel per window), exactly:

    * max pooling of spikes: an OR, a LIF that fires iff any input spiked (``a > 0``);
    * average pooling of spikes whose epilogue gives codes 0/1 only: a LIF that fires iff the
      window's spike count reaches the first count the epilogue rounds to 1;
    * a truncating average (``floor(s M / 2^S)``, QONNX Trunc), one ``M`` and ``S`` for all
      channels: digits ``M``, ``weight_exp = -S`` into a SigmaDelta (UNIT, bias 0);

    anything else is refused in one line (``LimitError``) with the reason. ``prev`` is the
    layer before (None: the pooling reads the network's input codes, which are graded)."""
    pool: QPool = net.layers[i]
    in_unit, in_range, in_bits = given
    last = len(net.layers) - 1
    spikes = prev is not None and prev.neuron == "lif"
    before = net.layers[i - 1] if i else None
    what = (before.activation + " activations" if isinstance(before, QLayer)
            else "input codes" if before is None else "pooled activations")
    win = pool.window
    if pool.op == "max":
        if not spikes:
            raise LimitError(f"layer {i}: max pooling of graded {what} has no Loihi equivalent "
                             "(synapses add; only a maximum of spikes, an OR, maps)",
                             hint="use a step activation before the pooling, a truncating average pooling "
                                  "(QONNX Trunc), or the 'sim' target")
        plan = LayerPlan(ones_layer(pool, np.zeros(win.channels), in_unit), i, False, in_unit, in_range,
                         in_bits, limits)
        plan.out_unit = float(pool.out_scale)
        return plan, plan_layer(plan, 0)
    m, sh = pool.requant.multiplier.astype(np.int64), pool.requant.shift.astype(np.int64)
    if spikes:
        outs = np.array([[pool.rescale(v, c) for v in range(win.size + 1)] for c in range(win.channels)])
        if np.isin(outs, (0, 1)).all():
            first = np.where(outs.any(axis=1), outs.argmax(axis=1), win.size + 1)  # smallest count giving 1
            plan = LayerPlan(ones_layer(pool, 1 - first, in_unit), i, False, in_unit, in_range, in_bits, limits)
            plan.out_unit = float(pool.out_scale)
            return plan, plan_layer(plan, 0)
    if not pool.truncate:
        raise LimitError(f"layer {i}: average pooling rounds half up (floor((s M + 2^(S-1)) / 2^S)) to codes "
                         f"beyond 0/1, and Loihi floors a synapse sum before a neuron can add the half",
                         hint="pool spikes (a step activation before the pooling), use a truncating sum pooling "
                              "(QONNX Trunc), or the 'sim' target")
    if len(set(m.tolist())) > 1 or len(set(sh.tolist())) > 1 or int(m[0]) < 0:
        raise LimitError(f"layer {i}: a truncating average pooling with per-channel multipliers or shifts "
                         "needs a per-neuron weight exponent (one per synapse group on Loihi)",
                         hint="one multiplier and shift for every channel, or the 'sim' target")
    digits = np.full((win.channels, win.size), int(m[0]), np.int64)
    sets = synapse_sets(digits, int(sh[0]), 0, limits)
    plan = LayerPlan(ones_layer(pool, np.zeros(win.channels), in_unit), i, i == last, in_unit, in_range,
                     in_bits, limits)
    plan.neuron = "identity"
    if isinstance(sets, str) or len(sets) != 1 or sets[0].exp != -int(sh[0]):
        raise LimitError(f"layer {i}: the average pooling's multiplier {int(m[0])} / 2^{int(sh[0])} does not fit "
                         f"one 8-bit synapse group with weight_exp in {limits.weight_exp[0]}..{limits.weight_exp[1]}",
                         hint="a smaller window or shift, or the 'sim' target")
    c = win.channels
    lm = LayerMap("identity", tuple(sets), np.zeros(c, np.int64), np.zeros(c, np.int64), 0,
                  np.full(c, float(pool.out_scale)), in_bits, in_range, int(sh[0]), 0, win)
    if not plan.fits(lm):
        raise LimitError(f"layer {i}: the average pooling's sums exceed Loihi's 24-bit state or Lava's int32 sums")
    return plan, lm


def map_network(net: QuantizedNetwork, limits: Limits, shifts=None) -> Mapping:
    """Loihi parameters for every node of ``net`` (layers and poolings, one ``LayerMap`` each);
    ``shifts`` forces per-layer shifts (None entries: automatic; a pooling takes none)."""
    fmt = net.input
    shifts = list(shifts) if shifts is not None else [None] * len(net.layers)
    if len(shifts) != len(net.layers):
        raise TargetError(f"shifts needs {len(net.layers)} entries, got {len(shifts)}")
    inputs = (fmt.scale, (fmt.qmin, fmt.qmax), fmt.bits)
    last = len(net.layers) - 1

    def make_plan(i, given):
        return LayerPlan(net.layers[i], i, i == last, *(given or inputs), limits)

    layers, notes = [], []
    for i, node in enumerate(net.layers):
        if isinstance(node, QPool):
            if shifts[i] is not None:
                raise TargetError(f"layer {i} is a pooling; its shift is not a choice (give 'auto')")
            plan, lm = pool_map(net, i, layers[-1] if layers else None, inputs, limits)
        else:
            plan = make_plan(i, None)
            if shifts[i] is None and plan.neuron == "relu" and i < last and isinstance(net.layers[i + 1], QLayer):
                plan, lm = hidden_relu(make_plan, i)
            else:
                lm = plan_layer(plan, shifts[i])
        if not int32_ok(lm):
            raise LimitError(f"layer {i}: shift {lm.shift} lets sums overflow Lava's int32 "
                             "arithmetic", hint="use a larger shift (or the automatic one)")
        if not isinstance(node, QPool):
            describe(plan, lm)
        if shifts[i] is not None and not plan.fits(lm):
            plan.note("forced shift lets the state wrap or exceed 24 bits", shift=lm.shift)
        inputs = next_input(lm, plan)
        layers.append(lm)
        notes.extend(plan.notes)
    return Mapping(tuple(layers), tuple(notes), tuple(s is not None for s in shifts))
