"""``hwq truenorth spikes``: one test sample's input spikes as an ``.sfti`` file for the model
file ``hwq export --format truenorth`` writes from the same compiled program (docs/truenorth.md,
section 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from hwq.errors import DataError, UsageError

from .spikefile import SpikeInput, spikes_from_drive, write_spikes


def sample_spikes(program, codes: np.ndarray, frame: int = 0) -> SpikeInput:
    """The host spikes ``program.drive`` gives the input codes ``codes`` (one row): inputs on
    every copy of every column and the gate and bias spikes, with ``srcTime = arrival - 1``.
    ``frame`` numbers the sample for the stochastic encoding's draws (as ``forward`` numbers the
    rows it runs)."""
    x = program.check(np.asarray(codes).reshape(1, -1))
    drive = program.drive(x, offset=frame)
    return spikes_from_drive(drive, program.mapping.model.ids, 0, delay=1)


def output_neurons(program) -> list[dict]:
    """Where the scores come from: ``score[unit] = sum sign * spikes(core, neuron)``."""
    return [dict(core=int(c), neuron=int(j), unit=int(u), sign=int(s)) for c, j, u, s in program.mapping.outputs]


def spikes(model: Path = typer.Argument(..., help="compiled .hwq file (target truenorth)"),
           data_spec: str = typer.Option(..., "--data", help="the data set the model was trained on (its test split), "
                                         "same specs as hwq's --data"),
           index: int = typer.Option(..., "--index", "-n", min=0, help="test sample number"),
           output: Path = typer.Option(..., "--output", "-o", help="spike file to write (.sfti)"),
           as_json: bool = typer.Option(False, "--json", help="print a JSON summary with the output neurons")) -> None:
    """Write test sample INDEX's input spikes (.sfti) for the model file `hwq export --format truenorth` writes
    from MODEL; prints the ticks to run (`hwq truenorth run MODEL.json -i OUT.sfti -t TICKS`)."""
    from hwq.cli.common import check_output, data
    from hwq.files.program import load_program
    from hwq.quant.reference import quantize_input

    check_output(output, (".sfti",))
    program = load_program(model)
    if getattr(program, "target", None) != "truenorth":
        raise UsageError(f"{model} is compiled for {getattr(program, 'target', '?')}, not truenorth",
                         hint=f"hwq compile --target truenorth, then hwq truenorth spikes {model.name} ...")
    ds = data(data_spec)
    if index >= len(ds.x_test):
        raise DataError(f"--index {index} is outside the test split's {len(ds.x_test)} samples")
    if ds.x_test.shape[1] != program.net.n_features:
        raise DataError(f"{data_spec} has {ds.x_test.shape[1]} features per sample, the model takes "
                        f"{program.net.n_features}")
    codes = quantize_input(program.net.input, ds.x_test[index:index + 1])
    rows = sample_spikes(program, codes, frame=index)
    write_spikes(rows, output)
    ticks = int(program.mapping.ticks)
    summary = dict(model=str(model), index=index, label=int(ds.y_test[index]), spikes=len(rows), ticks=ticks,
                   output=str(output), outputs=output_neurons(program))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{len(rows)} input spikes for test sample {index} (label {summary['label']}) -> {output}; "
                   f"run {ticks} ticks: hwq truenorth run MODEL.json -i {output} -t {ticks} -o OUT.csv")
