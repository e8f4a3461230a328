"""The typer application every command module registers on (kept apart from ``main`` so that
command modules do not import the package that imports them)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="hwq",
    help="Quantize ONNX networks for neuromorphic hardware models and measure their adversarial "
    "robustness as the chip computes them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
