"""Study commands: sweep, report, model, reproduce."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from hwq.api import ACT_BITS, INPUT_BITS, SCHEME
from hwq.cli.app import app
from hwq.cli.common import (
    DATA_HELP,
    attack_options,
    check_output,
    command_line,
    emit_json,
    gradient_options,
    progress,
    train_options,
)
from hwq.errors import UsageError

JSON = typer.Option(False, "--json", help="Print one JSON object on stdout.")
WORKERS = typer.Option(None, help="Local worker processes (default: one per CPU; 1 runs in this process).")
SCHEDULER = typer.Option(None, help="Run on Dask: tcp://HOST:PORT or tls://HOST:PORT of a scheduler, or 'local' "
                                     "for a local Dask cluster. A scheduler runs code: plain TCP on loopback only.")
SCHEDULER_SECURITY = typer.Option(
    None, "--scheduler-security",
    help="TLS for --scheduler: a Dask config file (distributed.comm.tls ca-file, client cert/key; "
         "docs/sweeps.md), or 'insecure' to allow plain TCP on a trusted network.")


def _sweep_progress(total: int, verbose: bool):
    """A progress bar over cells (done, time left); with ``verbose`` one line per cell."""
    bar = progress(total, "cells")
    bar.unit = "cell"
    bar.refresh()

    def update(done: int, total: int, cell) -> None:
        if cell is None:  # resumed cells: a start value, not progress (keeps the ETA honest)
            bar.initial = bar.n = bar.last_print_n = done
            bar.refresh()
            return
        bar.update(done - bar.n)
        if verbose and cell is not None:
            a = cell.attrs
            what = (f"REFUSED: {a['refused']}" if a.get("refused") else
                    f"clean {a['clean_accuracy']:.3f}{' STALLED' if a['stalled'] else ''}")
            print(f"[{done}/{total}] {cell.key}: {what} ({cell.timing.get('total_s', 0):.1f} s)",
                  file=sys.stderr, flush=True)
    return bar, update


def run_spec(spec, output: Path, *, workers, scheduler, overwrite, verbose, security=None) -> dict:
    from hwq.sweep.executors import make_executor
    from hwq.sweep.run import run_sweep
    from hwq.sweep.spec import all_keys, plan

    # without a terminal (a log, CI, nohup) the bar hides: a line per finished cell instead
    bar, update = _sweep_progress(len(all_keys(plan(spec))), verbose or not sys.stderr.isatty())
    try:
        with make_executor(workers, scheduler, security) as executor:
            return run_sweep(spec, output, executor, command=command_line(),
                             overwrite=overwrite, progress=update)
    finally:
        bar.close()


def build_spec(data_specs, activations, bits, seeds, targets, eps, models, *, train_params=None, scheme,
               act_bits, input_bits, per_channel, grad, limit, data_seed, attack="fgsm", attack_params=None,
               device=None):
    """The sweep's spec from its options; ``train_params`` and ``attack_params``: the declared
    parameters (``hwq.cli.common.train_options``/``attack_options``; None: the default)."""
    from hwq.ranges import parse_epsilons, parse_names, parse_seeds
    from hwq.sweep.run import model_refs
    from hwq.sweep.spec import AttackSettings, QuantOptions, SweepSpec, TrainSettings, split_targets
    from hwq.target.registry import available_targets

    refs = model_refs(models or ())
    return SweepSpec(
        data=parse_names(data_specs), activations=parse_names(activations),
        bits=sweep_bits(bits, refs), seeds=None if seeds is None and refs else parse_seeds(seeds or "5"),
        targets=split_targets(targets, available_targets()), models=refs, data_seed=data_seed,
        train=TrainSettings(**{k: v for k, v in (train_params or {}).items() if v is not None}),
        quant=QuantOptions(scheme=scheme, act_bits=act_bits, input_bits=input_bits,
                           per_channel=per_channel),
        attack=AttackSettings(epsilons=tuple(parse_epsilons(eps).tolist()), gradient=grad, limit=limit,
                              name=attack, **{k: v for k, v in (attack_params or {}).items() if v is not None}),
        device=device,
    )


def sweep_bits(text: str | None, refs) -> tuple[int, ...]:
    """``--bits``: 1:10 by default; with given models the bits of post-training quantization of
    the float files (QAT files keep their grids, so with only QAT files there is nothing to set)."""
    from hwq.ranges import parse_ints

    if not refs or any(r.grid_bits is None for r in refs):
        return parse_ints(text or "1:10", "--bits")
    if text is not None:
        kept = ", ".join(f"{Path(r.path).name} {r.grid_bits}" for r in refs)
        raise UsageError(f"--bits {text}: every model keeps the bits of its QAT grids ({kept}); --bits sets the "
                         "post-training quantization of float models only", hint="leave --bits out")
    return tuple(sorted({r.grid_bits for r in refs}))


def model_paths(model: list[Path] | None, models: str | None) -> list[Path]:
    """``--model A --model B`` and ``--models A,B``, in the order given."""
    from hwq.ranges import parse_names

    return [*(model or ()), *(Path(p) for p in parse_names(models or ""))]


MODEL = typer.Option(
    None, "--model", help="Sweep this ONNX model instead of training (repeatable): a QAT file keeps the bits of "
                          "its grids, a float file is quantized post-training at each --bits; the model is a cell "
                          "coordinate (docs/sweeps.md).")
MODELS = typer.Option(None, "--models", help="ONNX models, comma-separated (the same as --model A --model B).")


@app.command()
@train_options(sweep=True, panel="Training")
@attack_options("Attack parameters")
@gradient_options("Attack parameters")
def sweep(
    data_specs: str = typer.Option("spiral", "--data", help="Comma-separated: " + DATA_HELP),
    activations: str = typer.Option("step,sigmoid,relu", help="Hidden activations, comma-separated."),
    bits: str = typer.Option(None, help="Weight bits: START:STOP (inclusive) or a,b,c (1..16); default 1:10. With "
                             "--model: the post-training bits of float models (QAT files keep their grids)."),
    seeds: str = typer.Option(None, help="Number of seeds (5 -> 0..4), or explicit seeds a,b,c / A:B; default 5. With "
                              "--model: the attack's seeds (default 0; attacks without a seed take one)."),
    targets: str = typer.Option(
        "sim", help="Targets, comma-separated, with options as NAME:K=V,... (truenorth:relu=rate; "
                    "see `hwq info --targets`). A target that cannot map a cell's network refuses it."),
    eps: str = typer.Option("0:0.5:0.005", help="Attack strengths: START:STOP:STEP (inclusive) or a,b,c."),
    model: list[Path] = MODEL,
    models: str = MODELS,
    train_params: dict = None,  # TrainConfig's sweep fields (hwq.cli.common.train_options)
    scheme: str = typer.Option("uniform", help="Weight levels (QAT and quantizer): uniform | narrow | pow2 "
                               f"(`hwq compile` defaults to {SCHEME}; the report states the sweep's)."),
    act_bits: int = typer.Option(16, help="Bits of ReLU/sigmoid activations (16: weights-only study, the paper's; "
                                 f"`hwq compile` defaults to {ACT_BITS})."),
    input_bits: int = typer.Option(16, help=f"Bits of the device's input codes (`hwq compile` defaults to "
                                   f"{INPUT_BITS}; every accuracy in the report states them)."),
    per_channel: bool = typer.Option(False, help="One weight scale per hidden unit (given float models)."),
    grad: str = typer.Option("surrogate", help="Gradient source: surrogate | float | bits:Q | target:NAME."),
    attacks: str = typer.Option("fgsm", "--attacks", "--attack",
                                help="Attack, or a suite a,b,c (fgsm, pgd, square, apgd-ce, apgd-dlr, apgd-t) "
                                "or autoattack: per-input worst case."),
    attack_params: dict = None,  # the attack dataclasses' declared fields (hwq.cli.common.attack_options)
    gradient_params: dict = None,  # --temperature, --ste (hwq.cli.common.gradient_options)
    no_diagnostics: bool = typer.Option(False, "--no-diagnostics", help="Skip the unbounded-strength check."),
    limit: int = typer.Option(None, help="Attack only the first N test inputs."),
    data_seed: int = typer.Option(0, help="Seed of generated data (spirals) and data splits."),
    device: str = typer.Option(
        None, help="Judge every cell on a device: tcp://HOST:PORT (one served model) or exec:COMMAND "
                   "started per cell with {model} (e.g. 'exec:hwq serve {model}'); docs/devices.md."),
    workers: int = WORKERS,
    scheduler: str = SCHEDULER,
    scheduler_security: str = SCHEDULER_SECURITY,
    output: Path = typer.Option(..., "-o", "--output", help="Sweep file (.h5); resumed if it exists."),
    overwrite: bool = typer.Option(False, help="Start again instead of resuming an existing sweep file."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="One line per finished cell on stderr."),
    as_json: bool = JSON,
):
    """Train, quantize, compile and attack every cell of a grid; resumable, one HDF5 file.

    Calibration: the first 5000 rows of each data set's training split (hwq.api.CALIBRATION_POLICY,
    the same rows `hwq compile` uses). The quantizer defaults differ from `hwq compile`'s on
    purpose (uniform levels, 16-bit activations and inputs: the paper's weights-only study);
    the report prints the sweep's next to its numbers."""
    check_output(output, (".h5", ".hdf5"))
    spec = build_spec(data_specs, activations, bits, seeds, targets, eps, model_paths(model, models),
                      train_params=train_params,
                      scheme=scheme, act_bits=act_bits, input_bits=input_bits, per_channel=per_channel, grad=grad,
                      limit=limit, data_seed=data_seed, attack=attacks,
                      attack_params={**attack_params, **gradient_params,
                                     "diagnostics": False if no_diagnostics else None},
                      device=device)
    summary = run_spec(spec, output, workers=workers, scheduler=scheduler, overwrite=overwrite,
                       verbose=verbose, security=scheduler_security)
    if as_json:
        return emit_json(summary)
    typer.echo(f"sweep: {summary['cells']} cells ({summary['ran']} run, {summary['resumed']} "
               f"resumed, {len(summary['stalled'])} stalled, {len(summary.get('refused', []))} refused) "
               f"on {summary['executor']} in "
               f"{summary['wall_s']:.1f} s -> {output}")


@app.command()
def report(
    sweep_files: list[Path] = typer.Argument(
        ..., metavar="SWEEP.h5",
        help="Sweep file(s) written by `hwq sweep`. Several files of one grid run with different --seeds are "
             "reported as one sweep over all their seeds; files that differ in anything but their seeds, or "
             "share a seed, are refused."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the figures and report.md."),
    fig2: bool = typer.Option(True, help="Also draw Fig. 2 (Monte Carlo of the geometric model)."),
    html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page (figures "
                              "embedded, captions, no network fetches) that opens offline in a browser."),
    as_json: bool = JSON,
):
    """Figures (Figs. 2, 3/6, 4/7) and a Markdown report of a sweep, or of several sweep files
    that differ only in their seeds (merged: docs/sweeps.md, "Merging seeds")."""
    from hwq.study.report import write_report

    if output.suffix:
        raise UsageError(f"-o {output} should be a folder, not a file")
    if not output.parent.exists():
        raise UsageError(f"output folder {output.parent} does not exist")
    out = write_report(sweep_files[0] if len(sweep_files) == 1 else sweep_files, output, fig2=fig2, html=html)
    if as_json:
        return emit_json(out)
    merged = f" from {len(sweep_files)} sweep files" if len(sweep_files) > 1 else ""
    typer.echo(f"report{merged}: {len(out['figures'])} figures, {len(out['stalled'])} stalled cells, "
               f"{len(out.get('refused', {}))} refused -> {out['report']}" + (f", {out['html']}" if html else ""))


@app.command("model")
def model_(
    n: int = typer.Option(..., "--n", help="Input dimension n."),
    bits: int = typer.Option(..., "--bits", help="Weight bits q."),
    large_n: bool = typer.Option(True, help="Edge s = sqrt(n) 2^-q (the paper's large-n form)."),
    as_json: bool = JSON,
):
    """The geometric model's quantities (Section 3) for one (n, q)."""
    from hwq.quant.schemes import check_bits
    from hwq.study.analysis import model_summary

    if n < 1:
        raise UsageError(f"--n must be a positive integer, got {n}")
    check_bits(bits)
    out = model_summary(n, bits, large_n=large_n)
    if as_json:
        return emit_json(out)
    width = max(map(len, out))
    for key, value in out.items():
        typer.echo(f"{key.ljust(width)}  {value:.6g}" if isinstance(value, float)
                   else f"{key.ljust(width)}  {value}")


@app.command()
def reproduce(
    data_specs: str = typer.Option(None, "--data", help="Comma-separated data (default: spiral,digits). " + DATA_HELP),
    full: bool = typer.Option(
        None, "--full/--quick",
        help="The paper's grid (bits 1..10, 5 seeds, 101 strengths) or a small one "
             "(default: quick for built-in data, full for mnist:DIR and fashion-mnist)."),
    output: Path = typer.Option(Path("hwq-out"), "-o", "--output", help="Folder for the sweep, figures and report."),
    workers: int = WORKERS,
    scheduler: str = SCHEDULER,
    scheduler_security: str = SCHEDULER_SECURITY,
    limit: int = typer.Option(None, help="Attack only the first N test inputs."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="One line per finished cell on stderr."),
    as_json: bool = JSON,
):
    """Reproduce the paper's figures end to end: sweep, then report (resumable)."""
    from hwq.study.report import write_report
    from hwq.sweep.cell import dataset
    from hwq.sweep.presets import protocol

    proto = protocol(data_specs, full, limit=limit)
    if output.suffix:
        raise UsageError(f"-o {output} should be a folder, not a file")
    if not output.parent.exists():
        raise UsageError(f"output folder {output.parent} does not exist")
    for spec in proto.spec.data:  # bad data fails before the folder exists (loads are cached)
        dataset(spec, proto.spec.data_seed, proto.spec.attack.limit)
    output.mkdir(exist_ok=True)
    sweep_file = output / proto.file_name
    if not as_json:
        typer.echo(f"reproduce ({proto.name} grid): {proto.describe()}", err=True)
    t0 = time.perf_counter()
    # without a terminal (a log, CI, nohup) there is no progress bar: a line per finished cell instead
    summary = run_spec(proto.spec, sweep_file, workers=workers, scheduler=scheduler, overwrite=False,
                       verbose=verbose or not sys.stderr.isatty(), security=scheduler_security)
    out = write_report(sweep_file, output, html=True)
    out.update(sweep=str(sweep_file), grid=proto.name,
               settings=proto.describe(), wall_s=time.perf_counter() - t0,
               cells=summary["cells"])
    if as_json:
        return emit_json(out)
    typer.echo(f"{summary['cells']} cells in {out['wall_s']:.0f} s; "
               f"{len(out['stalled'])} stalled")
    for data, by_target in out["critical"].items():
        for target, by_act in by_target.items():
            for act, defs in by_act.items():
                parts = [f"{name} " + (f"{d['eps_linf']:.3g} (l2 {d['eps_l2']:.3g})" if d else "none")
                         for name, d in defs.items()]
                typer.echo(f"  critical strength {data}/{target}/{act}: " + "; ".join(parts))
    typer.echo(f"figures: {output}/fig*.png  report: {out['report']} and {out['html']}  sweep: {sweep_file}")
