"""A loihi mapping as a lava-dl ``netx`` HDF5 network (``hwq export --format netx``).

Layout read by ``lava.lib.dl.netx.hdf5.Network`` (lava-dl ``src/lava/lib/dl/netx/hdf5.py``,
``utils.py``; shared/specs/neuromorphic_formats.md section 3.2)::

    /layer/<i>            i = 0 .. L-1, input to output
        type    b'dense'  (ASCII; NetDict decodes it)
        shape   int64 (1,)       n_out (netx reads np.prod(shape))
        weight  int64 (n_out, n_in)   the effective integer synaptic weights
        bias    int64 (n_out,)        LIF bias_mant (netx fixes bias_exp = 6)
        neuron/ type b'CUBA'; iDecay 4096 (du = 4095); vDecay 0 (dv = 0); vThMant; refDelay 1;
                gradedSpike False
    /hwq                  attrs: format, version, how to load it (input_message_bits,
                          reset_interval, input_shape) and how to read the scores

A network with convolutions or poolings (``netx_conv.py``) starts with an ``input`` layer
holding only ``shape`` (C, H, W) (netx then takes its input shape from the file), writes each
windowed layer as a ``conv`` layer (``shape`` (C, H, W), ``weight`` (C_out, C_in / groups, kH,
kW), ``stride``/``padding``/``dilation`` (H, W), ``groups``, ``inChannels``, ``outChannels``,
``kernelSize``, per-channel ``bias``, the same ``neuron/``), and puts a ``flatten`` layer
before the first dense layer after them (netx's flatten is (x, y, c) -> (c, y, x), hwq's C-order).

Load it as ``Network(net_config=path, input_shape=(n_in,), input_message_bits=B,
reset_interval=1)`` (a CNN: without ``input_shape``; its input is hwq's codes as (x, y, c)).
Hidden step layers are ``LIFReset`` neurons exactly as hwq maps them (docs/loihi.md section 1).
The output layer is a CUBA neuron that never fires (``vThMant = 2^17 - 1``); hwq's score
``a + B`` is its voltage divided by 64.

What netx cannot describe, and hwq refuses in one line (``TargetError``):
* a right shift of the sums (``r > 0``) or split synapse groups: netx stores one integer
  matrix per layer and chooses the weight exponent itself (``optimize_weight_bits``), so the
  effective weights are the stored integers (and, mixed-sign, within [-128, 127]); a ``conv``
  layer gets no weight exponent at all (Lava's ``Conv`` never applies one);
* ReLU layers: netx's SDNN neurons are sigma-delta (a ``Delta`` input encoder, SigmaDelta
  state and spike exponents of 6) and cannot express hwq's relay that lets each sample be
  seen afresh; hwq's ReLU mapping is not written; nor is a hidden identity relay (a
  truncating average pooling: a SigmaDelta with ``weight_exp = -S``);
* asymmetric padding (Lava's ``Conv`` pads both sides alike);
* a LIF bias or output bias beyond the 13-bit ``bias_mant`` at ``bias_exp = 6``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwq.errors import TargetError
from hwq.files.h5io import atomic_h5
from hwq.quant.qnet import QPool

from .limits import ACT_SHIFT, LOIHI, STATE_MAX
from .mapping import LayerMap, Mapping
from .netx_conv import conv_fields

FORMAT, VERSION = "hwq-netx", 2  # 2: conv, flatten and input layers
BIAS_MANT = 2 ** (LOIHI.lif_bias_mant_bits - 1)  # Lava LIF bias_mant: 13 bits signed
BIAS_EXP = 6  # netx writes every CUBA bias at bias_exp 6
OUTPUT_VTH = 2**LOIHI.lif_vth_bits - 1  # the largest vThMant: v = 64 (a + B) stays below vth * 2^6 < 2^23
NEURON_KEYS = ("iDecay", "vDecay", "vThMant", "refDelay")
CONV_KEYS = ("inChannels", "outChannels", "kernelSize", "stride", "padding", "dilation", "groups")


def write_netx(program, path: str | Path) -> None:
    """Write ``program`` (a loihi program) in netx's HDF5 layout (atomically), or refuse in one
    line (``TargetError``) what netx cannot hold exactly; no file is left then."""
    net = program.net
    layers = netx_layers(program.mapping, net.layers)
    windowed = any(lm.window is not None for lm in program.mapping.layers)
    first = program.mapping.layers[0]
    if windowed:
        c, h, w = net.input_shape
        layers.insert(0, {"type": "input", "shape": np.array([c, h, w], np.int64)})
        load = {"input_message_bits": int(first.in_bits), "reset_interval": 1}
        in_shape = [w, h, c]
    else:
        in_shape = [net.n_features]
        load = {"input_shape": in_shape, "input_message_bits": int(first.in_bits), "reset_interval": 1}
    last = program.mapping.layers[-1]
    scores = "output layer voltage v // 64 (= hwq loihi score a + B)"
    if last.window is not None:
        scores += ", netx's (x, y, c) neurons read as hwq's C-order (c, y, x)"
    with atomic_h5(path) as f:
        group = f.create_group("layer")
        for i, layer in enumerate(layers):
            write_layer(group.create_group(str(i)), layer)
        f.create_group("hwq").attrs.update(
            format=FORMAT, version=VERSION, input_message_bits=int(first.in_bits),
            input_shape=np.array(in_shape), reset_interval=1, scores=scores, load=json.dumps(load))


def write_layer(g, layer: dict) -> None:
    g.create_dataset("type", data=np.bytes_(layer["type"]))
    g.create_dataset("shape", data=np.asarray(layer["shape"], np.int64))
    if layer["type"] in ("input", "flatten"):
        return
    for key in CONV_KEYS if layer["type"] == "conv" else ():
        g.create_dataset(key, data=layer[key])
    g.create_dataset("weight", data=layer["weight"].astype(np.int64))
    g.create_dataset("bias", data=layer["bias"].astype(np.int64))
    n = g.create_group("neuron")
    n.create_dataset("type", data=np.bytes_("CUBA"))
    for key in NEURON_KEYS:
        n.create_dataset(key, data=np.int64(layer[key]))
    n.create_dataset("gradedSpike", data=np.bool_(False))


def netx_layers(mapping: Mapping, nodes=None) -> list[dict]:
    """The netx layers of every mapped layer (a ``flatten`` before a dense layer that follows a
    windowed one), or a ``TargetError`` naming what netx cannot hold. ``nodes``: the network's
    nodes, to name a pooling in a refusal."""
    out, windowed = [], False
    count = len(mapping.layers)
    for i, lm in enumerate(mapping.layers):
        pooling = nodes is not None and isinstance(nodes[i], QPool)
        if lm.neuron == "relu":
            raise TargetError(f"layer {i}: ReLU layers cannot be written as netx (its SDNN neurons are "
                              "sigma-delta; hwq's relay mapping has no netx form)",
                              hint="export step networks, or use --format onnx/nir")
        if lm.neuron == "identity" and i < count - 1:
            what = "a truncating average pooling" if pooling else "a hidden identity layer"
            exp = min(s.exp for s in lm.sets)
            raise TargetError(f"layer {i}: {what} maps to a SigmaDelta relay (weight_exp {exp}); netx's conv "
                              "layers apply no weight exponent and its sigma-delta neurons have no relay",
                              hint="pool spikes (max, or average of spikes) before exporting netx, "
                                   "or use --format onnx/nir")
        weight = effective_weight(lm, i)
        bias, vth = neuron_offsets(lm, i, output=lm.neuron != "lif")
        neuron = {"bias": np.asarray(bias, np.int64), "iDecay": 4096, "vDecay": 0, "vThMant": int(vth),
                  "refDelay": 1}
        if lm.window is not None:
            out.append({**conv_fields(lm, weight, i), **neuron})
            windowed = True
            continue
        if windowed:
            out.append({"type": "flatten", "shape": np.array([lm.n_in, 1, 1], np.int64)})
            windowed = False
        out.append({"type": "dense", "shape": np.array([weight.shape[0]], np.int64), "weight": weight, **neuron})
    return out


def neuron_offsets(lm: LayerMap, i: int, output: bool) -> tuple[np.ndarray, int]:
    """``(bias_mant, vThMant)`` at netx's ``bias_exp = 6``: a LIF's bias and threshold; the
    output layer (``output``) a neuron that never fires, ``v = 64 (a + B)``, read as ``v // 64``."""
    if not output:
        bias, vth = lm.bias, lm.vth
        if np.any(bias % 2**BIAS_EXP):
            raise TargetError(f"layer {i}: LIF bias is not a multiple of 2^{BIAS_EXP} "
                              f"(netx fixes bias_exp = {BIAS_EXP})")
        bias = bias >> BIAS_EXP
    else:
        bias, vth = lm.bias, OUTPUT_VTH
        lo, hi = lm.input_bounds()
        peak = int(np.max(np.abs(np.concatenate([lo, hi, lo + bias, hi + bias]))))
        if peak << ACT_SHIFT > STATE_MAX:
            raise TargetError(f"layer {i}: output sums up to {peak} exceed the LIF's 24-bit state "
                              "(v = 64 (a + B))")
    if np.any((bias < -BIAS_MANT) | (bias >= BIAS_MANT)):
        raise TargetError(f"layer {i}: bias beyond netx's 13-bit bias_mant at bias_exp = {BIAS_EXP}")
    return bias, vth


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
