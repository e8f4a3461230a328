"""``loihi``: quantized MLPs on Intel Loihi's integer arithmetic.

Two ways to run one mapping: ``backend="emulator"`` (default; batched Numba + exact BLAS) and
``backend="lava"`` (Lava's CPU fixed-point process models; ground truth, and the path to
Loihi hardware). Mapping and semantics: docs/loihi.md.
"""

from __future__ import annotations

from typing import Any

from hwq.errors import FileFormatError, UsageError
from hwq.qnet import QuantizedNetwork

from .artifacts import from_artifacts
from .limits import LOIHI, Limits
from .mapping import map_network
from .program import BACKENDS, NAME, LoihiProgram

__all__ = ["Limits", "LoihiProgram", "LoihiTarget"]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"unknown loihi backend '{backend}'", hint="use emulator or lava")
    return backend


class LoihiTarget:
    name = NAME

    def compile(self, net: QuantizedNetwork, backend: str = "emulator", *, shifts=None,
                limits: Limits | None = None, variant: str = "exact", **unknown: Any
                ) -> LoihiProgram:
        """Map ``net`` onto Loihi. ``shifts`` forces per-layer right shifts (None entries:
        automatic); ``limits`` overrides the hardware figures; ``variant`` is for tests only."""
        if unknown:
            raise UsageError(f"unknown loihi option(s): {', '.join(sorted(unknown))}",
                             hint="options: backend, shifts, limits")
        limits = limits or LOIHI
        mapping = map_network(net, limits, shifts)
        return LoihiProgram(net, mapping, limits, check_backend(backend), variant)

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any],
             backend: str | None = None) -> LoihiProgram:
        mapping, limits, saved = from_artifacts(artifacts)
        shapes = [lm.sets[0].digits.shape for lm in mapping.layers]
        if shapes != [layer.weight.shape for layer in net.layers]:
            raise FileFormatError("the loihi artifacts do not match the stored network",
                                  hint="recompile the model with --target loihi")
        return LoihiProgram(net, mapping, limits, check_backend(backend or saved))
