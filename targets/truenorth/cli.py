"""``hwq truenorth ...``: run IBM-format TrueNorth model files (mounted by hwq's CLI through
the ``hwq.commands`` entry-point group)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from .emulator import EmulatorConfig
from .modelfile import read_model
from .run import run_model, write_spikes_csv
from .spikefile import SpikeInput, read_spikes

app = typer.Typer(help="TrueNorth model files: run them on hwq's core emulator.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def main() -> None:
    """TrueNorth model files (IBM CPE / NSCS layout)."""


@app.command()
def run(model: Path = typer.Argument(..., help="model file (.json, IBM layout)"),
        input: Path | None = typer.Option(None, "--input", "-i", help="input spikes (.sfti)"),
        ticks: int = typer.Option(..., "--ticks", "-t", min=0, help="run ticks 0..T-1"),
        output: Path = typer.Option(..., "--output", "-o", help="CSV of tick,core,neuron rows"),
        missing_crossbars: str = typer.Option("error", help="a core naming an undefined crossbar "
                                               "prototype: 'error' or 'empty' (NeMo's reading)"),
        v_bits: int = typer.Option(20, help="membrane potential width (saturating)"),
        as_json: bool = typer.Option(False, "--json", help="print a JSON summary")) -> None:
    """Run MODEL on the input spikes; write every spike of every neuron, sorted."""
    net = read_model(model, missing_crossbars)
    spikes = read_spikes(input) if input else SpikeInput(*(np.zeros(0, np.int64) for _ in range(3)))
    result = run_model(net, spikes, ticks, EmulatorConfig(v_bits=v_bits))
    write_spikes_csv(result.spikes, output)
    summary = dict(model=str(model), cores=len(net.cores), ticks=ticks, output=str(output),
                   missing_crossbars=net.metadata.get("missing_crossbars", []), **result.stats)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{summary['spikes']} spikes from {len(net.cores)} cores over {ticks} ticks -> {output} "
                   f"({summary['offchip']} off-chip, {summary['dropped_absent'] + summary['inputs_dropped_absent']} "
                   f"dropped at absent cores, {summary['merged']} merged)")
