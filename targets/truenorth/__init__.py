"""``truenorth``: IBM TrueNorth's neurosynaptic cores (shared/specs/truenorth.md).

* ``core``, ``kernels``, ``emulator``: the integer neuron model and a batched emulator;
* ``modelfile``, ``spikefile``, ``run``, ``cli``: IBM's model files, NSCS spike files,
  ``hwq truenorth run``;
* ``mapping``, ``digits``, ``program``, ``validate``: the mapper, the compiled program and the
  stand-alone check that a configuration fits the chip;
* the mapper's stages: planning (``planning``, ``grouping``, ``accumulators``, ``relu_rate``,
  ``limits``), building (``drafts``, ``building``), scheduling (``scheduling``); ``mapping``
  is their entry point;
* ``conv_mapping``, ``tiling``: convolutions and poolings as dense layers, and their tiles (one
  core each: a rectangle of output positions x a run of channels).

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

from hwq.target.protocol import Export, Option, check_options  # noqa: E402

from .program import CHOICES, ENCODINGS, NAME, TrueNorthProgram, check_artifacts, export_model  # noqa: E402
from .validate import problems, validate  # noqa: E402

__all__ += ["TrueNorthProgram", "TrueNorthTarget", "export_model", "problems", "validate"]


def parse_int(text: str) -> int:
    return int(text)


class TrueNorthTarget:
    """``compile`` maps a quantized network onto cores (mapping.py); the program runs them on
    the emulator. Exact by default; approximations only by option, named in the report."""

    name = NAME
    options: tuple[Option, ...] = (
        Option("step", "auto: one-tick Eedn layers where they fit, count domain elsewhere | count: "
               "count domain everywhere (both exact)", "auto", str, CHOICES["step"]),
        Option("relu", "exact: ReLU layers in the count domain where an exact rate ratio exists, else refuse | "
               "rate: the nearest ratio there (approximate) | refuse", "exact", str, CHOICES["relu"]),
        Option("encoding", "rate: code x = x spikes (exact) | binary: one spike iff x >= threshold "
               "(approximate) | stochastic: Bernoulli p = x/qmax per tick (approximate)", "rate", str, ENCODINGS),
        Option("threshold", "binary encoding: the code at or above which an input spikes (default: half range)",
               None, parse_int),
        Option("seed", "stochastic encoding and the report's fidelity inputs", 0, parse_int),
        Option("decoding", "count: score = spike count E+ - E- per output unit (exact) | vote: population vote, "
               "each output emitter (one per input group) votes once if it spikes (approximate)", "count", str,
               CHOICES["decoding"]),
        Option("fidelity_samples", "random codes an approximate program's fidelity is measured on (0: none)",
               64, parse_int),
    )
    exports = {"truenorth": Export("truenorth", (".json",), lambda program, path: export_model(program, path),
                                   "the mapped cores as an IBM-format model file (hwq truenorth run reads it)")}

    def compile(self, net, progress=None, **options: Any) -> TrueNorthProgram:
        """``progress(done, total, what)`` hears of each layer mapped (``mapping.map_network``)."""
        check_options(NAME, self.options, options)
        return TrueNorthProgram(net, options, progress=progress)

    def load(self, net, artifacts: dict[str, Any], **options: Any) -> TrueNorthProgram:
        """Recompile the stored network with the stored options (the mapping is a pure function of
        both) and check it against the stored artifacts."""
        check_options(NAME, self.options, options)
        program = TrueNorthProgram(net, {**options, "fidelity_samples": 0})
        program.options = dict(options)
        check_artifacts(artifacts, program)
        return program
