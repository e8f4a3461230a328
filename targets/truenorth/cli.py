"""``hwq truenorth ...``: run IBM-format TrueNorth model files (mounted by hwq's CLI through
the ``hwq.commands`` entry-point group)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import typer

from hwq.cli.common import progress
from hwq.progress_lines import PROGRESS_AFTER_S, ShareLines

from .emulator import EmulatorConfig
from .modelfile import read_model
from .run import run_model, write_spikes_csv
from .spikefile import SpikeInput, read_spikes

app = typer.Typer(help="TrueNorth model files: run them on hwq's core emulator.", no_args_is_help=True,
                  add_completion=False)


class TickProgress:
    """Ticks run, on stderr: a bar on a terminal; without one (a log, CI, nohup) a line at every
    ``every`` share of the ticks once the run has taken ``after`` seconds (default
    ``PROGRESS_AFTER_S``, hwq's one threshold, read here so a test can set it) by hwq's shared
    writer (``hwq.progress_lines.ShareLines``): ``truenorth run: 5000/50000 ticks (10 %), 3.2 s``.
    Called as ``progress(done, ticks)`` with the ``ticks`` it was made for."""

    def __init__(self, ticks: int, stream=None, every: float = 0.1, after: float | None = None,
                 clock=time.perf_counter):
        stream = stream if stream is not None else sys.stderr
        self.bar = self.lines = None
        if stream.isatty():
            self.bar = progress(ticks, "truenorth run")
            self.bar.unit = "tick"
        else:
            self.lines = ShareLines(ticks, "truenorth run", "ticks", stream=stream, every=every, clock=clock,
                                    after=PROGRESS_AFTER_S if after is None else after)

    def __call__(self, done: int, ticks: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        else:
            self.lines.show(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    """Run MODEL on the input spikes; write every spike of every neuron, sorted. Progress on
    stderr: a bar on a terminal, else a line per tenth of the ticks once the run takes a while."""
    net = read_model(model, missing_crossbars)
    spikes = read_spikes(input) if input else SpikeInput(*(np.zeros(0, np.int64) for _ in range(3)))
    shown = TickProgress(ticks)
    try:
        result = run_model(net, spikes, ticks, EmulatorConfig(v_bits=v_bits), progress=shown)
    finally:
        shown.close()
    write_spikes_csv(result.spikes, output)
    summary = dict(model=str(model), cores=len(net.cores), ticks=ticks, output=str(output),
                   missing_crossbars=net.metadata.get("missing_crossbars", []), **result.stats)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{summary['spikes']} spikes from {len(net.cores)} cores over {ticks} ticks -> {output} "
                   f"({summary['offchip']} off-chip, {summary['dropped_absent'] + summary['inputs_dropped_absent']} "
                   f"dropped at absent cores, {summary['merged']} merged)")


from .spikes_cli import spikes as _spikes  # noqa: E402  (a sample's input spikes: spikes_cli.py)

app.command("spikes")(_spikes)
