"""Planning a count-domain layer's fan-in: its inputs split into groups of one core each, the
emitter gate axons per group and the ramp of a gate that outgrows one tick (docs/truenorth.md,
section 3, "Wide fan-in"). Pure planning: no cores are built here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .core import AXONS
from .digits import DigitTable
from .limits import BIG_BETA, GATE_W, RAMP_AXONS, SizeError, smaller_counts


@dataclass(frozen=True)
class Groups:
    """A layer's input groups (one core each per unit block), ``n_gate`` gate axons per set
    spiking on ``ramp`` consecutive ticks (``K = 255 n_gate ramp``), and the largest positive and
    negative partial sum of any group (``drains``: the emitters' spike counts)."""

    groups: list
    n_gate: int
    ramp: int
    drains: tuple


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


def group_drains(w: np.ndarray, groups, cmax: int, bias) -> tuple[int, int]:
    bounds = [emitter_bound(w[:, grp], cmax, bias if k == 0 else None) for k, grp in enumerate(groups)]
    return max(b[0] for b in bounds), max(b[1] for b in bounds)
