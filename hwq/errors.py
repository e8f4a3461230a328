"""One exception hierarchy for hwq, caught once at the CLI edge.

Every error carries enough context to be printed as a single actionable line:
what was wrong, what was expected, and what to do next.
"""

from __future__ import annotations


class HwqError(Exception):
    """Base class of every error hwq raises on purpose. ``exit_code`` is used by the CLI."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(HwqError):
    """A bad argument on the command line or in an API call (bits out of range, bad --eps)."""

    exit_code = 2


class ModelFormatError(HwqError):
    """A file that is not a valid ONNX model, or a truncated or corrupt one."""


class UnsupportedOpError(HwqError):
    """An ONNX op (or op pattern) hwq cannot import."""

    def __init__(self, op: str, node: str, opset: int, supported: str | list[str], *,
                 what: str | None = None):
        self.op, self.node, self.opset = op, node, opset
        if not isinstance(supported, str):
            supported = "supported: " + ", ".join(sorted(supported))
        super().__init__(what or f"unsupported ONNX op '{op}' in node '{node}' (opset {opset})",
                         hint=None if what else supported)


class InvalidModelError(HwqError):
    """A model that imports but cannot be quantized or compiled (NaN weights, bad shapes...)."""


class DataError(HwqError, ValueError):
    """Missing, corrupt or ill-fitting data."""

    exit_code = 2


class FileFormatError(HwqError):
    """A corrupt or foreign .hwq or results file."""


class TargetError(HwqError):
    """A target that is unknown, not installed, or that cannot map the network."""


class LimitError(TargetError):
    """A network that exceeds a hardware target's limits."""
