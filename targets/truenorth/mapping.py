"""Map a quantized MLP onto TrueNorth cores (shared/specs/truenorth.md 7a-7d; docs/truenorth.md).

Per layer one of four schemes, chosen at compile time (``plan_schemes``):

* ``eedn-step`` (spec 7a, one tick): a step layer whose inputs arrive as single spikes in one
  tick and that fits one core (``inputs * k + bias axons <= 256``). Memoryless neurons
  ``alpha 1, beta 0, kappa 1, gamma 0, R 0``, digit-typed axons, bias as a leak ``<= 0`` plus
  always-on bias axons of type 3 (one host spike per frame, on the layer's tick) for the rest:
  ``b = c * w_b + lambda`` with ``c`` axons of weight ``w_b`` and ``-255 < lambda <= 0``. A
  neuron without input then stays at 0 (no spontaneous spikes: a positive leak would fire
  every idle tick). Fires at tick t iff ``sum_i W x_i(t) + b >= 1``, exactly hwq's step.
* ``count-step``, ``count-relu``, ``count-output`` (spec 7c, multi-tick, exact for any fan-in):
  inputs split into groups of one core; per group core and unit ``u`` two *gated emitters*
  ``E+`` (digit table ``+v``) and ``E-`` (``-v``)::

      alpha 1, gamma 1 (linear reset), kappa 0, beta 2^18 - 1, leak 0, V0 = -K (+-b in group 0
      of the output layer), gate type weight +255

  integrate the group's partial sum ``P`` while the inputs arrive (any ticks, <= 1 spike per
  axon per tick). ``K >= max positive partial sum`` keeps ``V <= 0`` meanwhile; ``K / 255``
  host spikes on the gate axons then make ``V = P`` and the emitter fires exactly
  ``max(P, 0)`` times, one per tick (``E-``: ``max(-P, 0)``).

  Hidden layers: an accumulator ``H_u`` (types ``+m``, ``-m``, ``+255`` gate, ``-255`` clear;
  kappa 0, big beta) integrates ``m * sum_g (E+ - E-)``; after the last emitter spike a gate of
  ``K_H`` sets ``V = m * acc + h``. Step: ``m = 1, h = 0, alpha 1, gamma 0``: one spike iff
  ``acc >= 1``. ReLU: ``alpha = a, gamma 1``: ``floor((m acc + h) / a)`` spikes, one per tick,
  stopped after ``A = 2^act_bits - 1`` by a clear pulse: ``clip(floor((m acc + h)/a), 0, A)``
  (``relu_params``: exact when some ``m <= 255`` reproduces hwq's requantization on the
  layer's whole accumulator range, else the nearest ratio, approximate, on request).
  ``H_u`` is duplicated once per axon copy the next layer needs (fan-out 1).
  Output layer: the emitters go off-chip; the score ``sum_g count(E+) - count(E-) = acc``.

  Wide fan-in (e.g. 784 inputs, ``plan_groups``): where one gate tick would need more than
  the core's axons, the gate is *ramped*: ``RAMP_AXONS`` axons spiking on ``r`` consecutive
  ticks (``K = 255 * RAMP_AXONS * r``; an emitter fires at most once per tick, so its count is
  still ``max(P, 0)``, finished by tick ``gate + r - 1 + drain``). ``K + max|P| + 255 <=
  2^18 - 1`` bounds one group's partial sum (refused beyond, naming the input bits that fit).
  A step layer whose sums outgrow one gated accumulator (``K_H - b + neg > 2^18 - 1``) uses
  *ordered* accumulators (``step_accumulator``): the ``E-`` emitters are gated first and
  drain into ``H_u`` (weight -1, ``kappa 1``: floor at ``-beta``), then the ``E+`` (+1) and
  ``c`` bias spikes (``b = c w_b + r``, ``w_b <= 255``): ``alpha = beta = 2^18 - 1``,
  ``V0 = alpha - 1 + r``, reset ``R = -beta``. ``H_u`` fires iff ``acc = pos - neg + b >= 1``,
  at most once, exactly when the rise ``pos + c w_b <= alpha + beta - 1`` (``ACC_REACH``):
  a drain that hits the floor then leaves ``acc <= -1`` (no spike either way). It fires on a
  tick that depends on the sum, so its successor is a count-domain layer.

Inputs: a column per input (signed codes: a ``+`` and a ``-`` column, ``x = x+ - x-``, weights
``W`` and ``-W``), sent as a rate code (``x`` spikes on ticks 1..x), a stochastic code or a
binary threshold (program.py). Each frame runs from the initial state.

Code layout, by stage: planning (``planning``: schemes, sizes and the count setting that fits;
``grouping``: fan-in groups and gates; ``accumulators``, ``relu_rate``: hidden layers' sums;
``tiling``, ``conv_mapping``: CNN tiles; ``limits``: the fixed numbers and the refusal),
building (``drafts``: cores being filled; ``building``: every layer's cores, duplicated for
fan-out) and scheduling (``scheduling``: host gate ticks, ticks per frame). This module is the
entry point: ``map_network``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.errors import LimitError
from hwq.quant.qnet import QuantizedNetwork

from .building import build_layers
from .core import Model
from .digits import table_for
from .drafts import Builder
from .limits import SizeError
from .planning import LayerJob, fitting_counts, plan_schemes, size_layer
from .scheduling import schedule


@dataclass
class Mapping:
    model: Model
    layers: list
    inputs: list  # per input column: list of (core id, axon)
    outputs: list  # (core id, neuron, unit, sign)
    gates: list  # host spikes other than inputs: (arrival tick, core id, axon)
    in_max: int  # largest count per input column
    ticks: int
    duplicated: int
    core_rows: list = field(default_factory=list)  # per core: (core id, layer, axons, neurons, copies)

    @property
    def host_ports(self) -> list:
        ports = {p for col in self.inputs for p in col}
        return sorted(ports | {(c, a) for _, c, a in self.gates})


def map_network(net: QuantizedNetwork, in_max: int, *, signed_split: bool = False, step: str = "auto",
                relu: str = "exact", layer0_bias=None, windows: dict | None = None, progress=None) -> Mapping:
    """Cores for ``net``. Layer 0 receives counts ``0..in_max`` per input column
    (``signed_split``: columns ``x+`` then ``x-``, weights ``[W, -W]``); ``layer0_bias``
    replaces layer 0's bias (binary encoding). A layer that does not fit at its counts is
    refused naming the count setting that fits (``fitting_counts``). ``windows``: per layer index
    the (Window, out channels) of a convolution or pooling in its dense view (conv_mapping.py):
    its one-tick cores are tiles (tiling.py). ``progress(done, total, what)`` hears of each
    layer built (``building.build_layers``; the output layer first)."""
    windows = windows or {}
    layers = net.layers
    weights = [np.asarray(layer.weight, np.int64) for layer in layers]
    biases = [np.asarray(layer.bias, np.int64) for layer in layers]
    if signed_split:
        weights[0] = np.concatenate([weights[0], -weights[0]], axis=1)
    if layer0_bias is not None:
        biases[0] = np.asarray(layer0_bias, np.int64)
    schemes, ins = plan_schemes(net, weights, biases, in_max, step, relu, windows)
    jobs = [LayerJob(li, layers[li], weights[li], biases[li], schemes[li], ins[li], table_for(weights[li]), None,
                     windows.get(li)) for li in range(len(layers))]
    sizes = {}
    for job in jobs:
        try:
            sizes[job.index] = size_layer(job.scheme, job.layer, job.w, job.b, job.table, job.inp.cmax, job.index,
                                          relu)
        except SizeError as err:
            raise LimitError(err.message, hint=fitting_counts(job, relu, signed_split)) from None
    builder = Builder(relu)
    built = build_layers(jobs, sizes, builder=builder, progress=progress)
    plans = [layer.plan for layer in built]
    gates, ticks = schedule(plans, in_max)
    drafts = sorted(builder.drafts, key=lambda d: d.id)
    model = Model(tuple(d.freeze() for d in drafts))
    inputs = [[(d.id, a) for d, a in ports] for ports in built[0].in_ports]
    rows = [(d.id, d.layer, d.axon, d.neuron, d.copies) for d in drafts]
    duplicated = sum(layer.duplicated for layer in built)
    return Mapping(model, plans, inputs, builder.outputs, gates, in_max, ticks, duplicated, rows)
