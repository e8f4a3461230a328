"""``truenorth``: IBM TrueNorth's neurosynaptic cores (shared/specs/truenorth.md).

* ``core``, ``kernels``, ``emulator``: the integer neuron model and a batched emulator;
* ``modelfile``, ``spikefile``, ``run``, ``cli``: IBM's model files, NSCS spike files,
  ``hwq truenorth run``.

Equations, choices and file formats: docs/truenorth.md.
"""

from __future__ import annotations

from .core import Core, Model, Neurons
from .emulator import Drive, Emulator, EmulatorConfig
from .modelfile import dumps_model, parse_model, read_model
from .run import run_model
from .spikefile import SpikeInput, read_spikes

__all__ = ["Core", "Drive", "Emulator", "EmulatorConfig", "Model", "Neurons", "SpikeInput",
           "dumps_model", "parse_model", "read_model", "read_spikes", "run_model"]
