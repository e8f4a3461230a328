"""A loihi mapping as a lava-dl ``netx`` HDF5 network (``hwq export --format netx``).

Layout read by ``lava.lib.dl.netx.hdf5.Network`` (lava-dl ``src/lava/lib/dl/netx/hdf5.py``,
``utils.py``; shared/specs/neuromorphic_formats.md section 3.2)::

    /layer/<i>            i = 0 .. L-1, input to output (no input layer: the first Dense
                          takes hwq's graded input codes)
        type    b'dense'  (ASCII; NetDict decodes it)
        shape   int64 (1,)       n_out (netx reads np.prod(shape))
        weight  int64 (n_out, n_in)   the effective integer synaptic weights
        bias    int64 (n_out,)        LIF bias_mant (netx fixes bias_exp = 6)
        neuron/ type b'CUBA'; iDecay 4096 (du = 4095); vDecay 0 (dv = 0); vThMant; refDelay 1;
                gradedSpike False
    /hwq                  attrs: format, version, how to load it (input_message_bits,
                          reset_interval, input_shape) and how to read the scores

Load it as ``Network(net_config=path, input_shape=(n_in,), input_message_bits=B,
reset_interval=1)``. Hidden step layers are ``LIFReset`` neurons exactly as hwq maps them
(docs/loihi.md section 1). The output layer is a CUBA neuron that never fires
(``vThMant = 2^17 - 1``); hwq's score ``a + B`` is its voltage divided by 64.

What netx cannot describe, and hwq refuses in one line (``TargetError``):
* a right shift of the sums (``r > 0``) or split synapse groups: netx stores one integer
  matrix per layer and chooses the weight exponent itself (``optimize_weight_bits``), so the
  effective weights are the stored integers (and, mixed-sign, within [-128, 127]);
* ReLU layers: netx's SDNN neurons are sigma-delta (a ``Delta`` input encoder, SigmaDelta
  state and spike exponents of 6) and cannot express hwq's relay that lets each sample be
  seen afresh; hwq's ReLU mapping is not written;
* a LIF bias or output bias beyond the 13-bit ``bias_mant`` at ``bias_exp = 6``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwq.errors import TargetError, UsageError
from hwq.files.h5io import atomic_h5

from .limits import ACT_SHIFT, LOIHI, STATE_MAX
from .mapping import LayerMap, Mapping

FORMAT, VERSION = "hwq-netx", 1
BIAS_MANT = 2 ** (LOIHI.lif_bias_mant_bits - 1)  # Lava LIF bias_mant: 13 bits signed
BIAS_EXP = 6  # netx writes every CUBA bias at bias_exp 6
OUTPUT_VTH = 2**LOIHI.lif_vth_bits - 1  # the largest vThMant: v = 64 (a + B) stays below vth * 2^6 < 2^23


def write_netx(program, path: str | Path) -> None:
    """Write ``program`` (a loihi program) in netx's HDF5 layout (atomically). Convolutions and
    poolings are refused in one line: netx's ``conv`` layers (kernel flip, WHC order) are not
    written yet, and netx has no pooling layer."""
    conv = next((i for i, lm in enumerate(program.mapping.layers) if lm.window is not None), None)
    if conv is not None:
        node = program.net.layers[conv]
        what = "a convolution" if hasattr(node, "weight") else f"a {node.op} pooling"
        raise UsageError(f"netx export: layer {conv} is {what}; hwq writes netx dense layers only "
                         "(netx conv layers are not written yet, and netx has no pooling)",
                         hint="export the integer network as onnx or nir, or use the dense layers of an MLP")
    layers = netx_layers(program.mapping)
    with atomic_h5(path) as f:
        group = f.create_group("layer")
        for i, layer in enumerate(layers):
            write_layer(group.create_group(str(i)), layer)
        first = program.mapping.layers[0]
        f.create_group("hwq").attrs.update(
            format=FORMAT, version=VERSION, input_message_bits=int(first.in_bits),
            input_shape=np.array([program.net.n_features]), reset_interval=1,
            scores="output layer voltage v // 64 (= hwq loihi score a + B)",
            load=json.dumps({"input_shape": [program.net.n_features], "input_message_bits": int(first.in_bits),
                             "reset_interval": 1}))


def write_layer(g, layer: dict) -> None:
    g.create_dataset("type", data=np.bytes_("dense"))
    g.create_dataset("shape", data=np.array([layer["weight"].shape[0]], np.int64))
    g.create_dataset("weight", data=layer["weight"].astype(np.int64))
    g.create_dataset("bias", data=layer["bias"].astype(np.int64))
    n = g.create_group("neuron")
    n.create_dataset("type", data=np.bytes_("CUBA"))
    for key in ("iDecay", "vDecay", "vThMant", "refDelay"):
        n.create_dataset(key, data=np.int64(layer[key]))
    n.create_dataset("gradedSpike", data=np.bool_(False))


def netx_layers(mapping: Mapping) -> list[dict]:
    """The netx parameters of every layer, or a ``TargetError`` naming what netx cannot hold."""
    out = []
    for i, lm in enumerate(mapping.layers):
        if lm.kind == "relu":
            raise TargetError(f"layer {i}: ReLU layers cannot be written as netx (its SDNN neurons are "
                              "sigma-delta; hwq's relay mapping has no netx form)",
                              hint="export step networks, or use --format onnx/nir")
        weight = effective_weight(lm, i)
        if lm.kind == "lif":
            bias, vth = lm.bias, lm.vth
            if np.any(bias % 2**BIAS_EXP):
                raise TargetError(f"layer {i}: LIF bias is not a multiple of 2^{BIAS_EXP} "
                                  f"(netx fixes bias_exp = {BIAS_EXP})")
            bias = bias >> BIAS_EXP
        else:  # output: v = 64 (a + B), read as v // 64
            bias, vth = lm.bias, OUTPUT_VTH
            lo, hi = lm.input_bounds()
            peak = int(np.max(np.abs(np.concatenate([lo, hi, lo + bias, hi + bias]))))
            if peak << ACT_SHIFT > STATE_MAX:
                raise TargetError(f"layer {i}: output sums up to {peak} exceed the LIF's 24-bit state "
                                  "(v = 64 (a + B))")
        if np.any((bias < -BIAS_MANT) | (bias >= BIAS_MANT)):
            raise TargetError(f"layer {i}: bias beyond netx's 13-bit bias_mant at bias_exp = {BIAS_EXP}")
        out.append({"weight": weight, "bias": np.asarray(bias, np.int64), "iDecay": 4096, "vDecay": 0,
                    "vThMant": int(vth), "refDelay": 1})
    return out


def effective_weight(lm: LayerMap, i: int) -> np.ndarray:
    """``sum_s digits_s 2^exp_s`` when every exponent is >= 0 (no floor), else a TargetError."""
    if any(s.exp < 0 for s in lm.sets):
        raise TargetError(f"layer {i}: the mapping shifts the sums right (r = {lm.shift}); netx derives the "
                          "weight exponent from the integer weights and cannot store a shift",
                          hint="netx export needs every layer at shift 0 (small fan-in or few input bits)")
    w = sum(s.digits.astype(np.int64) << s.exp for s in lm.sets)
    lo, hi = int(w.min()), int(w.max())
    if (lo < 0 < hi and (lo < -128 or hi > 127)) or hi > 255 or lo < -255:
        raise TargetError(f"layer {i}: effective weights [{lo}, {hi}] do not fit one 8-bit netx synapse")
    return w
