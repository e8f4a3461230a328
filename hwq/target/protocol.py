"""What a target is, from the core's side.

A backend registers one ``Target`` object in the ``hwq.targets`` entry-point group
(``hwq.target.registry``); compiling a quantized network gives a ``Program``::

    class Target:
        name: str
        options: tuple[Option, ...]        # what compile/load accept (CLI: --option k=v)
        def compile(self, net, **options) -> Program
        def load(self, net, artifacts, **options) -> Program   # from a .hwq file
        exports: dict[str, Export]         # optional (Exporting): file formats of its mapping

    class Program:                          # a network mapped onto the target
        net: QuantizedNetwork
        target: str
        exact: bool                         # decisions equal hwq.quant.reference's, always
        options: dict                       # what it was compiled with (JSON; saved in .hwq)
        artifacts: dict                     # arrays and scalars saved in the .hwq file
        report: dict                        # resources, notes (JSON)
        def forward(self, x_q) -> int64 scores (N, n_out)
        def decide(self, scores) -> int64 classes (N,)

Optional abilities are small ``runtime_checkable`` Protocols a program satisfies by having
the method (``isinstance(program, Traceable)``); the core asks with ``isinstance``, never
``getattr``, and the conformance suite (``tests/targets``) checks every one a program has::

    Traceable.trace(x_q) -> list of real pre-activations z per layer   (bit-exact models)
    Accumulating.accumulators(x_q) -> int64 accumulators per layer     (sim: fused gradients)
    OwnSurrogate.surrogate_layers() -> (real weights, ReLU tops)       (loihi: rounded weights)
    HasBitExactModel.bit_exact_model() -> a Traceable program          (a device's local model)
    MeasuresFidelity.measure_fidelity(x_q, source) -> share            (truenorth)

A device behind a socket is a Program without ``trace``; the surrogate gradient then comes
from the bit-exact model of the same network (``hwq.attack.gradients.reference_for``).

Codes outside the input format (docs/integer-semantics.md, section 1): a program computes
them as the reference does, or refuses them with one ``DataError`` line naming the format
(``refuse_outside_format``); it never clips or wraps them silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hwq.errors import DataError, LimitError, UsageError
from hwq.quant import reference
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork


@runtime_checkable
class Program(Protocol):
    net: QuantizedNetwork
    target: str
    exact: bool  # decisions equal hwq.quant.reference's on every input in the format
    options: dict[str, Any]  # what it was compiled with (JSON; saved in .hwq)
    artifacts: dict[str, Any]
    report: dict[str, Any]

    def forward(self, x_q: np.ndarray) -> np.ndarray: ...

    def decide(self, scores: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Traceable(Protocol):
    """A program that can give its real operating point: ``z`` per layer, such that the
    surrogate gradient backpropagates through the arithmetic this program computes."""

    net: QuantizedNetwork
    target: str

    def trace(self, x_q: np.ndarray) -> list[np.ndarray]: ...


@runtime_checkable
class Accumulating(Protocol):
    """A program that gives its int64 accumulators per layer in one integer pass: the last
    layer's are ``forward``'s scores and ``acc * layer.acc_scale`` is ``trace`` (so attacks
    judge and take the operating point from one pass, ``SurrogateGradient.fuses_with``)."""

    def accumulators(self, x_q: np.ndarray) -> list[np.ndarray]: ...


@runtime_checkable
class OwnSurrogate(Protocol):
    """A program whose arithmetic uses other real weights than the network's ``W * s_w`` (loihi
    rounds them): ``(real weights (n_out, n_in) per layer, ReLU top per layer or None)`` for
    the surrogate gradient (``hwq.attack.gradients.surrogate_layers``)."""

    def surrogate_layers(self) -> tuple[list[np.ndarray], list[float | None]]: ...


@runtime_checkable
class HasBitExactModel(Protocol):
    """A program that cannot trace (a device) but has a local bit-exact model of the same
    compiled network, a ``Traceable`` program the surrogate gradient follows."""

    def bit_exact_model(self) -> Any: ...


@runtime_checkable
class MeasuresFidelity(Protocol):
    """A program that measures its own fidelity: the share of ``x_q`` whose decision equals the
    reference's, recorded in ``report["fidelity"]`` (``value``, ``inputs``, ``source``) and
    returned. It may take a ``progress`` keyword (``hwq.api.takes_progress``)."""

    def measure_fidelity(self, x_q: np.ndarray, source: str = ...) -> float: ...


CAPABILITIES = (Traceable, Accumulating, OwnSurrogate, HasBitExactModel, MeasuresFidelity)


def refuse_outside_format(target: str, fmt: InputFormat, x_q: np.ndarray) -> None:
    """The rule for a target that cannot compute codes outside the input format exactly (its
    hardware is sized for the format): refuse them in one line naming the format, never clip."""
    if x_q.size == 0:
        return
    lo, hi = x_q.min(), x_q.max()
    if not (lo >= fmt.qmin and hi <= fmt.qmax):  # NaN fails too
        raise DataError(f"{target}: input codes must lie in [{fmt.qmin}, {fmt.qmax}], the input format "
                        f"{fmt.name}; got codes from {lo} to {hi}",
                        hint="quantize inputs with the network's input format (hwq.quant.reference."
                             "quantize_input), or use the sim target, which computes codes outside the format exactly")


@dataclass(frozen=True)
class Option:
    """One target option: ``parse`` turns the CLI text (``--option name=text``) into a value;
    ``choices`` (if any) lists the valid texts."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()


def parse_bool_or_auto(text: str) -> bool | None:
    table = {"auto": None, "true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in table:
        raise ValueError(text)
    return table[text.lower()]


@dataclass(frozen=True)
class Export:
    """A file format a target writes its compiled program in (``hwq export --format NAME``):
    ``write(program, path)`` must write atomically; ``suffixes`` are the accepted endings."""

    name: str
    suffixes: tuple[str, ...]
    write: Callable[[Any, Any], None]
    help: str = ""


class Target(Protocol):
    name: str
    options: tuple[Option, ...]

    def compile(self, net: QuantizedNetwork, **options: Any) -> Program: ...

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any], **options: Any) -> Program: ...


@runtime_checkable
class Exporting(Protocol):
    """A target that writes its mapping in file formats of its own (``hwq export --format``)."""

    exports: dict[str, Export]


def require_dense(net: QuantizedNetwork, target: str) -> None:
    """Refuse, in one line naming the first such node, a network with convolutions or pooling on
    a target that maps dense layers only."""
    for i, node in enumerate(net.layers):
        if getattr(node, "window", None) is not None:
            what = "a convolution" if isinstance(node, QLayer) else "a pooling"
            raise LimitError(f"the {target} target maps dense networks only; layer {i} is {what} "
                                        f"({node.window.describe()})",
                                        hint="run convolutional networks on --target sim")


def check_options(target: str, declared: tuple[Option, ...], given: dict[str, Any],
                  api_only: tuple[str, ...] = ()) -> None:
    """Refuse option names ``target`` does not declare (``api_only`` names are Python-only)."""
    known = {o.name for o in declared} | set(api_only)
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"unknown {target} option(s): {', '.join(unknown)}",
                         hint="options: " + (", ".join(sorted(known)) or "none"))


@dataclass(eq=False)
class ReferenceProgram:
    """The numpy reference (``hwq.quant.reference``) as a program: the oracle every target is
    tested against, and the surrogate's operating point for programs that cannot trace."""

    net: QuantizedNetwork
    target: str = "reference"
    exact: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        return reference.forward(self.net, x_q)

    def trace(self, x_q: np.ndarray) -> list[np.ndarray]:
        accs = reference.trace(self.net, x_q)
        return [acc * layer.unit_scale for acc, layer in zip(accs, self.net.layers)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return reference.decide(scores, self.net.output)
