"""The target protocol and the entry-point registry that finds backends.

A backend is a package with an object registered in the ``hwq.targets`` entry-point group.
The core never imports a backend: it asks the registry by name. Lookup is lazy and cached,
and a backend that fails to import is reported with the reason instead of breaking the others.

Protocol::

    class Target:                      # registered object
        name: str
        def compile(self, net: QuantizedNetwork, **options) -> Program
        def load(self, net: QuantizedNetwork, artifacts: dict) -> Program

    class Program:                     # a network mapped onto the target
        target: str
        net: QuantizedNetwork
        artifacts: dict[str, np.ndarray | int | float | str]   # saved in the .hwq file
        report: dict                   # resources, notes (JSON-serialisable)
        def forward(self, x_q) -> np.ndarray      # int64 scores (N, n_out)
        def trace(self, x_q) -> list[np.ndarray]  # real pre-activations z per layer
        def decide(self, scores) -> np.ndarray    # class per input
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

from hwq.errors import TargetError
from hwq.qnet import QuantizedNetwork

GROUP = "hwq.targets"
INSTALL_HINTS = {"loihi": "pip install 'hwq[loihi]' on Python 3.10 for the Lava backend"}


class Program(Protocol):
    target: str
    net: QuantizedNetwork
    artifacts: dict[str, Any]
    report: dict[str, Any]

    def forward(self, x_q: np.ndarray) -> np.ndarray: ...

    def trace(self, x_q: np.ndarray) -> list[np.ndarray]: ...

    def decide(self, scores: np.ndarray) -> np.ndarray: ...


class Target(Protocol):
    name: str

    def compile(self, net: QuantizedNetwork, **options: Any) -> Program: ...

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any]) -> Program: ...


@functools.cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_targets() -> list[str]:
    return sorted(_entry_points())


@functools.cache
def get_target(name: str) -> Target:
    eps = _entry_points()
    if name not in eps:
        raise TargetError(
            f"unknown target '{name}'",
            hint="available: " + (", ".join(sorted(eps)) or "none (is hwq installed?)"),
        )
    try:
        factory = eps[name].load()
    except Exception as exc:  # a broken backend must not take the others down
        hint = INSTALL_HINTS.get(name, "reinstall the package that provides it")
        raise TargetError(
            f"target '{name}' is not usable here ({type(exc).__name__}: {exc})", hint=hint
        ) from None
    return factory()
