"""What a target is, from the core's side.

A backend registers one ``Target`` object in the ``hwq.targets`` entry-point group
(``hwq.target.registry``); compiling a quantized network gives a ``Program``::

    class Target:
        name: str
        options: tuple[Option, ...]        # what compile/load accept (CLI: --option k=v)
        def compile(self, net, **options) -> Program
        def load(self, net, artifacts, **options) -> Program   # from a .hwq file
        exports: dict[str, Export]         # optional: file formats of its mapping

    class Program:                          # a network mapped onto the target
        net: QuantizedNetwork
        target: str
        exact: bool                         # decisions equal hwq.quant.reference's, always
        options: dict                       # what it was compiled with (JSON; saved in .hwq)
        artifacts: dict                     # arrays and scalars saved in the .hwq file
        report: dict                        # resources, notes (JSON)
        def forward(self, x_q) -> int64 scores (N, n_out)
        def decide(self, scores) -> int64 classes (N,)

    class Traceable(Program):               # optional: bit-exact models that can
        def trace(self, x_q) -> list of real pre-activations z per layer

A device behind a socket is a Program without ``trace``; the surrogate gradient then comes
from the bit-exact model of the same network (``hwq.attack.gradients.reference_for``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hwq.errors import UsageError
from hwq.quant import reference
from hwq.quant.qnet import QuantizedNetwork


@runtime_checkable
class Program(Protocol):
    net: QuantizedNetwork
    target: str
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
        return [acc * layer.acc_scale for acc, layer in zip(accs, self.net.layers)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return reference.decide(scores, self.net.output)
