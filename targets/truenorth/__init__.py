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

from typing import Any  # noqa: E402

from hwq.errors import FileFormatError  # noqa: E402
from hwq.target.protocol import Export, Option, check_options  # noqa: E402

from .program import NAME, TrueNorthProgram, export_model  # noqa: E402

__all__ += ["TrueNorthProgram", "TrueNorthTarget", "export_model"]


class TrueNorthTarget:
    """``compile`` maps a quantized network onto cores (mapping.py); the program runs them on
    the emulator. The mapping is exact (rate-coded inputs, count-domain layers)."""

    name = NAME
    options: tuple[Option, ...] = ()
    exports = {"truenorth": Export("truenorth", (".json",), lambda program, path: export_model(program, path),
                                   "the mapped cores as an IBM-format model file (hwq truenorth run reads it)")}

    def compile(self, net, **options: Any) -> TrueNorthProgram:
        check_options(NAME, self.options, options)
        return TrueNorthProgram(net, options)

    def load(self, net, artifacts: dict[str, Any], **options: Any) -> TrueNorthProgram:
        check_options(NAME, self.options, options)
        program = TrueNorthProgram(net, options)
        if int(artifacts.get("ticks", -1)) != program.mapping.ticks:
            raise FileFormatError("the truenorth artifacts do not match the stored network",
                                  hint="recompile the model with --target truenorth")
        return program
