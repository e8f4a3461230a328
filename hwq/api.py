"""The public Python API; the CLI is a thin layer over these functions.

Typical use (a hardware-in-the-loop script can replace ``program`` by any object with
``net``, ``target``, ``forward`` and ``decide``: a device; see ``hwq.target.protocol``)::

    import hwq
    data = hwq.load_dataset("digits")
    graph = hwq.load_onnx("model.onnx")
    net = hwq.quantize(graph, bits=4, calibration=data.x_train, bounds=data.bounds)
    program = hwq.compile(net, target="sim")
    result = hwq.attack(program, data.x_test, data.y_test, [0, 0.05, 0.1], bounds=data.bounds)
    print(result.accuracy)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from hwq.attack import (
    ATTACKS,
    FGSM,
    PGD,
    Attack,
    AttackResult,
    Square,
    Suite,
    attack,
    check_inputs,
    make_attack,
    make_suite,
)
from hwq.attack.gradients import FloatGradient, SurrogateGradient, default_gradient, gradient_source
from hwq.data import Dataset, load_dataset
from hwq.files.program import load_program, save_program
from hwq.ir import Graph
from hwq.onnx.importer import load_onnx
from hwq.quant import reference
from hwq.quant.qnet import QuantizedNetwork, QuantSettings
from hwq.quant.quantize import quantize as quantize_graph
from hwq.quant.reference import quantize_input
from hwq.target.protocol import MeasuresFidelity, ReferenceProgram, Traceable
from hwq.target.registry import get_target, resolve_target

__all__ = [
    "ATTACKS", "FGSM", "PGD", "Attack", "AttackResult", "Dataset", "Evaluation", "FloatGradient", "Square", "Suite",
    "make_suite", "CALIBRATION_ROWS", "CALIBRATION_POLICY", "FIDELITY_WARN", "calibration_rows",
    "check_fidelity", "QuantSettings", "ReferenceProgram", "SurrogateGradient", "Traceable", "attack", "compile",
    "default_gradient", "evaluate", "gradient_source", "load_dataset", "load_onnx", "load_program",
    "make_attack", "quantize", "save_program",
]


# -- policy: one place for what every command (compile, attack, sweep, gradients) shares ----------

CALIBRATION_ROWS = 5000
CALIBRATION_POLICY = (f"the first {CALIBRATION_ROWS} rows of the data set's training split (all of it when "
                      "smaller); the same rows for `hwq compile`, `hwq attack`'s surrogate and every sweep cell")

# ``hwq compile`` / ``hwq attack``'s quantization defaults. A sweep spec states its own in its
# ``quant`` section (docs/sweeps.md: uniform levels, 16-bit activations and inputs, the paper's
# weights-only study); the report and every summary print the formats next to their numbers.
SCHEME = "narrow"
ACT_BITS = 8
INPUT_BITS = 8


def calibration_rows(x_train: np.ndarray) -> np.ndarray:
    """The calibration samples of a training split (``CALIBRATION_POLICY``)."""
    return x_train[:CALIBRATION_ROWS]


def quantize(
    graph: Graph,
    bits: int,
    *,
    calibration: np.ndarray,
    bounds: tuple[float, float] | None = None,
    scheme: str = SCHEME,
    per_channel: bool = False,
    act_bits: int = ACT_BITS,
    input_bits: int = INPUT_BITS,
    conv_per_channel: bool = True,
) -> QuantizedNetwork:
    """Quantize a float graph to ``bits``-bit weights (see ``hwq.quant.schemes`` for the levels)."""
    settings = QuantSettings(bits, scheme, per_channel, act_bits, input_bits, conv_per_channel=conv_per_channel)
    return quantize_graph(graph, settings, calibration, bounds)


def compile(net: QuantizedNetwork, target: str = "sim", **options):  # noqa: A001
    """Map a quantized network onto a target; returns the target's program. ``target`` may
    carry text options (``"loihi:backend=lava"``); keyword ``options`` go to the target as
    values (``backend="lava"``)."""
    name, parsed = resolve_target(target)
    return get_target(name).compile(net, **{**parsed, **options})


@dataclass(frozen=True, eq=False)
class Evaluation:
    predictions: np.ndarray
    scores: np.ndarray
    accuracy: float


def takes_progress(method) -> bool:
    """Whether a program's ``forward``/``measure_fidelity`` reports progress (a ``progress``
    keyword called with each finished number of inputs): targets that run for minutes do."""
    try:
        return "progress" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def evaluate(program, x: np.ndarray, y: np.ndarray, progress=None) -> Evaluation:
    """Run the integer model on ``x`` (real inputs, quantized as the device receives them);
    ``progress(n)`` hears of finished inputs where the program reports them."""
    x, y = check_inputs(program, x, y)
    codes = quantize_input(program.net.input, x)
    if progress is not None and takes_progress(program.forward):
        scores = program.forward(codes, progress=progress)
    else:
        scores = program.forward(codes)
    pred = program.decide(scores)
    return Evaluation(pred, scores, float(np.mean(pred == y)) if len(y) else float("nan"))


FIDELITY_WARN = 0.99  # below this share of reference decisions an inexact program warns at compile time


def check_fidelity(program, x_q: np.ndarray, source: str, threshold: float = FIDELITY_WARN,
                   progress=None) -> str | None:
    """Measure an inexact program's fidelity on ``x_q`` (the share of inputs whose decision
    equals the integer reference's, i.e. the ``sim`` target's) into ``program.report["fidelity"]``;
    return a one-line warning (what differs, why, the setting that avoids it) when it falls
    below ``threshold``, else None. An exact program without its own ``measure_fidelity``
    computes the reference: nothing to measure."""
    if not isinstance(getattr(program, "report", None), dict):
        return None
    if isinstance(program, MeasuresFidelity):  # a target's own measurement (it may differ by inputs)
        if progress is not None and takes_progress(program.measure_fidelity):
            program.measure_fidelity(x_q, source, progress=progress)
        else:
            program.measure_fidelity(x_q, source)
    elif program.exact:
        return None
    else:
        ref = reference.decide(reference.forward(program.net, x_q), program.net.output)
        value = float(np.mean(program.decide(program.forward(x_q)) == ref)) if len(x_q) else 1.0
        program.report["fidelity"] = dict(value=value, inputs=int(len(x_q)), source=source,
                                          against="hwq.quant.reference (the sim target's decisions)")
    fid = program.report["fidelity"]
    if fid["value"] >= threshold:
        return None
    found = [*program.report.get("adjustments", ()), *program.report.get("approximations", ())]
    why = "; ".join(dict.fromkeys(f"{a['what']} (layer {a['layer']})" if isinstance(a, dict) and "layer" in a
                                  else str(a.get("what", a) if isinstance(a, dict) else a)
                                  for a in found)) or "the mapping is inexact"
    fix = "; ".join(program.report.get("advice", ())) or "a setting that makes the mapping exact (docs of the target)"
    return (f"{program.target} computes a different network: its decisions equal the integer reference's (sim) on "
            f"{fid['value']:.1%} of {fid['inputs']} inputs ({fid['source']}), below {threshold:.0%}. Why: {why}. "
            f"To avoid it: {fix}")


# -- exports: the integer network's own formats (any target) and each target's ---------------------

def core_exports() -> dict:
    """File formats of the integer network itself, whatever its target: name -> ``Export``
    (``write(program, path)`` reads only ``program.net``)."""
    from hwq.files import nir
    from hwq.onnx.exporter import save_onnx
    from hwq.target.protocol import Export

    return {"onnx": Export("onnx", (".onnx",), lambda program, path: save_onnx(program.net, path),
                           "the integer network as an integer-exact ONNX graph (onnxruntime runs it)"),
            "nir": Export("nir", (".nir",), lambda program, path: nir.write_network(program.net, path),
                          nir.EXPORT_HELP)}


def export_formats(target: str | None = None) -> dict:
    """Every format a program of ``target`` can be exported in: the core's plus the target's own
    (``Target.exports``)."""
    from hwq.target.protocol import Exporting

    formats = core_exports()
    if target is not None and isinstance(get_target(target), Exporting):
        formats.update(get_target(target).exports)
    return formats


def export_format(target: str | None, path, fmt: str | None = None) -> str:
    """The format ``export`` writes: ``fmt`` where given (refused in one line if ``target``'s
    programs have no such format), else the one ``path``'s suffix names."""
    from pathlib import Path

    from hwq.errors import UsageError

    formats = export_formats(target)
    if fmt is None:
        suffix = Path(path).suffix
        fmt = next((name for name, e in formats.items() if suffix in e.suffixes), None)
        if fmt is None:
            raise UsageError(f"cannot tell the format from '{suffix}'", hint="use --format " + " | ".join(formats))
    if fmt not in formats:
        raise UsageError(f"unknown export format '{fmt}' for a {target or 'network'} program",
                         hint="formats: " + ", ".join(formats))
    return fmt


def export(source, path, fmt: str | None = None) -> str:
    """Write ``source`` (a compiled program, a ``.hwq`` path, or a ``QuantizedNetwork``) to
    ``path`` as ``fmt`` (default: from the suffix); returns the format written. The core formats
    (onnx, nir) need only the integer network: a ``.hwq`` file is not re-mapped for them."""
    from pathlib import Path

    if isinstance(source, (str, Path)):
        from hwq.files.program import read_stored

        stored = read_stored(source)
        fmt = export_format(stored.target, path, fmt)
        program = ReferenceProgram(stored.net) if fmt in core_exports() else load_program(source)
    elif isinstance(source, QuantizedNetwork):
        fmt, program = export_format(None, path, fmt), ReferenceProgram(source)
    else:
        program = source
        fmt = export_format(program.target if program.target != "reference" else None, path, fmt)
    export_formats(None if fmt in core_exports() else program.target)[fmt].write(program, path)
    return fmt
