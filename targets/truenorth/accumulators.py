"""Planning a hidden count-domain layer's accumulators (docs/truenorth.md): a step layer's gated or
ordered accumulator (``step_accumulator``) and a ReLU layer's gated accumulator with its clear
pulse (``relu_accumulator``, its rate ratio from ``relu_rate.relu_params``). Pure planning:
sizes and ``SizeError`` where a range or a core's axons do not hold them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hwq.quant.qnet import QLayer

from .core import AXONS, WEIGHT_MAX
from .digits import DigitTable
from .grouping import Groups, plan_groups
from .limits import ACC_REACH, BIG_BETA, GATE_W, SizeError, smaller_counts
from .relu_rate import relu_params


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
