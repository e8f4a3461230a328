"""Building a planned network's cores (docs/truenorth.md): the one-tick (Eedn) layers
(``build_eedn``, tiled where a window is given: ``tiling.py``), the count-domain layers' emitter
cores (``build_count``) and hidden layers' accumulator cores (``place_accumulators``), with a
unit duplicated once per destination axon (fan-out 1). Layers are built last first, so that each
knows the ``(draft, axon)`` ports its units must reach; ``build_layers`` runs them in that order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import tiling
from .accumulators import ReluAccumulator, StepAccumulator, ordered_bias
from .core import AXONS, NEURONS
from .digits import DigitTable
from .drafts import Builder
from .grouping import Groups
from .limits import ACC_ALPHA, ACC_RESET, BIAS_TYPE, BIG_BETA, GATE_TYPE, GATE_W, OFFCHIP
from .planning import LayerJob, eedn_bias


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
class CountLayout:
    """What ``planning.size_layer`` planned for a count-domain layer: its input groups and, for
    a hidden layer, its accumulator (a step layer's ``StepAccumulator`` or a ReLU layer's
    ``ReluAccumulator``; None for the output layer, whose emitters go off-chip)."""

    grp: Groups
    acc: StepAccumulator | ReluAccumulator | None = None

    @classmethod
    def of(cls, scheme: str, size) -> CountLayout:
        if scheme == "count-step":
            return cls(size.grp, size)
        if scheme == "count-relu":
            grp, acc = size
            return cls(grp, acc)
        return cls(size)

    @property
    def ordered(self) -> bool:
        return getattr(self.acc, "style", "") == "ordered"


@dataclass(frozen=True)
class BuiltLayer:
    """One built layer: its plan, per input the ``(draft, axon)`` ports it receives on, and the
    neurons it added to duplicate units for fan-out."""

    plan: LayerPlan
    in_ports: list
    duplicated: int


def build_layers(jobs: list, sizes: dict, *, builder: Builder, progress=None) -> list[BuiltLayer]:
    """Every layer's cores, last layer first (``jobs``: the ``LayerJob`` of each layer, in order,
    without ``dests``; ``sizes``: ``size_layer``'s plan of each count-domain layer). Returns
    the built layers in network order. ``progress(done, total, what)`` hears of each finished
    layer (``done`` layers of ``total``, ``what``: the layer, its scheme and its cores)."""
    built = []
    dests = None  # per unit of the layer being built: list of (draft, axon) it must reach
    for done, job in enumerate(reversed(jobs), 1):
        job = dataclasses.replace(job, dests=dests)
        if job.scheme == "eedn-step":
            plan = LayerPlan(job.index, job.scheme, 1, 0, job.table)
            in_ports = build_eedn(plan, job, builder=builder)
            layer = BuiltLayer(plan, in_ports, sum(max(len(d) - 1, 0) for d in dests))
        else:
            layer = build_count(job, CountLayout.of(job.scheme, sizes[job.index]), builder=builder)
        built.append(layer)
        dests = layer.in_ports
        if progress is not None:
            plan = layer.plan
            progress(done, len(jobs), f"layer {plan.index} ({plan.scheme}): {len(plan.cores) + len(plan.h_cores)} "
                                      f"cores, {len(builder.drafts)} in all")
    built.reverse()
    return built


def build_eedn(plan: LayerPlan, job: LayerJob, *, builder: Builder) -> list:
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



def build_count(job: LayerJob, layout: CountLayout, *, builder: Builder) -> BuiltLayer:
    """A count-domain layer (emitters, and accumulators for hidden layers) as ``layout`` plans it."""
    li, w, b, table = job.index, job.w, job.b, job.table
    m, n = w.shape
    last = job.scheme == "count-output"
    grp = layout.grp
    groups, n_gate = grp.groups, grp.n_gate
    ordered = layout.ordered
    blocks = [np.arange(m)[s:s + NEURONS // 2] for s in range(0, m, NEURONS // 2)]
    plan = LayerPlan(li, job.scheme, len(groups), len(blocks), table, n_gate, max(grp.drains), ordered=ordered,
                     drains=grp.drains, ramp=grp.ramp)
    h_axon, dup = {}, 0
    if not last:
        h_axon = place_accumulators(plan, job, layout, builder=builder)
        dup = sum(max(len(d) - 1, 0) for d in job.dests)
    k_e = GATE_W * n_gate * grp.ramp
    in_ports = [[] for _ in range(n)]
    pad = [0] * (3 - len(table.values))
    for gi, inputs in enumerate(groups):
        for block in blocks:
            d = builder.core(li)
            plan.cores.append(d.id)
            ports = {i: d.axons(table.types) for i in inputs}
            for i in inputs:
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
                    for i in inputs:
                        d.w[ports[i], j] = table.digits(int(w[u, i]))
                    d.w[gate if sign > 0 else gate_neg, j] = True
                    if last:
                        builder.outputs.append((d.id, j, int(u), sign))
    return BuiltLayer(plan, in_ports, dup)


def place_accumulators(plan: LayerPlan, job: LayerJob, layout: CountLayout, *, builder: Builder) -> dict:
    """H cores for a hidden layer; returns (unit, group, sign) -> (draft, axon)."""
    layer, w, b = job.layer, job.w, job.b
    groups, acc = layout.grp.groups, layout.acc
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

