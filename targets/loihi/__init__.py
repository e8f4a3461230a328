"""``loihi``: quantized MLPs and CNNs on Intel Loihi's integer arithmetic.

Two ways to run one mapping: ``backend="emulator"`` (default; batched Numba + exact BLAS) and
``backend="lava"`` (Lava's CPU fixed-point process models; ground truth, and the path to
Loihi hardware). Mapping and semantics: docs/loihi.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hwq.errors import FileFormatError, UsageError
from hwq.quant.qnet import QuantizedNetwork
from hwq.target.protocol import Export, Option, check_options

from .artifacts import digit_shape, from_artifacts
from .limits import LOIHI, Limits
from .mapping import map_network
from .netx import write_netx
from .program import BACKENDS, NAME, LoihiProgram

__all__ = ["Limits", "LoihiProgram", "LoihiTarget"]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"unknown loihi backend '{backend}'", hint="use emulator or lava")
    return backend


def parse_chips(text) -> int:
    try:
        chips = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"chips must be a whole number, got {text!r}") from None
    if chips < 1:
        raise UsageError(f"chips must be at least 1, got {chips}")
    return chips


def parse_shifts(text: str) -> tuple[int | None, ...]:
    """``"3,auto,5"`` -> ``(3, None, 5)``."""
    return tuple(None if p.strip() in ("auto", "") else int(p) for p in text.split(","))


class LoihiTarget:
    name = NAME
    options = (
        Option("backend", "emulator (batched, default) | lava (Lava's fixed-point processes)",
               "emulator", str, BACKENDS),
        Option("shifts", "per-layer right shifts, e.g. 3,auto (default: automatic)", None, parse_shifts),
        Option("chips", "how many Loihi chips the network may use (default 1; compile refuses more)", None,
               parse_chips),
    )
    API_ONLY = ("limits",)  # Python objects, not CLI text
    exports = {"netx": Export("netx", (".net", ".h5"), write_netx,
                              "lava-dl netx HDF5 (lava.lib.dl.netx.hdf5.Network; step MLPs and CNNs at shift 0, "
                              "symmetric pads, pools as ones-kernel convolutions)")}

    def compile(self, net: QuantizedNetwork, backend: str = "emulator", *, shifts=None,
                limits: Limits | None = None, chips: int | None = None, **unknown: Any
                ) -> LoihiProgram:
        """Map ``net`` (dense layers, convolutions, poolings: docs/loihi.md section 9) onto
        Loihi. ``shifts`` forces per-layer right shifts (None entries: automatic); ``limits``
        overrides the hardware figures; ``chips`` the chips it may use (``limits.chips``)."""
        check_options(NAME, self.options, unknown, self.API_ONLY)
        limits = limits or LOIHI
        if chips is not None:
            limits = dataclasses.replace(limits, chips=parse_chips(chips))
        mapping = map_network(net, limits, shifts)
        return LoihiProgram(net, mapping, limits, check_backend(backend))

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any], backend: str | None = None,
             **options: Any) -> LoihiProgram:
        """The stored mapping, run by ``backend`` (default: the one it was compiled for).
        Mapping options (``shifts``) cannot change a stored mapping: recompile instead."""
        check_options(NAME, self.options, options)
        if options.get("shifts") is not None:
            raise UsageError("shifts change the mapping; recompile the model with --option shifts=...")
        mapping, limits, saved = from_artifacts(artifacts, net)
        shapes = [lm.sets[0].digits.shape for lm in mapping.layers]
        if shapes != [digit_shape(node) for node in net.layers]:
            raise FileFormatError("the loihi artifacts do not match the stored network",
                                  hint="recompile the model with --target loihi")
        return LoihiProgram(net, mapping, limits, check_backend(backend or saved))
