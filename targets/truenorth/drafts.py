"""Cores under construction (building stage): a ``Draft`` hands out one core's axons and neurons
in order and refuses, naming the setting that fits, where they run out; the ``Builder`` holds
every draft of a mapping and the output neurons."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import LimitError

from .core import AXONS, NEURONS, Core, Neurons
from .limits import fit_hint


class Draft:
    """A core being filled: axons and neurons are handed out in order (``layer``: the layer it
    serves, for the refusal's message)."""

    def __init__(self, cid: int, layer: int | None = None):
        self.id, self.axon, self.neuron, self.layer = cid, 0, 0, layer
        self.copies = 0  # neurons that duplicate another of this core's units (fan-out: one destination each)
        self.w = np.zeros((AXONS, NEURONS), bool)
        self.g = np.zeros(AXONS, np.int8)
        empty = Neurons.empty()
        self.cols = {k: np.array(getattr(empty, k)) for k in Neurons.DTYPES}

    def axons(self, types) -> np.ndarray:
        n = len(types)
        if self.axon + n > AXONS:
            where = f"layer {self.layer}: " if self.layer is not None else ""
            raise LimitError(f"{where}core {self.id} would need more than {AXONS} axons",
                             hint=fit_hint(self.layer, "axons"))
        idx = np.arange(self.axon, self.axon + n)
        self.g[idx] = types
        self.axon += n
        return idx

    def add_neuron(self, **params) -> int:
        if self.neuron >= NEURONS:
            where = f"layer {self.layer}: " if self.layer is not None else ""
            raise LimitError(f"{where}core {self.id} would need more than {NEURONS} neurons",
                             hint=fit_hint(self.layer, "neurons"))
        j = self.neuron
        self.neuron += 1
        self.cols["exists"][j] = True
        for key, value in params.items():
            self.cols[key][j] = value
        return j

    def freeze(self) -> Core:
        return Core(self.id, self.w, self.g, Neurons(**self.cols))


@dataclass(frozen=True)
class Builder:
    """The cores under construction, shared by every layer's builder: core ids handed out in
    order, the drafts, the output neurons ``(core id, neuron, unit, sign)`` and the ReLU policy."""

    relu: str
    ids: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))
    drafts: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    def core(self, layer: int) -> Draft:
        """A new empty core serving ``layer``."""
        d = Draft(next(self.ids), layer)
        self.drafts.append(d)
        return d
