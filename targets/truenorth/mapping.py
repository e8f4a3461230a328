"""Map a quantized MLP onto TrueNorth cores, exactly, in the count domain (shared/specs/
truenorth.md 7b, 7c, 7d; docs/truenorth.md).

Every layer ``acc = W h + b`` is split into input groups that fit one core. Per group core
and output unit ``u`` two *gated emitters* ``E+`` (digit table ``+v``) and ``E-`` (``-v``)::

    alpha 1, gamma 1 (linear reset), kappa 0, beta 2^18 - 1, leak 0, V0 = -K (+-b in group 0 of
    the output layer), gate type weight +255

integrate the group's partial sum ``P`` while the inputs arrive (any ticks, <= 1 spike per
axon per tick: a rate code). ``K >= max partial positive sum`` keeps ``V <= 0`` meanwhile.
``n_gate = K / 255`` host spikes on the gate axons then add ``K``: ``V = P`` and the emitter
fires exactly ``max(P, 0)`` times, one per tick, with linear reset (``E-`` fires ``max(-P, 0)``).

Hidden step layers: an accumulator ``H_u`` (types +1, -1, +255 gate; kappa 0, big beta,
alpha 1, gamma 0, R 0, ``V0 = b_u - K_H``) counts ``sum_g (E+ - E-) = acc - b``; after the last
emitter spike a single-tick gate of ``K_H`` makes it fire iff ``acc >= 1`` (hwq's step
``[acc > 0]``), one spike, at one tick: the next layer's input. ``H_u`` is duplicated once per
axon copy the next layer needs (fan-out 1). Output layer: the emitters go off-chip, and the
score is ``sum_g count(E+) - count(E-) = acc`` exactly.

Exact for unsigned inputs sent as a deterministic rate code (code ``x`` = ``x`` spikes on
ticks 1..x), weights in [-4, 3] and step hidden layers. Each frame runs from the initial state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import LimitError
from hwq.quant.qnet import QuantizedNetwork

from .core import AXONS, NEURONS, THRESHOLD_BITS, Core, Model, Neurons
from .digits import DigitTable, table_for

GATE_TYPE, GATE_W = 3, 255
BIG_BETA = 2**THRESHOLD_BITS - 1
OFFCHIP = -32
V_SAFE = 2**19 - 1


class Draft:
    """A core being filled: axons and neurons are handed out in order."""

    def __init__(self, cid: int):
        self.id, self.axon, self.neuron = cid, 0, 0
        self.w = np.zeros((AXONS, NEURONS), bool)
        self.g = np.zeros(AXONS, np.int8)
        empty = Neurons.empty()
        self.cols = {k: np.array(getattr(empty, k)) for k in Neurons.DTYPES}

    def axons(self, types) -> np.ndarray:
        n = len(types)
        if self.axon + n > AXONS:
            raise LimitError(f"core {self.id} would need more than {AXONS} axons")
        idx = np.arange(self.axon, self.axon + n)
        self.g[idx] = types
        self.axon += n
        return idx

    def add_neuron(self, **params) -> int:
        if self.neuron >= NEURONS:
            raise LimitError(f"core {self.id} would need more than {NEURONS} neurons")
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
    kind: str  # "count-step" or "count-output"
    groups: int
    blocks: int
    table: DigitTable
    n_gate: int
    drain: int  # bound on spikes per emitter
    cores: list = field(default_factory=list)
    h_cores: list = field(default_factory=list)
    h_gate: int = 0
    gate_axons: list = field(default_factory=list)  # (core id, axon indices) of emitter gates
    h_gate_axons: list = field(default_factory=list)


@dataclass
class Mapping:
    model: Model
    layers: list
    inputs: list  # per network input: list of (core id, axon)
    outputs: list  # (core id, neuron, unit, sign)
    gates: list  # (arrival tick, core id, axon)
    in_max: int
    ticks: int
    duplicated: int


def group_sizes(n_in: int, capacity: int) -> list[np.ndarray]:
    g = math.ceil(n_in / capacity)
    return [a for a in np.array_split(np.arange(n_in), g)]


def emitter_bound(w: np.ndarray, cmax: int, bias: np.ndarray | None) -> int:
    """Largest count an emitter may need (and largest positive excursion before its gate)."""
    pos = np.maximum(w, 0).sum(axis=1) * cmax
    neg = np.maximum(-w, 0).sum(axis=1) * cmax
    if bias is not None:
        pos, neg = pos + np.maximum(bias, 0), neg + np.maximum(-bias, 0)
    return int(max(pos.max(initial=0), neg.max(initial=0)))


def plan_groups(w: np.ndarray, table: DigitTable, cmax: int, bias):
    """Input groups and gate axons per group core, iterated until the gate fits."""
    n_gate = 1
    for _ in range(8):
        groups = group_sizes(w.shape[1], (AXONS - n_gate) // table.k)
        bound = max(emitter_bound(w[:, grp], cmax, bias if k == 0 else None) for k, grp in enumerate(groups))
        need = max(1, math.ceil(bound / GATE_W))
        if need <= n_gate:
            return groups, n_gate, bound
        n_gate = need
    raise LimitError(f"a gate of {n_gate} axons does not leave room for the inputs",
                     hint="the partial sums are too large for one core: fewer input bits or smaller weights")


def map_network(net: QuantizedNetwork, in_max: int) -> Mapping:
    """Cores for ``net``, whose first layer receives counts ``0..in_max`` per input."""
    layers = net.layers
    for k, layer in enumerate(layers[:-1]):
        if layer.activation != "step":
            raise LimitError(f"layer {k} has activation '{layer.activation}'; the truenorth mapping is exact "
                             "for step hidden layers only", hint="train with --activation step")
    ids = iter(range(10**6))
    drafts: list[Draft] = []
    plans: list[LayerPlan] = []
    dests = None  # per unit of the layer being built: list of (draft, axon) it must reach
    outputs, duplicated = [], 0
    for li in range(len(layers) - 1, -1, -1):
        layer = layers[li]
        w, b = np.asarray(layer.weight, np.int64), np.asarray(layer.bias, np.int64)
        m, n = w.shape
        last = li == len(layers) - 1
        cmax = in_max if li == 0 else 1
        table = table_for(w)
        groups, n_gate, bound = plan_groups(w, table, cmax, b if last else None)
        blocks = [np.arange(m)[s:s + NEURONS // 2] for s in range(0, m, NEURONS // 2)]
        plan = LayerPlan(li, "count-output" if last else "count-step", len(groups), len(blocks), table, n_gate, bound)
        h_axon = {}
        if not last:
            h_axon = place_accumulators(plan, w, b, cmax, groups, dests, ids, drafts)
            duplicated += sum(len(d) - 1 for d in dests)
        k_e = GATE_W * n_gate
        in_ports = [[] for _ in range(n)]
        for gi, grp in enumerate(groups):
            for block in blocks:
                d = Draft(next(ids))
                drafts.append(d)
                plan.cores.append(d.id)
                ports = {i: d.axons(table.types) for i in grp}
                for i in grp:
                    in_ports[i].extend((d, int(a)) for a in ports[i])
                gate = d.axons([GATE_TYPE] * n_gate)
                plan.gate_axons.append((d, gate))
                for u in block:
                    for sign in (1, -1):
                        if k_e + np.maximum(-sign * w[u, grp], 0).sum() * cmax + 255 > BIG_BETA:
                            raise LimitError(f"layer {li}: partial sums exceed the threshold range")
                        v0 = -k_e + (sign * int(b[u]) if last and gi == 0 else 0)
                        weight = [sign * v for v in table.values] + [0] * (3 - len(table.values)) + [GATE_W]
                        if last:
                            dest = dict(dest_core=OFFCHIP, dest_axon=int(u) % AXONS)
                        else:
                            hd, ha = h_axon[(u, gi, sign)]
                            dest = dict(dest_core=hd.id, dest_axon=ha)
                        j = d.add_neuron(weight=weight, alpha=1, beta=BIG_BETA, gamma=1, kappa=False, v0=v0,
                                         dest_delay=1, **dest)
                        for i in grp:
                            d.w[ports[i], j] = table.digits(int(w[u, i]))
                        d.w[gate, j] = True
                        if last:
                            outputs.append((d.id, j, int(u), sign))
        plans.append(plan)
        dests = in_ports
    plans.reverse()
    gates, ticks = schedule(plans, in_max)
    model = Model(tuple(d.freeze() for d in sorted(drafts, key=lambda d: d.id)))
    inputs = [[(d.id, a) for d, a in ports] for ports in dests]
    return Mapping(model, plans, inputs, outputs, gates, in_max, ticks, duplicated)


def place_accumulators(plan: LayerPlan, w, b, cmax, groups, dests, ids, drafts) -> dict:
    """H cores for a hidden step layer; returns (unit, group, sign) -> (draft, axon)."""
    m = w.shape[0]
    pos = np.maximum(w, 0).sum(axis=1) * cmax
    neg = np.maximum(-w, 0).sum(axis=1) * cmax
    need = int(np.max(pos + b, initial=1))
    n_gh = max(1, math.ceil(need / GATE_W))
    k_h = GATE_W * n_gh
    if np.any(k_h - b + neg > BIG_BETA):
        raise LimitError(f"layer {plan.index}: sums exceed the threshold range of the accumulators")
    per_unit = 2 * len(groups)
    where, d, gate = {}, None, None
    for u in range(m):
        copies = dests[u]
        if d is None or d.axon + per_unit > AXONS or d.neuron + len(copies) > NEURONS:
            d = Draft(next(ids))
            drafts.append(d)
            plan.h_cores.append(d.id)
            gate = d.axons([2] * n_gh)
            plan.h_gate_axons.append((d, gate))
        ax = {}
        for gi in range(len(groups)):
            for sign, t in ((1, 0), (-1, 1)):
                ax[(gi, sign)] = int(d.axons([t])[0])
                where[(u, gi, sign)] = (d, ax[(gi, sign)])
        for dd, da in copies:
            j = d.add_neuron(weight=[1, -1, GATE_W, 0], alpha=1, beta=BIG_BETA, gamma=0, kappa=False,
                             v0=int(b[u]) - k_h, dest_core=dd.id, dest_axon=da, dest_delay=1)
            d.w[list(ax.values()), j] = True
            d.w[gate, j] = True
    plan.h_gate = n_gh
    return where


def schedule(plans: list[LayerPlan], in_max: int):
    """Arrival ticks of the gates: inputs arrive on ticks 1..in_max; a layer's emitter gate
    comes with its last input, the accumulator gate with the last emitter spike."""
    gates, last_in = [], max(in_max, 1)
    for plan in plans:
        g_e = last_in
        gates += [(g_e, d.id, int(a)) for d, axons in plan.gate_axons for a in axons]
        g_h = g_e + plan.drain
        if plan.kind == "count-step":
            gates += [(g_h, d.id, int(a)) for d, axons in plan.h_gate_axons for a in axons]
            last_in = g_h + 1
        else:
            return gates, g_h + 1
    raise AssertionError("the last layer is an output layer")
