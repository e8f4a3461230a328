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
from hwq.quant.qnet import QuantizedNetwork, QuantSettings
from hwq.quant.quantize import quantize as quantize_graph
from hwq.quant.reference import quantize_input
from hwq.target.protocol import ReferenceProgram, Traceable
from hwq.target.registry import get_target, resolve_target

__all__ = [
    "ATTACKS", "FGSM", "PGD", "Attack", "AttackResult", "Dataset", "Evaluation", "FloatGradient", "Square", "Suite",
    "make_suite",
    "QuantSettings", "ReferenceProgram", "SurrogateGradient", "Traceable", "attack", "compile",
    "default_gradient", "evaluate", "gradient_source", "load_dataset", "load_onnx", "load_program",
    "make_attack", "quantize", "save_program",
]


def quantize(
    graph: Graph,
    bits: int,
    *,
    calibration: np.ndarray,
    bounds: tuple[float, float] | None = None,
    scheme: str = "narrow",
    per_channel: bool = False,
    act_bits: int = 8,
    input_bits: int = 8,
) -> QuantizedNetwork:
    """Quantize a float graph to ``bits``-bit weights (see ``hwq.schemes`` for the levels)."""
    settings = QuantSettings(bits, scheme, per_channel, act_bits, input_bits)
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


def evaluate(program, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Run the integer model on ``x`` (real inputs, quantized as the device receives them)."""
    x, y = check_inputs(program, x, y)
    scores = program.forward(quantize_input(program.net.input, x))
    pred = program.decide(scores)
    return Evaluation(pred, scores, float(np.mean(pred == y)) if len(y) else float("nan"))
