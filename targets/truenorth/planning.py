"""Planning a network's mapping: the scheme of every layer (``plan_schemes``), what each layer
receives, the sizes of its count-domain cores (``size_layer``) and, for a layer that does not fit
at its counts, the count setting that does (``fitting_counts``). Pure planning: no cores are
built here (``building.py`` builds them; CNN tiles: ``tiling.py``, ``conv_mapping.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError
from hwq.ir import activations
from hwq.quant.qnet import QLayer, QuantizedNetwork, Requant
from hwq.quant.quantize import requant_for

from . import tiling
from .accumulators import relu_accumulator, step_accumulator
from .core import AXONS
from .digits import DigitTable, table_for
from .grouping import plan_groups
from .limits import SizeError


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
