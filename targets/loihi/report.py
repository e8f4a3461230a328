"""The compile report: per-layer mapping, resources (cores, neurons, synapses, memory) and
every adjustment (rounding or clipping) the mapping made. JSON-serialisable."""

from __future__ import annotations

import math

from hwq.errors import LimitError
from hwq.quant.qnet import QuantizedNetwork

from .limits import LOIHI, STATE_BITS, Limits
from .mapping import LayerMap, Mapping

WEIGHT_BITS = LOIHI.weight_bits
# per neuron: LIF u, v, bias mantissa and a 3-bit bias exponent; SigmaDelta's four states and bias
NEURON_STATE_BITS = {"lif": 2 * STATE_BITS + LOIHI.lif_bias_mant_bits + 3,
                     "sigma_delta": 4 * STATE_BITS + LOIHI.sd_bias_bits, "relay": STATE_BITS, "sigma": STATE_BITS}


def neurons(lm: LayerMap, hidden: bool) -> dict:
    """Neurons of the layer: main ones, and the relay / Sigma helpers of a SigmaDelta layer."""
    n = lm.n_out
    if lm.kind == "lif":
        return {"main": n, "helpers": 0, "state_bits": n * NEURON_STATE_BITS["lif"]}
    helpers = n + (n if hidden else 0)
    bits = n * (NEURON_STATE_BITS["sigma_delta"] + NEURON_STATE_BITS["relay"] + hidden * NEURON_STATE_BITS["sigma"])
    return {"main": n, "helpers": helpers, "state_bits": bits}


def synapses(lm: LayerMap) -> dict:
    """Dense groups store every weight; the cancel path of a SigmaDelta layer one per neuron."""
    n_out, n_in = lm.sets[0].digits.shape
    dense = len(lm.sets) * n_out * n_in
    helpers = n_out if lm.kind != "lif" else 0
    return {"synapses": dense + helpers, "nonzero": int(sum((s.digits != 0).sum() for s in lm.sets)),
            "bits": (dense + helpers) * WEIGHT_BITS, "fan_in_bits": len(lm.sets) * n_in * WEIGHT_BITS}


def cores(n_neurons: int, syn_bits: int, limits: Limits) -> int:
    return max(1, math.ceil(n_neurons / limits.neurons_per_core),
               math.ceil(syn_bits / limits.synapse_bits_per_core))


def layer_entry(i: int, lm: LayerMap, net: QuantizedNetwork, hidden: bool, limits: Limits):
    neu, syn = neurons(lm, hidden), synapses(lm)
    if syn["fan_in_bits"] > limits.synapse_bits_per_core:
        raise LimitError(f"layer {i}: one neuron's {syn['fan_in_bits']} bits of synapses exceed "
                         f"a core's {limits.synapse_bits_per_core}", hint="use fewer inputs or bits")
    a_lo, a_hi = lm.input_bounds()
    return {
        "index": i, "shape": list(net.layers[i].weight.shape),
        "activation": net.layers[i].activation,
        "neuron": "LIFReset" if lm.kind == "lif" else f"SigmaDelta({lm.kind})",
        "input": "binary spikes" if lm.in_bits == 0 else f"graded {lm.in_bits}-bit",
        "shift": lm.shift, "weight_round": lm.weight_round,
        "groups": [{"mode": s.mode, "weight_exp": s.lava_weight_exp, "digit_exp": s.exp + lm.shift}
                   for s in lm.sets],
        "vth": lm.vth, "a_range": [int(a_lo.min()), int(a_hi.max())],
        "neurons": neu["main"], "helper_neurons": neu["helpers"], "synapses": syn["synapses"],
        "nonzero_synapses": syn["nonzero"], "synapse_bytes": syn["bits"] // 8,
        "state_bytes": neu["state_bits"] // 8,
        "cores": cores(neu["main"] + neu["helpers"], syn["bits"], limits),
    }


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
    n = len(mapping.layers)
    layers = [layer_entry(i, lm, net, i + 1 < n, limits) for i, lm in enumerate(mapping.layers)]
    total = {k: sum(e[k] for e in layers) for k in
             ("cores", "neurons", "helper_neurons", "synapses", "synapse_bytes", "state_bytes")}
    total["chips"] = math.ceil(total["cores"] / limits.cores_per_chip)
    return {"target": "loihi", "backend": backend, "latency_steps": mapping.latency,
            "layers": layers, "resources": total,
            "adjustments": list(mapping.adjustments), "advice": advice(mapping.adjustments),
            "limits": limits.as_dict()}
