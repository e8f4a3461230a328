"""Scheduling a built mapping: the arrival ticks of the host's gate and bias spikes and the ticks
per frame (docs/truenorth.md, section 3, "Timing")."""

from __future__ import annotations

from .building import LayerPlan


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
