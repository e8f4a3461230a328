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


def _version(value: bool) -> None:
    if value:
        from hwq.version import __version__

        typer.echo(f"hwq {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print hwq's version and exit.")) -> None:
    """Quantize ONNX networks for neuromorphic hardware models and measure their adversarial
    robustness as the chip computes them."""
