"""The mapping's fixed numbers (axon types, gate weights, the 18-bit threshold range) and the
refusal of a layer that outgrows a core at the spike counts it receives (docs/truenorth.md).

Shared by every stage: planning (``grouping``, ``accumulators``, ``planning``), building
(``drafts``, ``building``) and the entry point (``mapping``)."""

from __future__ import annotations

from hwq.errors import LimitError

from .core import THRESHOLD_BITS

GATE_TYPE, GATE_W = 3, 255  # emitter gates; in H cores: type 2 gate (+255), type 3 clear (-255)
BIAS_TYPE = 3  # eedn cores: always-on bias axons
BIG_BETA = 2**THRESHOLD_BITS - 1
OFFCHIP = -32
M_MAX = 255
GATE_AXONS = 48  # at most this many gate (and clear) axons per ReLU accumulator core
RAMP_AXONS = 8  # emitter gates that outgrow one tick: this many axons per gate, spiking on several ticks
ACC_ALPHA = BIG_BETA  # ordered accumulators: threshold at the top of the 18-bit range ...
ACC_RESET = -BIG_BETA  # ... reset far below it after the spike (R = -(2^18 - 1), VR 18) ...
ACC_REACH = ACC_ALPHA + BIG_BETA - 1  # ... so they take a rise (E+ spikes and bias) of up to 2^19 - 3


class SizeError(LimitError):
    """A layer outgrew a core's axons or a neuron's range at the spike counts it receives;
    ``map_network`` names the count setting (input or activation bits) that fits instead."""


def smaller_counts(li: int | None) -> str:
    """The setting that shrinks the spike counts (so the sums) layer ``li`` receives."""
    if li is None:
        return "lower --input-bits or --act-bits (smaller spike counts, smaller sums)"
    if li == 0:
        return "lower --input-bits (layer 0 receives up to 2^input_bits - 1 spikes per input)"
    return f"lower --act-bits (layer {li} receives up to 2^act_bits - 1 spikes per unit of layer {li - 1})"


def fit_hint(li: int | None, what: str) -> str:
    """Every setting that makes a layer that outgrew a core's ``what`` fit (refusals name them)."""
    return (f"{smaller_counts(li)}; fewer weight bits (--bits; fewer axon types per input); "
            f"or fewer hidden units (`hwq train --hidden`), so that each core needs fewer {what}")
