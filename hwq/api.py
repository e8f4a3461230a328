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

``hwq attack``'s whole run (its gradient policy, diagnostics and results file) is one call, so a
script writes the file the command writes::

    run = hwq.api.run_attack(program, data, [0, 0.05, 0.1], "fgsm,square", attack_params={"queries": 500},
                             data_spec="digits", model="model.hwq")
    hwq.api.write_attack_results("results.h5", run)
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
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
from hwq.errors import UsageError
from hwq.files.program import load_program, save_program
from hwq.ir import Graph
from hwq.onnx.importer import load_onnx
from hwq.params import param
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
    "make_attack", "quantize", "save_program", "AttackRun", "AttackRunOptions", "attack_gradient", "attack_members",
    "attack_method", "input_format", "plot_attack", "run_attack", "write_attack_results",
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


# -- attacks as `hwq attack` runs them: one path for the command line and Python ------------------

@dataclass(frozen=True)
class AttackRunOptions:
    """The options of an attack run besides the attack's parameters (``hwq.attack.ATTACK_PARAMETERS``)
    and the gradient's (``hwq.attack.gradients.GradientOptions``), declared once (``hwq.params``):
    ``hwq attack``'s ``--grad``, ``--diagnostics/--no-diagnostics`` and ``--seed`` are generated
    from these fields (``hwq.cli.common.run_options``) and :func:`run_attack`'s keywords default
    to them."""

    grad: str = param("surrogate", help="Gradient source: surrogate (of the integer model) | float | bits:Q | "
                                        "target:NAME | model:FILE.hwq (transfer attacks).")
    diagnostics: bool = param(True, help="Run the unbounded-strength sanity check too.")
    seed: int = param(0, help="Seed of generated data sets (spirals) and data splits.")


RUN_DEFAULTS = AttackRunOptions()


def attack_method(spec: str = "fgsm", **params) -> Attack | Suite:
    """The attack or worst-case suite ``spec`` names (``fgsm``, ``fgsm,pgd,square``, ``autoattack``)
    with its declared parameters (``hwq.attack.ATTACK_PARAMETERS``; None: the attack's default)."""
    from hwq.attack import make_suite as make  # the module's, looked up when called

    return make(spec, **params)


def attack_members(method: Attack | Suite) -> tuple:
    """The attacks a run makes: a suite's members, or the one attack."""
    return tuple(getattr(method, "attacks", (method,)))


def attack_gradient(spec: str, program, data: Dataset, method: Attack | Suite, **options):
    """The gradient source ``spec`` names (``gradient_source``; ``options``: ``GradientOptions``'
    fields, the masking remedies) for attacks on ``program``, calibrated on ``data``'s
    calibration rows (``CALIBRATION_POLICY``); None where no attack of ``method`` needs one."""
    if not any(a.needs_gradient for a in attack_members(method)):
        return None
    return gradient_source(spec, program, calibration=calibration_rows(data.x_train), bounds=data.bounds, **options)


def input_format(net: QuantizedNetwork) -> str:
    """The input codes an attack's accuracies were measured on (coarse codes are robust by
    construction: a robustness of the quantizer, not of the chip), e.g. ``u2 x 1/3 (2-bit codes)``."""
    return f"{net.input.name} ({net.input.bits}-bit codes)"


@dataclass(frozen=True, eq=False)
class AttackRun:
    """An attack run as ``hwq attack`` makes it (:func:`run_attack`): the result, the attack or
    suite, the program and data it ran on, and ``meta``: the results file's attributes besides
    the result's own (:func:`write_attack_results`; the command line is added there)."""

    result: AttackResult
    method: Attack | Suite
    program: object
    data: Dataset
    meta: dict

    @property
    def summary(self) -> dict:
        """``hwq attack --json``: ``hwq.files.results.summary`` with the formats and the data set."""
        from hwq.files import results

        settings = self.program.net.settings
        return {**results.summary(self.result), "bits": settings.bits, "scheme": settings.scheme,
                "data": self.data.name, "input_format": self.meta["input_format"]}


def run_attack(program, data: Dataset, epsilons, method: str | Attack | Suite = "fgsm", *,
               attack_params: dict | None = None, grad=RUN_DEFAULTS.grad, gradient_params: dict | None = None,
               diagnostics: bool = RUN_DEFAULTS.diagnostics, progress=None, runner=None,
               data_spec: str | None = None, seed: int = RUN_DEFAULTS.seed, model=None) -> AttackRun:
    """Attack ``program`` on ``data``'s test split at ``epsilons`` as ``hwq attack`` does.

    ``method``: an attack or suite, or its spec (:func:`attack_method`, with ``attack_params``).
    ``grad``: a gradient source, or its spec (:func:`attack_gradient`, with ``gradient_params``).
    ``progress(n)`` hears of finished inputs (``attack_members(method)`` times the inputs in
    all), and one with ``member_done`` (``ProgressLines``) of every finished attack.
    ``runner(program, data, epsilons, method, gradient, progress=)`` -> ``(result, attributes)``
    judges elsewhere (``hwq attack --device``); default: :func:`attack` on ``program``, with
    ``diagnostics``. ``data_spec`` (default: the data set's name), ``seed`` (the one ``data``
    was loaded with) and ``model`` (its file) are recorded in ``meta``."""
    from hwq.attack.suite import report_member

    if isinstance(method, str):
        method = attack_method(method, **(attack_params or {}))
    elif attack_params:
        raise UsageError("attack_params go with an attack named by its spec; this attack has its own")
    if isinstance(grad, str):
        grad = attack_gradient(grad, program, data, method, **(gradient_params or {}))
    elif gradient_params:
        raise UsageError("gradient_params go with a gradient named by its spec; this one has its own")
    if runner is None:
        result, extra = attack(program, data.x_test, data.y_test, epsilons, method=method, gradient=grad,
                               bounds=data.bounds, progress=progress, diagnostics=diagnostics), {}
    else:
        result, extra = runner(program, data, epsilons, method, grad, progress=progress)
    if len(attack_members(method)) == 1:  # a suite reports its members itself
        report_member(progress, 0, 1, result)
    settings = program.net.settings
    meta = {"data": data_spec or data.name, "data_fingerprint": data.fingerprint(), "seed": seed,
            "options": program.options, "bits": settings.bits, "scheme": settings.scheme,
            "quantization": json.dumps(vars(settings)), **({} if model is None else {"model": str(model)}),
            "input_format": input_format(program.net), **extra}
    return AttackRun(result, method, program, data, meta)


def write_attack_results(path, run: AttackRun, command: str | None = None) -> None:
    """The results file of ``run`` (``hwq.files.results``, docs/file-formats.md): the result and
    ``run.meta``; ``command``: the command line that made it (default: this Python process's)."""
    from hwq.files import results

    results.write_attack(path, run.result, {"command": command or shlex.join(["python", *sys.argv]), **run.meta})


def plot_attack(run: AttackRun, path) -> None:
    """Accuracy vs strength as a PNG: the attack's curve, or each member's and the worst case."""
    from hwq.study.plots import plot_accuracy_vs_eps

    result = run.result
    label = f"{run.program.target} q={run.program.net.settings.bits}"
    curves = [m.accuracy for m in result.members] + [result.accuracy] if result.members else [result.accuracy]
    labels = [f"{label} {m.attack}" for m in result.members] + [f"{label} worst case"] if result.members \
        else [label]
    plot_accuracy_vs_eps(result.epsilons, np.array(curves), labels, path)


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
