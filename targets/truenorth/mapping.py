"""Map a quantized MLP onto TrueNorth cores (shared/specs/truenorth.md 7a-7d; docs/truenorth.md).

Per layer one of four schemes, chosen at compile time (``plan_schemes``):

* ``eedn-step`` (spec 7a, one tick): a step layer whose inputs arrive as single spikes in one
  tick and that fits one core (``inputs * k + bias axons <= 256``). Memoryless neurons
  ``alpha 1, beta 0, kappa 1, gamma 0, R 0``, digit-typed axons, bias as a leak ``<= 0`` plus
  always-on bias axons of type 3 (one host spike per frame, on the layer's tick) for the rest:
  ``b = c * w_b + lambda`` with ``c`` axons of weight ``w_b`` and ``-255 < lambda <= 0``. A
  neuron without input then stays at 0 (no spontaneous spikes: a positive leak would fire
  every idle tick). Fires at tick t iff ``sum_i W x_i(t) + b >= 1``, exactly hwq's step.
* ``count-step``, ``count-relu``, ``count-output`` (spec 7c, multi-tick, exact for any fan-in):
  inputs split into groups of one core; per group core and unit ``u`` two *gated emitters*
  ``E+`` (digit table ``+v``) and ``E-`` (``-v``)::

      alpha 1, gamma 1 (linear reset), kappa 0, beta 2^18 - 1, leak 0, V0 = -K (+-b in group 0
      of the output layer), gate type weight +255

  integrate the group's partial sum ``P`` while the inputs arrive (any ticks, <= 1 spike per
  axon per tick). ``K >= max positive partial sum`` keeps ``V <= 0`` meanwhile; ``K / 255``
  host spikes on the gate axons then make ``V = P`` and the emitter fires exactly
  ``max(P, 0)`` times, one per tick (``E-``: ``max(-P, 0)``).

  Hidden layers: an accumulator ``H_u`` (types ``+m``, ``-m``, ``+255`` gate, ``-255`` clear;
  kappa 0, big beta) integrates ``m * sum_g (E+ - E-)``; after the last emitter spike a gate of
  ``K_H`` sets ``V = m * acc + h``. Step: ``m = 1, h = 0, alpha 1, gamma 0``: one spike iff
  ``acc >= 1``. ReLU: ``alpha = a, gamma 1``: ``floor((m acc + h) / a)`` spikes, one per tick,
  stopped after ``A = 2^act_bits - 1`` by a clear pulse: ``clip(floor((m acc + h)/a), 0, A)``
  (``relu_params``: exact when some ``m <= 255`` reproduces hwq's requantization on the
  layer's whole accumulator range, else the nearest ratio, approximate, on request).
  ``H_u`` is duplicated once per axon copy the next layer needs (fan-out 1).
  Output layer: the emitters go off-chip; the score ``sum_g count(E+) - count(E-) = acc``.

  Wide fan-in (e.g. 784 inputs, ``plan_groups``): where one gate tick would need more than
  the core's axons, the gate is *ramped*: ``RAMP_AXONS`` axons spiking on ``r`` consecutive
  ticks (``K = 255 * RAMP_AXONS * r``; an emitter fires at most once per tick, so its count is
  still ``max(P, 0)``, finished by tick ``gate + r - 1 + drain``). ``K + max|P| + 255 <=
  2^18 - 1`` bounds one group's partial sum (refused beyond, naming the input bits that fit).
  A step layer whose sums outgrow one gated accumulator (``K_H - b + neg > 2^18 - 1``) uses
  *ordered* accumulators (``step_accumulator``): the ``E-`` emitters are gated first and
  drain into ``H_u`` (weight -1, ``kappa 1``: floor at ``-beta``), then the ``E+`` (+1) and
  ``c`` bias spikes (``b = c w_b + r``, ``w_b <= 255``): ``alpha = beta = 2^18 - 1``,
  ``V0 = alpha - 1 + r``, reset ``R = -beta``. ``H_u`` fires iff ``acc = pos - neg + b >= 1``,
  at most once, exactly when the rise ``pos + c w_b <= alpha + beta - 1`` (``ACC_REACH``):
  a drain that hits the floor then leaves ``acc <= -1`` (no spike either way). It fires on a
  tick that depends on the sum, so its successor is a count-domain layer.

Inputs: a column per input (signed codes: a ``+`` and a ``-`` column, ``x = x+ - x-``, weights
``W`` and ``-W``), sent as a rate code (``x`` spikes on ticks 1..x), a stochastic code or a
binary threshold (program.py). Each frame runs from the initial state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import InvalidModelError, LimitError
from hwq.ir import activations
from hwq.quant.bounds import rounding_half
from hwq.quant.qnet import QLayer, QuantizedNetwork, Requant
from hwq.quant.quantize import requant_for

from . import tiling
from .core import AXONS, NEURONS, THRESHOLD_BITS, WEIGHT_MAX, Core, Model, Neurons
from .digits import DigitTable, table_for

GATE_TYPE, GATE_W = 3, 255  # emitter gates; in H cores: type 2 gate (+255), type 3 clear (-255)
BIAS_TYPE = 3  # eedn cores: always-on bias axons
BIG_BETA = 2**THRESHOLD_BITS - 1
OFFCHIP = -32
M_MAX = 255
GATE_AXONS = 48  # at most this many gate (and clear) axons per ReLU accumulator core
RAMP_AXONS = 8  # emitter gates that outgrow one tick: this many axons per gate, spiking on several ticks
ACC_ALPHA = BIG_BETA  # ordered accumulators: threshold at the top of the 18-bit range ...
ACC_RESET = -BIG_BETA  # ... reset far below it after the spike (R = -(2^18 - 1), VR 18) ...
ACC_REACH = ACC_ALPHA + BIG_BETA - 1  # ... so they take a rise (E+ spikes and bias) of up to 2^19 - 3


class SizeError(LimitError):
    """A layer outgrew a core's axons or a neuron's range at the spike counts it receives;
    ``map_network`` names the count setting (input or activation bits) that fits instead."""


def smaller_counts(li: int | None) -> str:
    """The setting that shrinks the spike counts (so the sums) layer ``li`` receives."""
    if li is None:
        return "lower --input-bits or --act-bits (smaller spike counts, smaller sums)"
    if li == 0:
        return "lower --input-bits (layer 0 receives up to 2^input_bits - 1 spikes per input)"
    return f"lower --act-bits (layer {li} receives up to 2^act_bits - 1 spikes per unit of layer {li - 1})"


def fit_hint(li: int | None, what: str) -> str:
    """Every setting that makes a layer that outgrew a core's ``what`` fit (refusals name them)."""
    return (f"{smaller_counts(li)}; fewer weight bits (--bits; fewer axon types per input); "
            f"or fewer hidden units (`hwq train --hidden`), so that each core needs fewer {what}")


class Draft:
    """A core being filled: axons and neurons are handed out in order (``layer``: the layer it
    serves, for the refusal's message)."""

    def __init__(self, cid: int, layer: int | None = None):
        self.id, self.axon, self.neuron, self.layer = cid, 0, 0, layer
        self.copies = 0  # neurons that duplicate another of this core's units (fan-out: one destination each)
        self.w = np.zeros((AXONS, NEURONS), bool)
        self.g = np.zeros(AXONS, np.int8)
        empty = Neurons.empty()
        self.cols = {k: np.array(getattr(empty, k)) for k in Neurons.DTYPES}

    def axons(self, types) -> np.ndarray:
        n = len(types)
        if self.axon + n > AXONS:
            where = f"layer {self.layer}: " if self.layer is not None else ""
            raise LimitError(f"{where}core {self.id} would need more than {AXONS} axons",
                             hint=fit_hint(self.layer, "axons"))
        idx = np.arange(self.axon, self.axon + n)
        self.g[idx] = types
        self.axon += n
        return idx

    def add_neuron(self, **params) -> int:
        if self.neuron >= NEURONS:
            where = f"layer {self.layer}: " if self.layer is not None else ""
            raise LimitError(f"{where}core {self.id} would need more than {NEURONS} neurons",
                             hint=fit_hint(self.layer, "neurons"))
        j = self.neuron
        self.neuron += 1
        self.cols["exists"][j] = True
        for key, value in params.items():
            self.cols[key][j] = value
        return j

    def freeze(self) -> Core:
        return Core(self.id, self.w, self.g, Neurons(**self.cols))


@dataclass
class LayerPlan:
    """Where one layer went, and its timing."""

    index: int
    scheme: str  # "eedn-step", "count-step", "count-relu" or "count-output"
    groups: int
    blocks: int
    table: DigitTable
    n_gate: int = 0
    drain: int = 0  # bound on spikes per emitter
    exact: bool = True
    cores: list = field(default_factory=list)
    h_cores: list = field(default_factory=list)
    gate_axons: list = field(default_factory=list)  # (draft, axon indices) of emitter gates
    h_gate_axons: list = field(default_factory=list)
    clear_axons: list = field(default_factory=list)  # relu: (draft, axons) of the clear pulse
    bias_axons: list = field(default_factory=list)  # eedn: (draft, axons), one spike per frame
    out_max: int = 1  # largest spike count of one output unit per frame (relu: A)
    relu: dict = field(default_factory=dict)  # relu: per-unit m, a, h and the deviation
    ordered: bool = False  # step: ordered accumulators (E- first into a floor, then E+)
    drains: tuple = (0, 0)  # largest positive and negative partial sum of one group
    gate_neg_axons: list = field(default_factory=list)  # ordered: (draft, axons) of the E- gates
    h_bias_axons: list = field(default_factory=list)  # ordered: (draft, axons), h_bias_count spikes
    h_bias_count: int = 0
    ramp: int = 1  # ticks on which the emitter gates spike
    tiling: object = None  # eedn convolutions and poolings: the tiling.TilePlan its cores follow


@dataclass(frozen=True)
class Builder:
    """The cores under construction, shared by every layer's builder: core ids handed out in
    order, the drafts, the output neurons ``(core id, neuron, unit, sign)`` and the ReLU policy."""

    relu: str
    ids: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))
    drafts: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    def core(self, layer: int) -> Draft:
        """A new empty core serving ``layer``."""
        d = Draft(next(self.ids), layer)
        self.drafts.append(d)
        return d


@dataclass
class Mapping:
    model: Model
    layers: list
    inputs: list  # per input column: list of (core id, axon)
    outputs: list  # (core id, neuron, unit, sign)
    gates: list  # host spikes other than inputs: (arrival tick, core id, axon)
    in_max: int  # largest count per input column
    ticks: int
    duplicated: int
    core_rows: list = field(default_factory=list)  # per core: (core id, layer, axons, neurons, copies)

    @property
    def host_ports(self) -> list:
        ports = {p for col in self.inputs for p in col}
        return sorted(ports | {(c, a) for _, c, a in self.gates})


def group_sizes(n_in: int, capacity: int) -> list[np.ndarray]:
    g = math.ceil(n_in / capacity)
    return [a for a in np.array_split(np.arange(n_in), g)]


def emitter_bound(w: np.ndarray, cmax: int, bias: np.ndarray | None) -> tuple[int, int]:
    """Largest positive and negative partial sums of one group."""
    pos = np.maximum(w, 0).sum(axis=1) * cmax
    neg = np.maximum(-w, 0).sum(axis=1) * cmax
    if bias is not None:
        pos, neg = pos + np.maximum(bias, 0), neg + np.maximum(-bias, 0)
    return int(pos.max(initial=0)), int(neg.max(initial=0))


def plan_groups(w: np.ndarray, table: DigitTable, cmax: int, bias, li: int, gate_sets: int = 1) -> Groups:
    """Input groups and gate axons per group core: as few groups as the axons allow, more
    where a group's partial sums would leave the emitters' threshold range. ``gate_sets``:
    separate gates for ``E-`` and ``E+`` (2, ordered accumulators) or one shared (1). With one
    set, a one-tick gate where it fits (``K = 255 n_gate``), else a ramp; with two, a ramp:
    ``RAMP_AXONS`` axons spiking on ``ramp`` ticks (``K = 255 RAMP_AXONS ramp``)."""
    if gate_sets == 1:
        capacity = max(1, (AXONS - 1) // table.k)
        while True:
            n_gate = 1
            for _ in range(8):
                groups = group_sizes(w.shape[1], max(1, min(capacity, (AXONS - n_gate) // table.k)))
                drains = group_drains(w, groups, cmax, bias)
                need = max(1, math.ceil(max(drains) / GATE_W))
                if need <= n_gate:
                    break
                n_gate = need
            room = (AXONS - n_gate) // table.k >= 1
            if need <= n_gate and room and GATE_W * n_gate + max(drains) + GATE_W <= BIG_BETA:
                return Groups(groups, n_gate, 1, drains)
            if capacity == 1:
                break
            capacity = max(1, capacity // 2)
    capacity = max(1, (AXONS - gate_sets * RAMP_AXONS) // table.k)
    while True:
        groups = group_sizes(w.shape[1], capacity)
        drains = group_drains(w, groups, cmax, bias)
        ramp = max(1, math.ceil(max(drains) / (GATE_W * RAMP_AXONS)))
        if GATE_W * RAMP_AXONS * ramp + max(drains) + GATE_W <= BIG_BETA:
            return Groups(groups, RAMP_AXONS, ramp, drains)
        if capacity == 1:
            raise SizeError(f"layer {li}: one input's partial sum ({max(drains)}) exceeds what an emitter can hold "
                            f"(gate and sum within the threshold range 0..{BIG_BETA})",
                            hint=f"{smaller_counts(li)}, or fewer weight bits (--bits)")
        capacity = max(1, capacity // 2)


@dataclass(frozen=True)
class Groups:
    """A layer's input groups (one core each per unit block), ``n_gate`` gate axons per set
    spiking on ``ramp`` consecutive ticks (``K = 255 n_gate ramp``), and the largest positive and
    negative partial sum of any group (``drains``: the emitters' spike counts)."""

    groups: list
    n_gate: int
    ramp: int
    drains: tuple


def group_drains(w: np.ndarray, groups, cmax: int, bias) -> tuple[int, int]:
    bounds = [emitter_bound(w[:, grp], cmax, bias if k == 0 else None) for k, grp in enumerate(groups)]
    return max(b[0] for b in bounds), max(b[1] for b in bounds)


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


@dataclass(frozen=True)
class LayerIn:
    """What a layer receives: ``cmax`` spikes at most per input per frame; ``single``: all in
    one tick (binary inputs)."""

    cmax: int
    single: bool


@dataclass(frozen=True)
class LayerJob:
    """One layer to build: the network layer, its integer weights and bias (layer 0's as the
    encoding sees them), its scheme, what it receives, its digit table and, per unit, the
    ``(draft, axon)`` ports its outputs must reach (built last layer first)."""

    index: int
    layer: QLayer
    w: np.ndarray
    b: np.ndarray
    scheme: str
    inp: LayerIn
    table: DigitTable
    dests: list
    window: tuple | None = None  # a convolution's or pooling's (Window, out channels): tiled (tiling.py)


def eedn_fits(w: np.ndarray, table: DigitTable, n_bias: int, window=None) -> bool:
    """Does a one-tick layer fit: all its inputs on one core, or, tiled, one patch's inputs."""
    if window is None:
        return w.shape[1] * table.k + n_bias <= AXONS
    win, _ = window
    return tiling.patch_axons(win, table.k * (w.shape[1] // win.n_in), n_bias) <= AXONS


def plan_schemes(net: QuantizedNetwork, weights: list, biases: list, cmax0: int, step: str, relu: str,
               windows: dict | None = None):
    """The scheme of every layer, in order, and what it receives (``windows``: tiled layers)."""
    windows = windows or {}
    schemes, ins = [], []
    inp = LayerIn(cmax0, cmax0 <= 1)
    layers = net.layers
    for li, layer in enumerate(layers):
        w, b = weights[li], biases[li]
        last = li == len(layers) - 1
        ins.append(inp)
        if last:
            if not layer.activation_kind.passes_accumulator:
                raise LimitError(f"the output layer has activation '{layer.activation}'; truenorth maps "
                                 "identity output layers (scores are spike counts)",
                                 hint="export the model without its final activation (argmax of the logits "
                                      "decides the same class)")
            schemes.append("count-output")
        elif layer.activation_kind is activations.STEP:
            table = table_for(w)
            n_bias = int(eedn_bias(b)[0].max(initial=0))
            fits = eedn_fits(w, table, n_bias, windows.get(li))
            schemes.append("eedn-step" if step == "auto" and inp.single and fits else "count-step")
            # an ordered accumulator fires on a tick that depends on the sum: no one-tick successor
            try:
                gated = schemes[-1] == "eedn-step" or step_accumulator(w, b, table, inp.cmax, li).style == "gated"
            except SizeError:
                gated = False  # refused by map_network's sizing, with the setting that fits
            inp = LayerIn(1, gated)
        elif layer.activation_kind is activations.RELU:
            if relu == "refuse":
                raise LimitError(f"layer {li} is ReLU; the option relu=refuse refuses it",
                                 hint="drop --option relu=refuse (relu=exact, the default) or use relu=rate")
            schemes.append("count-relu")
            inp = LayerIn(2**layer.act_bits - 1, False)
        elif isinstance(layer.activation_kind, activations.Clip):
            raise LimitError(f"layer {li} has the clipped activation {layer.activation} (ReLU6/Hardtanh); truenorth "
                             "maps step and ReLU hidden layers only", hint="use ReLU or step, or the 'sim' target")
        else:
            raise LimitError(f"layer {li} has activation '{layer.activation}'; truenorth maps step and ReLU "
                             "hidden layers only (a lookup table has no spiking form)",
                             hint="train with --activation step or relu")
    return schemes, ins


def eedn_bias(b: np.ndarray):
    """``b = c * w_b + lam`` with ``c`` bias axons of weight ``|w_b| <= 255`` and
    ``-255 < lam <= 0`` (no spontaneous spikes)."""
    b = np.asarray(b, np.int64)
    c = np.zeros_like(b)
    wb = np.zeros_like(b)
    pos = b > 0
    c[pos] = -(-b[pos] // 255)
    wb[pos] = -(-b[pos] // c[pos])
    neg = b < -255
    c[neg] = (-b[neg]) // 255
    wb[neg] = -255
    lam = b - c * wb
    return c, wb, lam


@dataclass(frozen=True)
class StepAccumulator:
    """How a count-domain step layer sums its groups. ``gated``: one gate of ``n_gh`` axons
    after the drain reveals ``acc`` in one tick (fires on a fixed tick). ``ordered``: the
    ``E-`` emitters drain first into a floor at ``-beta`` (kappa 1), then the ``E+`` and
    ``bias_count`` bias spikes rise towards ``alpha = 2^18 - 1`` (fires on a tick that
    depends on the sum; no gate, range ``2^19 - 3`` for the rise)."""

    style: str
    grp: Groups
    n_gh: int = 0
    bias_count: int = 0


def ordered_bias(b: np.ndarray, c: int):
    """Positive biases as ``c`` spikes of weight ``w_b <= 255`` plus ``r in (-c, 0]`` (in V0):
    ``b = c w_b + r``; non-positive biases ``w_b = 0, r = b``."""
    b = np.asarray(b, np.int64)
    wb = np.where(b > 0, -(-b // max(c, 1)), 0)
    return wb, b - c * wb


def step_accumulator(w: np.ndarray, b: np.ndarray, table: DigitTable, cmax: int, li: int) -> StepAccumulator:
    """The gated accumulator where its gate and range fit, else the ordered one; ``SizeError``
    where neither does."""
    pos = np.maximum(w, 0).sum(axis=1) * cmax
    neg = np.maximum(-w, 0).sum(axis=1) * cmax
    n_gh = max(1, math.ceil(int(np.max(b + pos, initial=1)) / GATE_W))
    if n_gh < AXONS and not np.any(GATE_W * n_gh - b + neg > BIG_BETA):
        grp = plan_groups(w, table, cmax, None, li)
        if 2 * len(grp.groups) + n_gh <= AXONS:
            return StepAccumulator("gated", grp, n_gh=n_gh)
    grp = plan_groups(w, table, cmax, None, li, gate_sets=2)
    groups = grp.groups
    c = max(0, math.ceil(int(np.max(b, initial=0)) / WEIGHT_MAX))
    wb, _ = ordered_bias(b, c)
    rise = int(np.max(pos + c * wb, initial=0))
    if rise > ACC_REACH:
        raise SizeError(f"layer {li}: a unit's positive sum reaches {rise}, beyond the {ACC_REACH} an accumulator "
                        f"can take (alpha + beta - 1 with 18-bit alpha and beta)",
                        hint=f"{smaller_counts(li)}, or fewer weight bits (--bits)")
    per_unit = 2 * len(groups) + (1 if c else 0)
    if per_unit > AXONS:
        raise SizeError(f"layer {li}: a unit's accumulator needs {per_unit} axons ({len(groups)} input groups, "
                        f"an E+ and an E- axon each{', and a bias axon' if c else ''}); a core has {AXONS}",
                        hint=f"{smaller_counts(li)}, or fewer weight bits (--bits; fewer axons per input)")
    return StepAccumulator("ordered", grp, bias_count=c)


def count_bits(li: int, cmax: int, signed: bool) -> tuple[str, list]:
    """The option that sets layer ``li``'s input counts and, for each smaller value of it, the
    count it gives: input codes (signed: ``2^(bits-1)`` per column) or activation codes."""
    if li == 0:
        top = lambda bits: 2 ** (bits - 1) if signed else 2**bits - 1  # noqa: E731
        name, least = "--input-bits", 2  # quantize takes 2..16 input bits
    else:
        top = lambda bits: 2**bits - 1  # noqa: E731
        name, least = "--act-bits", 1
    return name, [(bits, top(bits)) for bits in range(16, least - 1, -1) if top(bits) < cmax]


def at_counts(job: LayerJob, cmax: int, bits: int) -> tuple[QLayer, np.ndarray]:
    """Layer ``job.index`` as ``quantize`` would make it were its inputs counts ``0..cmax``
    instead of ``0..c0`` (an estimate: scales go as ``1 / counts``): the bias codes
    ``round(b cmax / c0)`` (the accumulator's scale grows by ``c0 / cmax``); a ReLU's ratio
    ``M / 2^S`` times ``c0 / cmax`` at layer 0 (``--input-bits`` changes only the input scale),
    its own ``act_bits = bits`` later (``--act-bits`` also sets this layer's output scale, and
    the ratio stays)."""
    c0 = job.inp.cmax
    b = (job.b * cmax * 2 + c0) // (2 * c0)
    layer = job.layer
    if job.scheme == "count-relu" and layer.requant is not None:
        if job.index == 0:
            rq = layer.requant
            real = rq.multiplier / 2.0**rq.shift * c0 / cmax
            mult = np.zeros_like(rq.multiplier)
            shift = np.zeros_like(rq.shift)
            on = real > 0
            if on.any():
                est = requant_for(real[on], 1)
                mult[on], shift[on] = est.multiplier, est.shift
            layer = dataclasses.replace(layer, requant=Requant(mult, shift))
        else:
            layer = dataclasses.replace(layer, act_bits=bits)
    return layer, b


def fitting_counts(job: LayerJob, relu: str, signed: bool) -> str:
    """The hint of a ``SizeError``: the largest smaller count setting under which the layer's
    groups and accumulators fit, tried on the layer as quantize would rescale it
    (``at_counts``)."""
    li = job.index
    name, tries = count_bits(li, job.inp.cmax, signed)
    for bits, cmax in tries:
        layer, b = at_counts(job, cmax, bits)
        try:
            size_layer(job.scheme, layer, job.w, b, job.table, cmax, li, relu)
        except LimitError:
            continue
        where = f"layer {li} receives up to {cmax} spikes per {'input' if li == 0 else 'unit'}"
        return f"{name} {bits} fits ({where}), or fewer weight bits (--bits)"
    counts = f"no smaller {name} fits" if tries or li == 0 else f"layer {li} receives single spikes"
    return f"{counts}; fewer weight bits (--bits), or fewer inputs per unit"


def size_layer(scheme: str, layer: QLayer, w, b, table: DigitTable, cmax: int, li: int, relu: str):
    """Everything a count-domain layer's cores need that depends on its counts (``SizeError``
    where it does not fit): the output layer's groups, a step accumulator, a ReLU accumulator."""
    if scheme == "count-output":
        return plan_groups(w, table, cmax, b, li)
    if scheme == "count-step":
        return step_accumulator(w, b, table, cmax, li)
    if scheme == "count-relu":
        grp = plan_groups(w, table, cmax, None, li)
        return grp, relu_accumulator(layer, w, b, cmax, len(grp.groups), relu, li)
    return None


def map_network(net: QuantizedNetwork, in_max: int, *, signed_split: bool = False, step: str = "auto",
                relu: str = "exact", layer0_bias=None, windows: dict | None = None) -> Mapping:
    """Cores for ``net``. Layer 0 receives counts ``0..in_max`` per input column
    (``signed_split``: columns ``x+`` then ``x-``, weights ``[W, -W]``); ``layer0_bias``
    replaces layer 0's bias (binary encoding). A layer that does not fit at its counts is
    refused naming the count setting that fits (``fitting_counts``). ``windows``: per layer index
    the (Window, out channels) of a convolution or pooling in its dense view (conv_mapping.py):
    its one-tick cores are tiles (tiling.py)."""
    windows = windows or {}
    layers = net.layers
    weights = [np.asarray(layer.weight, np.int64) for layer in layers]
    biases = [np.asarray(layer.bias, np.int64) for layer in layers]
    if signed_split:
        weights[0] = np.concatenate([weights[0], -weights[0]], axis=1)
    if layer0_bias is not None:
        biases[0] = np.asarray(layer0_bias, np.int64)
    schemes, ins = plan_schemes(net, weights, biases, in_max, step, relu, windows)
    sizes = {}
    for li in range(len(layers)):
        job = LayerJob(li, layers[li], weights[li], biases[li], schemes[li], ins[li], table_for(weights[li]), None)
        try:
            sizes[li] = size_layer(job.scheme, job.layer, job.w, job.b, job.table, job.inp.cmax, li, relu)
        except SizeError as err:
            raise LimitError(err.message, hint=fitting_counts(job, relu, signed_split)) from None
    builder = Builder(relu)
    plans: list[LayerPlan] = []
    dests = None  # per unit of the layer being built: list of (draft, axon) it must reach
    duplicated = 0
    for li in range(len(layers) - 1, -1, -1):
        job = LayerJob(li, layers[li], weights[li], biases[li], schemes[li], ins[li], table_for(weights[li]), dests,
                       windows.get(li))
        if job.scheme == "eedn-step":
            plan = LayerPlan(li, job.scheme, 1, 0, job.table)
            in_ports = build_eedn(plan, job, builder)
            duplicated += sum(max(len(d) - 1, 0) for d in dests)
        else:
            plan, in_ports, dup = build_count(job, builder, sizes[li])
            duplicated += dup
        plans.append(plan)
        dests = in_ports
    plans.reverse()
    gates, ticks = schedule(plans, in_max)
    model = Model(tuple(d.freeze() for d in sorted(builder.drafts, key=lambda d: d.id)))
    inputs = [[(d.id, a) for d, a in ports] for ports in dests]
    rows = [(d.id, d.layer, d.axon, d.neuron, d.copies) for d in sorted(builder.drafts, key=lambda d: d.id)]
    return Mapping(model, plans, inputs, builder.outputs, gates, in_max, ticks, duplicated, rows)


def build_eedn(plan: LayerPlan, job: LayerJob, builder: Builder) -> list:
    """One-tick step layer (spec 7a): units packed so that their copies fit 256 neurons."""
    w, b, table, dests = job.w, job.b, job.table, job.dests
    m, n = w.shape
    c, wb, lam = eedn_bias(b)
    n_bias = int(c.max(initial=0))
    blocks, cur, used = [], [], 0
    if job.window is not None:  # a convolution: spatial tile x output channel (tiling.py)
        win, c_out = job.window
        plan.tiling = tiling.plan_tiles(win, c_out, table.k * (n // win.n_in), n_bias, [len(d) for d in dests],
                                        what=f"layer {plan.index}")
        blocks = plan.tiling.blocks
    for u in range(m if job.window is None else 0):
        k = len(dests[u])
        if cur and used + k > NEURONS:
            blocks.append(cur)
            cur, used = [], 0
        cur.append(u)
        used += k
    if cur:
        blocks.append(cur)
    plan.blocks = len(blocks)
    in_ports = [[] for _ in range(n)]
    pad = [0] * (3 - len(table.values))
    for block in blocks:
        if not any(dests[u] for u in block):
            continue
        d = builder.core(plan.index)
        plan.cores.append(d.id)
        used_inputs = [int(i) for i in np.flatnonzero(np.any(w[block] != 0, axis=0))]
        ports = {i: d.axons(table.types) for i in used_inputs}
        for i in used_inputs:
            in_ports[i].extend((d, int(a)) for a in ports[i])
        bias = d.axons([BIAS_TYPE] * n_bias) if n_bias else np.zeros(0, np.int64)
        if n_bias:
            plan.bias_axons.append((d, bias))
        js, us = [], []
        for u in block:
            d.copies += max(len(dests[u]) - 1, 0)
            for dd, da in dests[u]:
                j = d.add_neuron(weight=[*table.values, *pad, int(wb[u])], alpha=1, beta=0, kappa=True, gamma=0,
                                 reset=0, leak=int(lam[u]), v0=0, dest_core=dd.id, dest_axon=da, dest_delay=1)
                js.append(j)
                us.append(u)
                d.w[bias[:int(c[u])], j] = True
        if js and used_inputs:  # crossbar bits of every neuron and input at once: digits of W[u, i]
            sub = w[np.ix_(us, used_inputs)]
            vals = np.unique(sub)
            lut = np.array([table.digits(int(v)) for v in vals], bool)  # (values, k)
            bits = lut[np.searchsorted(vals, sub)]  # (neurons, inputs, k)
            axons = np.array([ports[i] for i in used_inputs]).reshape(-1)  # (inputs k)
            d.w[axons[:, None], np.array(js)[None, :]] = bits.reshape(len(js), -1).T
    return in_ports


def build_count(job: LayerJob, builder: Builder, size):
    """A count-domain layer (emitters, and accumulators for hidden layers); ``size``: what
    ``size_layer`` planned for it."""
    li, w, b, table = job.index, job.w, job.b, job.table
    m, n = w.shape
    last = job.scheme == "count-output"
    acc = None
    if job.scheme == "count-step":
        acc = size
        grp = acc.grp
    elif job.scheme == "count-relu":
        grp, acc = size
    else:
        grp = size
    groups, n_gate = grp.groups, grp.n_gate
    ordered = getattr(acc, "style", "") == "ordered"
    blocks = [np.arange(m)[s:s + NEURONS // 2] for s in range(0, m, NEURONS // 2)]
    plan = LayerPlan(li, job.scheme, len(groups), len(blocks), table, n_gate, max(grp.drains), ordered=ordered,
                     drains=grp.drains, ramp=grp.ramp)
    h_axon, dup = {}, 0
    if not last:
        h_axon = place_accumulators(plan, job, groups, builder, acc)
        dup = sum(max(len(d) - 1, 0) for d in job.dests)
    k_e = GATE_W * n_gate * grp.ramp
    in_ports = [[] for _ in range(n)]
    pad = [0] * (3 - len(table.values))
    for gi, grp in enumerate(groups):
        for block in blocks:
            d = builder.core(li)
            plan.cores.append(d.id)
            ports = {i: d.axons(table.types) for i in grp}
            for i in grp:
                in_ports[i].extend((d, int(a)) for a in ports[i])
            gate = d.axons([GATE_TYPE] * n_gate)
            plan.gate_axons.append((d, gate))
            gate_neg = gate
            if ordered:  # E- drain first, on their own gate
                gate_neg = d.axons([GATE_TYPE] * n_gate)
                plan.gate_neg_axons.append((d, gate_neg))
            for u in block:
                for sign in (1, -1):
                    v0 = -k_e + (sign * int(b[u]) if last and gi == 0 else 0)
                    weight = [sign * v for v in table.values] + pad + [GATE_W]
                    if last:
                        dest = dict(dest_core=OFFCHIP, dest_axon=int(u) % AXONS)
                    else:
                        hd, ha = h_axon[(u, gi, sign)]
                        dest = dict(dest_core=hd.id, dest_axon=ha)
                    j = d.add_neuron(weight=weight, alpha=1, beta=BIG_BETA, gamma=1, kappa=False, v0=v0,
                                     dest_delay=1, **dest)
                    for i in grp:
                        d.w[ports[i], j] = table.digits(int(w[u, i]))
                    d.w[gate if sign > 0 else gate_neg, j] = True
                    if last:
                        builder.outputs.append((d.id, j, int(u), sign))
    return plan, in_ports, dup


@dataclass(frozen=True)
class ReluAccumulator:
    """A ReLU layer's accumulators: per unit ``m, a, h`` (``relu_params``), the gate of
    ``n_gh`` axons (``K_H = 255 n_gh``) and ``n_clear`` clear axons."""

    rp: dict
    n_gh: int
    n_clear: int


def relu_accumulator(layer: QLayer, w, b, cmax: int, n_groups: int, relu: str, li: int) -> ReluAccumulator:
    """Size a ReLU layer's gated accumulators: ``SizeError`` where the potential, the clear
    pulse or one unit's axons (2 per group, gate, clear) leave their range."""
    pos = np.maximum(w, 0).sum(axis=1) * cmax
    neg = np.maximum(-w, 0).sum(axis=1) * cmax
    rp = relu_params(layer, b - neg, b + pos, relu == "rate", li)
    mm, aa, hh = rp["m"], rp["a"], rp["h"]
    A = 2**layer.act_bits - 1
    # V0 = -K_H + m b + h; before the gate V <= V0 + m pos < a; after it V = m acc + h
    need = int(np.max(mm * (b + pos) + hh - aa + 1, initial=1))
    n_gh = max(1, math.ceil(need / GATE_W))
    k_h = GATE_W * n_gh
    if np.any(k_h - mm * b - hh + mm * neg > BIG_BETA):
        span = int(np.max(k_h - mm * b - hh + mm * neg))
        raise SizeError(f"layer {li}: sums exceed the threshold range of the accumulators (a ReLU unit spans "
                        f"{span} > {BIG_BETA})", hint=f"{smaller_counts(li)}, or fewer weight bits (--bits)")
    x_max = mm * (b + pos) + hh
    x_min = mm * (b - neg) + hh
    over = x_max - A * aa - aa + 1
    n_clear = max(0, math.ceil(int(over.max(initial=0)) / GATE_W))
    if n_clear and np.any(np.minimum(x_min, 0) - GATE_W * n_clear < -BIG_BETA):
        raise SizeError(f"layer {li}: the clear pulse would leave the accumulators' range",
                        hint=f"{smaller_counts(li)}, or fewer weight bits (--bits)")
    if 2 * n_groups + n_gh + n_clear > AXONS:
        raise SizeError(f"layer {li}: a ReLU unit's accumulator needs {2 * n_groups + n_gh + n_clear} axons "
                        f"({n_groups} input groups, an E+ and an E- axon each, {n_gh} gate and {n_clear} clear "
                        f"axons); a core has {AXONS}", hint=f"{smaller_counts(li)}, or fewer weight bits (--bits)")
    return ReluAccumulator(rp, n_gh, n_clear)


def place_accumulators(plan: LayerPlan, job: LayerJob, groups, builder: Builder, acc) -> dict:
    """H cores for a hidden layer; returns (unit, group, sign) -> (draft, axon)."""
    layer, w, b = job.layer, job.w, job.b
    m = w.shape[0]
    n_bias = wb = None
    if plan.scheme == "count-relu":
        rp = acc.rp
        mm, aa, hh = rp["m"], rp["a"], rp["h"]
        A = 2**layer.act_bits - 1
        plan.exact = bool(rp["exact"].all())
        plan.relu = dict(exact_units=int(rp["exact"].sum()), units=m, max_deviation=rp["max_dev"],
                         mismatch_share_of_acc_range=rp["mismatch_share"], act_max=A, m=mm, a=aa, h=hh)
        plan.out_max = A
        n_gh, n_clear = acc.n_gh, acc.n_clear
    elif acc.style == "gated":
        mm, aa, hh = np.ones(m, np.int64), np.ones(m, np.int64), np.zeros(m, np.int64)
        n_gh, n_clear = acc.n_gh, 0
    else:  # ordered: E- (-1) into a floor at -beta, then E+ (+1) and bias spikes (+w_b) up to alpha
        n_gh, n_clear = 0, 0
        plan.h_bias_count = acc.bias_count
        n_bias = 1 if acc.bias_count else 0
        wb, r = ordered_bias(b, acc.bias_count)
    k_h = GATE_W * n_gh
    per_unit = 2 * len(groups)
    where, d, gate = {}, None, None
    for u in range(m):
        copies = job.dests[u]
        if d is None or d.axon + per_unit > AXONS or d.neuron + len(copies) > NEURONS:
            d = builder.core(plan.index)
            plan.h_cores.append(d.id)
            gate = d.axons([2] * n_gh)
            plan.h_gate_axons.append((d, gate))
            clear = d.axons([3] * n_clear)
            if n_clear:
                plan.clear_axons.append((d, clear))
            if n_bias:
                bias = d.axons([2])
                plan.h_bias_axons.append((d, bias))
        ax = {}
        for gi in range(len(groups)):
            for sign, t in ((1, 0), (-1, 1)):
                ax[(gi, sign)] = int(d.axons([t])[0])
                where[(u, gi, sign)] = (d, ax[(gi, sign)])
        for dd, da in copies:
            if wb is not None:
                j = d.add_neuron(weight=[1, -1, int(wb[u]), 0], alpha=ACC_ALPHA, beta=BIG_BETA, gamma=0, kappa=True,
                                 reset=ACC_RESET, v0=max(ACC_ALPHA - 1 + int(r[u]), -BIG_BETA), dest_core=dd.id,
                                 dest_axon=da, dest_delay=1)
                if n_bias and wb[u]:
                    d.w[bias, j] = True
            else:
                j = d.add_neuron(weight=[int(mm[u]), -int(mm[u]), GATE_W, -GATE_W], alpha=int(aa[u]),
                                 beta=BIG_BETA, gamma=1 if plan.scheme == "count-relu" else 0, kappa=False,
                                 v0=int(mm[u] * b[u] + hh[u]) - k_h, dest_core=dd.id, dest_axon=da, dest_delay=1)
                d.w[gate, j] = True
                if n_clear:
                    d.w[clear, j] = True
            d.w[list(ax.values()), j] = True
        d.copies += max(len(copies) - 1, 0)
    plan.h_gate = n_gh
    return where


def schedule(plans: list[LayerPlan], in_max: int):
    """Arrival ticks of the host's gates and bias spikes. Inputs arrive on ticks 1..in_max;
    an eedn layer computes on the tick its inputs arrive (bias spike on that tick); a count
    layer's emitter gate comes with its last input, the accumulator gate with the last
    emitter spike, a ReLU's clear ``A`` ticks later. An ordered step layer gates its ``E-``
    with the last input and its ``E+`` once they have drained; its bias spikes arrive one
    per tick from then, and its accumulators fire by the end of the ``E+`` drain."""
    gates = []
    last_in = max(in_max, 1)
    for plan in plans:
        if plan.scheme == "eedn-step":
            t = last_in
            gates += [(t, d.id, int(a)) for d, axons in plan.bias_axons for a in axons]
            last_in = t + 1
            continue
        g_e, ramp = last_in, range(plan.ramp)
        if plan.ordered:
            g_pos = g_e + plan.ramp - 1 + plan.drains[1]
            gates += [(g_e + t, d.id, int(a)) for d, axons in plan.gate_neg_axons for a in axons for t in ramp]
            gates += [(g_pos + t, d.id, int(a)) for d, axons in plan.gate_axons for a in axons for t in ramp]
            gates += [(g_pos + k, d.id, int(a)) for d, axons in plan.h_bias_axons for a in axons
                      for k in range(1, plan.h_bias_count + 1)]
            last_in = g_pos + max(plan.ramp - 1 + plan.drains[0], plan.h_bias_count) + 1
            continue
        gates += [(g_e + t, d.id, int(a)) for d, axons in plan.gate_axons for a in axons for t in ramp]
        g_h = g_e + plan.ramp - 1 + plan.drain
        if plan.scheme == "count-output":
            return gates, g_h + 1
        gates += [(g_h, d.id, int(a)) for d, axons in plan.h_gate_axons for a in axons]
        if plan.scheme == "count-relu":
            gates += [(g_h + plan.out_max, d.id, int(a)) for d, axons in plan.clear_axons for a in axons]
            last_in = g_h + plan.out_max
        else:
            last_in = g_h + 1
    raise AssertionError("the last layer is an output layer")
