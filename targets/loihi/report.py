"""The compile report: per-layer mapping, resources (cores, neurons, synapses, memory) and
every adjustment (rounding or clipping) the mapping made. JSON-serialisable."""

from __future__ import annotations

import math

import numpy as np

from hwq.errors import LimitError
from hwq.quant.qnet import QPool, QuantizedNetwork

from .conv import connections
from .limits import LOIHI, STATE_BITS, Limits
from .mapping import LayerMap, Mapping

WEIGHT_BITS = LOIHI.weight_bits
# per neuron: LIF u, v, bias mantissa and a 3-bit bias exponent; SigmaDelta's four states and bias
NEURON_STATE_BITS = {"lif": 2 * STATE_BITS + LOIHI.lif_bias_mant_bits + 3,
                     "sigma_delta": 4 * STATE_BITS + LOIHI.sd_bias_bits, "relay": STATE_BITS, "sigma": STATE_BITS}


def neurons(lm: LayerMap, hidden: bool) -> dict:
    """Neurons of the layer: main ones, and the relay / Sigma helpers of a SigmaDelta layer."""
    n = lm.n_out
    if lm.neuron == "lif":
        return {"main": n, "helpers": 0, "state_bits": n * NEURON_STATE_BITS["lif"]}
    helpers = n + (n if hidden else 0)
    bits = n * (NEURON_STATE_BITS["sigma_delta"] + NEURON_STATE_BITS["relay"] + hidden * NEURON_STATE_BITS["sigma"])
    return {"main": n, "helpers": helpers, "state_bits": bits}


def fan(lm: LayerMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per neuron (C-order): synapses into it (all groups), nonzero ones; and the sorted
    (neuron, input) pairs of its connections (one axon per distinct input)."""
    groups = len(lm.sets)
    if lm.window is None:
        n_out, n_in = lm.channels, lm.n_in
        per = np.full(n_out, groups * n_in, np.int64)
        nonzero = sum((s.digits != 0).sum(axis=1) for s in lm.sets).astype(np.int64)
        return per, nonzero, np.empty((0, 2), np.int64)
    rows, cols, flat = connections(lm.window, lm.channels)
    per = np.bincount(rows, minlength=lm.n_out) * groups
    nonzero = sum(np.bincount(rows, weights=(s.digits.reshape(-1)[flat] != 0), minlength=lm.n_out)
                  for s in lm.sets).astype(np.int64)
    return per, nonzero, np.stack([rows, cols], axis=1)


def split(lm: LayerMap, per: np.ndarray, pairs: np.ndarray, comp_per_neuron: int, reach: np.ndarray,
          limits: Limits) -> dict:
    """Cores that hold the layer, its neurons cut into equal C-order chunks: each chunk's
    compartments, synapse memory, input axons (distinct inputs it reads) and output axons
    (``reach``: per neuron, the cores of the next layer that read it; one axon each) within a
    core's. The largest chunk that fits, by bisection over chunk sizes (a smaller chunk never
    needs more of a core); also ``reach`` of this layer's inputs: how many of its cores read each.
    Empty when not even one neuron per core fits."""
    n = lm.n_out
    extra = n if lm.neuron != "lif" else 0  # the cancel path's identity synapses
    syn_bits = (per + (1 if extra else 0)) * WEIGHT_BITS
    need = max(1, math.ceil(n * comp_per_neuron / limits.neurons_per_core),
               math.ceil(int(syn_bits.sum()) / limits.synapse_bits_per_core),
               math.ceil(int(reach.sum()) / limits.output_axons_per_core))

    def fits(size: int) -> dict | None:
        if size * comp_per_neuron > limits.neurons_per_core:
            return None
        starts = np.arange(0, n, size)
        bits, outs = np.add.reduceat(syn_bits, starts), np.add.reduceat(reach, starts)
        if bits.max() > limits.synapse_bits_per_core or outs.max() > limits.output_axons_per_core:
            return None
        if lm.window is None:
            axons = np.full(len(starts), lm.n_in)
            reach_in = np.full(lm.n_in, len(starts), np.int64)
        else:
            key = np.unique(pairs[:, 0] // size * lm.n_in + pairs[:, 1])
            axons = np.bincount(key // lm.n_in, minlength=len(starts))
            reach_in = np.bincount(key % lm.n_in, minlength=lm.n_in)
        if axons.max() > limits.input_axons_per_core:
            return None
        return {"cores": len(starts), "input_axons": int(axons.max()), "output_axons": int(outs.max()),
                "synapse_bits": int(bits.max()), "reach_in": reach_in}

    lo, hi = 1, math.ceil(n / need)  # the largest fitting size lies in [lo, hi]
    best = fits(hi)
    if best is None:
        best = fits(lo)
        if best is None:
            return {}
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            got = fits(mid)
            lo, hi, best = (mid, hi, got) if got is not None else (lo, mid, best)
    return best


def layer_entry(i: int, lm: LayerMap, net: QuantizedNetwork, hidden: bool, reach: np.ndarray, limits: Limits):
    """The layer's mapping and resources; ``reach``: per neuron, the next layer's cores it feeds."""
    neu = neurons(lm, hidden)
    per, nonzero, pairs = fan(lm)
    node = net.layers[i]
    fan_in = int(per.max(initial=0))
    if fan_in * WEIGHT_BITS > limits.synapse_bits_per_core:
        raise LimitError(f"layer {i}: one neuron's {fan_in * WEIGHT_BITS} bits of synapses exceed "
                         f"a core's {limits.synapse_bits_per_core}", hint="use fewer inputs or bits")
    comp = 1 + (0 if lm.neuron == "lif" else 1 + hidden)
    where = split(lm, per, pairs, comp, reach, limits)
    if not where:
        raise LimitError(f"layer {i}: no split of its {lm.n_out} neurons fits a core ({limits.neurons_per_core} "
                         f"compartments, {limits.input_axons_per_core} input and {limits.output_axons_per_core} "
                         f"output axons, {limits.synapse_bits_per_core} synapse bits)",
                         hint="fewer inputs per neuron or a narrower next layer")
    synapses_ = int(per.sum()) + (lm.n_out if lm.neuron != "lif" else 0)
    a_lo, a_hi = lm.input_bounds()
    if isinstance(node, QPool):
        what, shape = f"{node.op} pooling {node.window.describe()}", list(node.out_shape)
    else:
        what, shape = node.activation, list(node.weight.shape)
    return {
        "index": i, "shape": shape, "activation": what,
        "window": None if lm.window is None else lm.window.describe(),
        "connection": "Sparse" if lm.window is not None else "Dense",
        "neuron": "LIFReset" if lm.neuron == "lif" else f"SigmaDelta({lm.neuron})",
        "input": "binary spikes" if lm.in_bits == 0 else f"graded {lm.in_bits}-bit",
        "shift": lm.shift, "weight_round": lm.weight_round,
        "groups": [{"mode": s.mode, "weight_exp": s.lava_weight_exp, "digit_exp": s.exp + lm.shift}
                   for s in lm.sets],
        "vth": lm.vth, "a_range": [int(a_lo.min()), int(a_hi.max())],
        "neurons": neu["main"], "helper_neurons": neu["helpers"], "compartments": neu["main"] + neu["helpers"],
        "synapses": synapses_, "nonzero_synapses": int(nonzero.sum()), "fan_in": fan_in,
        "synapse_bytes": synapses_ * WEIGHT_BITS // 8, "state_bytes": neu["state_bits"] // 8,
        "input_axons": lm.n_in, "output_axons": int(reach.sum()),
        "core_input_axons": where["input_axons"], "core_output_axons": where["output_axons"],
        "core_synapse_bits": where["synapse_bits"], "cores": where["cores"],
    }, where["reach_in"]


def resources(net: QuantizedNetwork, mapping: Mapping, limits: Limits) -> tuple[list[dict], dict]:
    """Per layer and in total: compartments, synapses and their memory, axons, fan-in, cores
    (output layer first: a layer's output axons depend on which of the next layer's cores read
    each of its neurons),
    and chips; ``LimitError`` in one line when more chips than ``limits.chips`` are needed."""
    n = len(mapping.layers)
    entries, reach = [None] * n, np.zeros(mapping.layers[-1].n_out, np.int64)
    for i in range(n - 1, -1, -1):
        entries[i], reach = layer_entry(i, mapping.layers[i], net, i + 1 < n, reach, limits)
    total = {k: sum(e[k] for e in entries) for k in
             ("cores", "neurons", "helper_neurons", "compartments", "synapses", "synapse_bytes", "state_bytes")}
    total["fan_in"] = max(e["fan_in"] for e in entries)
    total["chips"] = math.ceil(total["cores"] / limits.cores_per_chip)
    total["chips_allowed"] = limits.chips
    if total["chips"] > limits.chips:
        big = max(entries, key=lambda e: e["cores"])
        raise LimitError(f"the network needs {total['cores']} cores = {total['chips']} Loihi chips of "
                         f"{limits.cores_per_chip} cores, more than the {limits.chips} allowed (layer {big['index']} "
                         f"alone takes {big['cores']})",
                         hint="allow more chips (--option chips=N), or use a smaller network")
    return entries, total


SMALLER_SUMS = ("fewer input or weight bits (--input-bits, --bits): smaller sums fit the 24-bit state with less "
                "shifting and flooring")
# The setting that avoids each adjustment (matched on the start of its ``what``), in the order a
# user should try them: a compile-time fidelity warning (``hwq.api.check_fidelity``) names them.
ADVICE = (
    ("ReLU requantization as a power of two, no upper clip",
     "more activation bits (--act-bits 8 or more): a Loihi ReLU has no upper clip and requantizes by a power "
     "of two, which changes coarse activation codes most"),
    ("weights rounded", "fewer weight bits (--bits) or smaller weights, so that no weight is rounded"),
    ("LIF bias/threshold out of range", SMALLER_SUMS),
    ("SigmaDelta bias out of range", SMALLER_SUMS),
    ("shift raised", SMALLER_SUMS),
    ("forced shift", "the automatic shifts (drop --option shifts=...)"),
    ("graded payload wider", "fewer activation bits (--act-bits)"),
    ("sums floored", SMALLER_SUMS),
)


def advice(adjustments) -> list[str]:
    """The settings that avoid the mapping's adjustments, most effective first, each once."""
    whats = [a.get("what", "") for a in adjustments]
    return list(dict.fromkeys(fix for start, fix in ADVICE if any(w.startswith(start) for w in whats)))


def build_report(net: QuantizedNetwork, mapping: Mapping, limits: Limits, backend: str) -> dict:
    layers, total = resources(net, mapping, limits)
    return {"target": "loihi", "backend": backend, "latency_steps": mapping.latency,
            "layers": layers, "resources": total,
            "adjustments": list(mapping.adjustments), "advice": advice(mapping.adjustments),
            "limits": limits.as_dict()}
