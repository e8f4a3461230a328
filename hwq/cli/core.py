"""Core commands: train, compile, run, attack, export, info, compare."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import numpy as np
import typer

from hwq import api
from hwq.attack import ATTACKS
from hwq.attack.suite import ProgressLines
from hwq.cli.app import app
from hwq.cli.common import (
    DATA_HELP,
    OPTION,
    TARGET,
    TARGET_HELP,
    attack_options,
    check_output,
    command_line,
    data,
    emit_json,
    gradient_options,
    program_for,
    progress,
    run_options,
    table,
    target_options,
    train_options,
)
from hwq.errors import DataError, FileFormatError, UsageError
from hwq.files import program as hwqfile
from hwq.files import results
from hwq.ir import activations as kinds
from hwq.onnx.importer import load_onnx, model_metadata
from hwq.progress_lines import PROGRESS_AFTER_S, ShareLines
from hwq.ranges import parse_epsilons

JSON = typer.Option(False, "--json", help="Print one JSON object on stdout.")


@app.command()
@train_options(sweep=False)
def train(
    data_spec: str = typer.Option("spiral", "--data", help=DATA_HELP),
    train_params: dict = None,  # TrainConfig's declared fields (hwq.cli.common.train_options)
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    as_json: bool = JSON,
):
    """Train a one-hidden-layer MLP with the paper's QAT recipe and write it as ONNX."""
    from hwq.files.atomic import atomic_write_bytes
    from hwq.train import TrainConfig, auto_training, mlp_to_onnx, predict_float, train_mlp

    check_output(output, (".onnx",))
    seed, activation, bits, scheme = (train_params[k] for k in ("seed", "activation", "bits", "scheme"))
    ds = data(data_spec, seed=seed)
    auto = auto_training(ds.name, len(ds.y_train))  # the same computed defaults as sweeps
    # None is "not given" (the computed default); 0 is refused by TrainConfig, not read as "default"
    config = TrainConfig(**{k: auto[k] if v is None and k in auto else v for k, v in train_params.items()})
    epochs = config.epochs
    bar = progress(epochs, "epochs")
    mlp = train_mlp(ds.x_train, ds.y_train, ds.n_classes, config,
                    progress=lambda epoch, total, stats: bar.update(1))
    bar.close()
    test_acc = float(np.mean(predict_float(mlp, ds.x_test) == ds.y_test))
    meta = {"hwq.dataset": data_spec, "hwq.seed": str(seed)}
    onnx_model = mlp_to_onnx(mlp, n_in=ds.n_features, n_classes=ds.n_classes, metadata=meta)
    atomic_write_bytes(output, onnx_model.SerializeToString())
    summary = {"output": str(output), "data": ds.name, "activation": activation, "bits": bits,
               "scheme": scheme if bits else None, "best_epoch": mlp.best_epoch,
               "val_accuracy": mlp.val_accuracy, "test_accuracy": test_acc,
               "stalled": bool(mlp.stalled)}
    if as_json:
        return emit_json(summary)
    typer.echo(f"trained {ds.name} {activation} bits={bits or 'float'}: val {mlp.val_accuracy:.3f}, "
               f"test {test_acc:.3f} (best epoch {mlp.best_epoch}) -> {output}")
    if mlp.stalled:
        typer.echo("warning: training stalled at chance accuracy (see docs/training.md)", err=True)


CALIB_HELP = ("Calibration data for the input and activation formats, the same specs as --data: " + DATA_HELP
              + f". Policy (every command and sweep): {api.CALIBRATION_POLICY}. Default: the data set `hwq train` "
              + "recorded in the model, else 1000 uniform samples in [0, 1] (a warning; the report and the .hwq "
              + "file say which).")


def calibration(calib: str | None, meta: dict, n_features: int, seed: int):
    """Calibration samples, data bounds and a description: --calib, else the dataset the model
    was trained on, else uniform samples in [0, 1] (image-like inputs). The rows of
    ``hwq.api.CALIBRATION_POLICY`` (the same a sweep cell calibrates on)."""
    spec = calib or meta.get("hwq.dataset")
    if spec:
        ds = data(spec, seed=seed)
        if ds.n_features != n_features:
            raise DataError(f"calibration data {spec} has {ds.n_features} features, the model expects {n_features}")
        source = "--calib" if calib else "the model's hwq.dataset"
        x = api.calibration_rows(ds.x_train)
        return x, ds.bounds, f"{spec} training split, first {len(x)} of {len(ds.x_train)} rows ({source})"
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (1000, n_features)), (0.0, 1.0),
            f"uniform noise in [0, 1], seed {seed} (no --calib, and the model records no data set)")


def grid_bits(graph) -> int | None:
    """The bits of the file's QAT weight grids when every layer has one (else None)."""
    grids = [a.grid for a in graph.affines]
    return max(g.bits for g in grids) if grids and all(g is not None for g in grids) else None


@app.command("compile")
def compile_(
    model: Path = typer.Argument(..., help="ONNX model to compile."),
    target: str = typer.Option("sim", help="Target: " + TARGET_HELP),
    option: list[str] = OPTION,
    bits: int = typer.Option(None, help="Weight bits 1..16 (default: the bits a QAT model was trained with)."),
    scheme: str = typer.Option(
        None, help=f"Weight levels: narrow | pow2 | uniform (default: {api.SCHEME}, or the model's QAT scheme; "
                   "`hwq sweep` defaults to uniform)."),
    per_channel: bool = typer.Option(False, help="One weight scale per output channel (hidden layers)."),
    conv_per_channel: bool = typer.Option(True, "--conv-per-channel/--conv-per-tensor",
                                          help="Convolutions: one weight scale per output channel (default, as "
                                               "Brevitas) or one per layer (Loihi needs it for ReLU layers)."),
    act_bits: int = typer.Option(api.ACT_BITS, help="Bits of ReLU/sigmoid activations (16 ~ the paper's "
                                 "weights-only study, `hwq sweep`'s default)."),
    input_bits: int = typer.Option(api.INPUT_BITS, help="Bits of the device's input codes (`hwq sweep` defaults "
                                   "to 16; summaries print the format)."),
    calib: str = typer.Option(None, help=CALIB_HELP),
    output: Path = typer.Option(None, "-o", "--output", help="Compiled file (default: MODEL.hwq)."),
    seed: int = typer.Option(0, help="Seed for calibration data."),
    as_json: bool = JSON,
):
    """Quantize an ONNX model and map it onto a target; writes a .hwq file."""
    output = check_output(output or model.with_suffix(".hwq"), (".hwq",))
    target, options = target_options(target, option)
    graph = load_onnx(model)
    meta = model_metadata(model)
    bits = bits if bits is not None else int(meta.get("hwq.bits", 0)) or grid_bits(graph)
    if bits is None:
        raise UsageError("--bits is required for a float model (1..16)")
    scheme = scheme or meta.get("hwq.scheme", api.SCHEME)
    x_cal, bounds, cal_name = calibration(calib, meta, graph.n_features, seed)
    net = api.quantize(graph, bits, calibration=x_cal, bounds=bounds, scheme=scheme,
                       per_channel=per_channel, act_bits=act_bits, input_bits=input_bits,
                       conv_per_channel=conv_per_channel)
    cal_name = f"{cal_name}: {net.settings.calibration}"
    net = dataclasses.replace(net, settings=dataclasses.replace(net.settings, calibration=cal_name))
    shown, close = compile_progress(target)
    try:
        program = api.compile(net, target, **options, **shown)
    finally:
        close()
    warning = measure_fidelity(program, calib or meta.get("hwq.dataset"), seed, x_cal)
    hwqfile.save_program(output, program, command=command_line())
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        return emit_json({"output": str(output), "target": target, "options": program.options,
                          "bits": net.settings.bits,
                          "scheme": scheme, "calibration": cal_name, "calibration_policy": api.CALIBRATION_POLICY,
                          "notes": list(graph.notes), "warnings": [warning] if warning else [],
                          "report": hwqfile.quantization_table(net), "target_report": program.report})
    if cal_name.startswith("uniform noise"):
        typer.echo("warning: activations calibrated on uniform noise; pass --calib DATA (the data the model "
                   "will see) for scales that fit it", err=True)
    for note in graph.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"calibration: {cal_name}")
    typer.echo(quantization_text(hwqfile.quantization_table(net)))
    fidelity = program.report.get("fidelity") if isinstance(program.report, dict) else None
    if isinstance(fidelity, dict) and "value" in fidelity:
        typer.echo(f"fidelity: {fidelity['value']:.4f} ({fidelity.get('source', '')})")
    typer.echo(f"compiled {model} for {target} ({scheme} q={net.settings.bits}, calibration: {cal_name}) -> {output}")


def compile_progress(target: str):
    """``api.compile``'s ``progress`` where the target's ``compile`` reports it (truenorth: each
    layer mapped, ``progress(done, total, what)``): a bar on a terminal, else (a log, CI) a line
    per report once the compile has taken ``PROGRESS_AFTER_S`` (``hwq.progress_lines``, read
    here so a test can set it); and the bar's ``close``."""
    if not api.takes_progress(api.get_target(target).compile):
        return {}, lambda: None
    bar = progress(0, f"{target} compile")
    lines = ShareLines(0, f"{target} compile", "layers", after=PROGRESS_AFTER_S)

    def report(done: int, total: int, what: str) -> None:
        bar.total, bar.unit = total, "layer"
        bar.update(done - bar.n)
        bar.set_postfix_str(what)
        if bar.disable and lines.due():
            lines.write(f"{target} compile: {done}/{total} layers, {what} ({lines.elapsed():.1f} s)")
    return {"progress": report}, bar.close


FIDELITY_INPUTS = 1000


def measure_fidelity(program, spec: str | None, seed: int, x_cal: np.ndarray) -> str | None:
    """An inexact program's fidelity (``hwq.api.check_fidelity``: the share of inputs whose
    decision equals the reference's) on the first ``FIDELITY_INPUTS`` test inputs of the
    calibration data set, else on the calibration samples; returns the warning when it is low."""
    from hwq.quant.reference import quantize_input

    if spec:
        ds = data(spec, limit=FIDELITY_INPUTS, seed=seed)
        x, source = ds.x_test.reshape(len(ds.x_test), -1), f"{spec} test split, first {len(ds.x_test)} inputs"
    else:
        x = x_cal[:FIDELITY_INPUTS]
        source = f"the first {len(x)} calibration samples"
    # without a terminal (a log, CI): a line per 10 % of the inputs once it has run PROGRESS_AFTER_S
    bar = (progress(len(x), f"{program.target} fidelity") if sys.stderr.isatty()
           else ProgressLines(len(x), f"{program.target} fidelity", after=PROGRESS_AFTER_S))
    try:
        return api.check_fidelity(program, quantize_input(program.net.input, x), source, progress=bar.update)
    finally:
        bar.close()


def quantization_text(rows: list[dict]) -> str:
    return table([[r["tensor"], r["format"], f"{r['max_abs_error']:.3g}", r["clipped"], "yes" if r["on_grid"] else ""]
                  for r in rows], ["tensor", "format", "max error", "clipped", "QAT grid"])


def layer_text(rows: list[dict]) -> str:
    def shape(v):
        return "x".join(str(d) for d in v)

    body = [[r["layer"], r["kind"], shape(r["in_shape"]), shape(r["out_shape"]),
             r["activation"] + (f" u{r['act_bits']}" if r["act_bits"] else ""),
             "" if r["weight_codes"] is None else "{}..{}".format(*r["weight_codes"]), f"{r['params']:,}",
             f"{r['macs']:,}"] for r in rows]
    total = ["", "total", "", "", "", "", f"{sum(r['params'] for r in rows):,}", f"{sum(r['macs'] for r in rows):,}"]
    return table(body + [total], ["layer", "node", "in", "out", "activation", "weight codes", "params",
                                  "MACs/sample"])


RESOURCE_COLUMNS = ("neurons", "compartments", "synapses", "fan_in", "input_axons", "output_axons", "cores")


def resource_text(report: dict) -> str:
    """The chip resources a target's report states per layer (loihi: neurons, synapses, axons,
    cores) as a table with the totals; empty where the report has none."""
    layers = [r for r in report.get("layers", ()) if isinstance(r, dict) and "cores" in r]
    if not layers:
        return ""
    cols = [c for c in RESOURCE_COLUMNS if all(c in r for r in layers)]
    body = [[r.get("index", i), *(f"{r[c]:,}" if isinstance(r[c], int) else r[c] for c in cols)]
            for i, r in enumerate(layers)]
    total = report.get("resources", {})
    if total:
        body.append(["total", *(f"{total[c]:,}" if isinstance(total.get(c), int) else "" for c in cols)])
    chips = f"\nchips: {total['chips']} of {total.get('chips_allowed', '?')} allowed" if "chips" in total else ""
    return table(body, ["layer", *cols]) + chips


LIMIT = typer.Option(None, help="Use only the first N test inputs.")


@app.command()
def run(
    model: Path = typer.Argument(..., help="Compiled .hwq file."),
    data_spec: str = typer.Option(..., "--data", help=DATA_HELP),
    target: str = TARGET,
    option: list[str] = OPTION,
    limit: int = LIMIT,
    output: Path = typer.Option(None, "-o", "--output", help="Write per-input scores and decisions (RUN.h5)."),
    predictions: bool = typer.Option(False, "--predictions", help="With --json: include every decision."),
    as_json: bool = JSON,
):
    """Run the integer model on a test set and print its accuracy."""
    if output is not None:
        check_output(output, (".h5", ".hdf5"))
    program = program_for(model, target, option)
    ds = data(data_spec, limit)
    bar = progress(len(ds.y_test), f"{program.target} run")
    ev = api.evaluate(program, ds.x_test, ds.y_test, progress=bar.update)
    bar.close()
    if output is not None:
        results.write_run(output, ev.scores, ev.predictions, ds.y_test, {
            "command": command_line(), "model": str(model), "target": program.target,
            "options": program.options, "data": data_spec, "data_fingerprint": ds.fingerprint()})
    if as_json:
        out = {"accuracy": ev.accuracy, "n_inputs": len(ds.y_test), "target": program.target,
               "output": str(output) if output else None}
        if predictions:
            out.update(predictions=ev.predictions.tolist(), labels=ds.y_test.tolist())
        return emit_json(out)
    typer.echo(f"{program.target}: accuracy {ev.accuracy:.4f} on {len(ds.y_test)} {ds.name} test inputs"
               + (f" -> {output}" if output else ""))


ATTACK_PANEL = "Attack parameters"


@app.command()
@attack_options(ATTACK_PANEL)
@gradient_options(ATTACK_PANEL)
@run_options()
def attack(
    model: Path = typer.Argument(..., help="Compiled .hwq file."),
    data_spec: str = typer.Option(..., "--data", help=DATA_HELP),
    eps: str = typer.Option("0:0.5:0.005", help="Attack strengths: START:STOP:STEP (inclusive) or a,b,c."),
    run_params: dict = None,  # --grad, --diagnostics, --seed: hwq.api.AttackRunOptions (hwq.cli.common.run_options)
    attack_name: str = typer.Option("fgsm", "--attack", help="Attack: " + " | ".join(ATTACKS) + "."),
    attacks: str = typer.Option(None, "--attacks", help="A suite, e.g. fgsm,pgd,square, or autoattack "
                                "(apgd-ce,apgd-t,apgd-dlr,square 5000): the per-input worst case is the robust "
                                "accuracy (overrides --attack)."),
    attack_params: dict = None,  # the attack dataclasses' declared fields (hwq.cli.common.attack_options)
    gradient_params: dict = None,  # the masking remedies, --temperature and --ste (hwq.cli.common.gradient_options)
    target: str = TARGET,
    option: list[str] = OPTION,
    limit: int = LIMIT,
    output: Path = typer.Option(None, "-o", "--output", help="Results file (.h5)."),
    plot: Path = typer.Option(None, help="Also write accuracy vs strength as a PNG."),
    device: str = typer.Option(None, "--device", help="Judge every point on a device: tcp://HOST:PORT "
                               "(`hwq serve`, docs/devices.md); gradients stay the bit-exact model's."),
    max_disagreement: float = typer.Option(0.0, "--max-disagreement", help="With --device: stop, writing nothing, "
                                           "if the device's decisions differ from the bit-exact model's on more "
                                           "than this share of inputs at some strength (1: never stop)."),
    as_json: bool = JSON,
):
    """Attack over a list of strengths (FGSM by default), judged on the bit-exact integer model."""
    epsilons = parse_epsilons(eps)
    for path, suffixes in ((output, (".h5", ".hdf5")), (plot, (".png",))):
        if path is not None:
            check_output(path, suffixes)
    method = api.attack_method(attacks or attack_name, **attack_params)
    program = program_for(model, target, option)
    ds = data(data_spec, limit, run_params["seed"])
    gradient = api.attack_gradient(run_params["grad"], program, ds, method, **gradient_params)
    bar = attack_progress(len(ds.y_test) * len(api.attack_members(method)), len(epsilons))
    runner = None
    if device:  # hwq/cli/devices.py: judged on the device, journaled beside the output
        from hwq.cli.devices import attack_on

        runner = functools.partial(attack_on, device, output=output, max_disagreement=max_disagreement)
    run = api.run_attack(program, ds, epsilons, method, grad=gradient, diagnostics=run_params["diagnostics"],
                         progress=bar.update, runner=runner, data_spec=data_spec, seed=run_params["seed"],
                         model=model)
    bar.close()
    if output is not None:
        api.write_attack_results(output, run, command_line())
        if device:
            from hwq.cli.devices import remove_journal

            remove_journal(output)
    if plot is not None:
        api.plot_attack(run, plot)
    if as_json:
        return emit_json(run.summary)
    typer.echo(attack_text(run, attack_params["norm"], output))
    for flag in run.result.diagnostics.get("flags", []):
        typer.echo(f"warning: {flag_text(flag, run.result.diagnostics)}", err=True)


def attack_progress(total: int, strengths: int):
    """The attack's progress: a bar on a terminal; without one (a log, CI, nohup) the bar hides,
    so lines per 10 % of the inputs and per attack and strength (``ProgressLines``)."""
    return progress(total, f"attack ({strengths} strengths)") if sys.stderr.isatty() else ProgressLines(total)


def attack_text(run: api.AttackRun, norm: str, output: Path | None) -> str:
    """``hwq attack``'s table (at most 11 of the strengths) and its summary line."""
    result, epsilons = run.result, run.result.epsilons
    picks = np.unique(np.linspace(0, len(epsilons) - 1, min(11, len(epsilons))).astype(int))
    names = [m.attack for m in result.members]
    rows = table([[f"{epsilons[k]:g}", *[f"{m.accuracy[k]:.4f}" for m in result.members],
                   f"{result.accuracy[k]:.4f}", f"{result.relative_accuracy[k]:.4f}"] for k in picks],
                 ["eps", *names, "robust" if names else "accuracy", "relative"])
    label = getattr(run.method, "label", run.method.name)
    return rows + "\n" + (
        f"{run.program.target}, {label} {norm}, {result.gradient} gradient, inputs {run.meta['input_format']}: "
        f"clean accuracy {result.clean_accuracy:.4f} on {len(run.data.y_test)} inputs; zero gradients: "
        f"{int(result.zero_gradient.sum())}" + (f" -> {output}" if output else ""))


def flag_text(flag: str, diag: dict) -> str:
    """One line per diagnostic flag (``hwq.attack.suite``)."""
    name, _, attack = flag.partition(":")
    if name == "unbounded_not_broken":
        c = diag["unbounded"][attack]
        return (f"{attack} at eps={c['eps']:g} (the input range) leaves accuracy {c['accuracy']:.3f} above "
                f"chance {c['chance']:.3f}: its gradient does not work (masking?)")
    if name == "gradient_free_beats_gradient":
        g = diag[name]
        return (f"the gradient-free attack broke {g['share']:.1%} of inputs that every gradient attack "
                f"missed (eps={g['eps']:g}): gradient masking")
    if name == "pgd_weaker_than_fgsm":
        return f"PGD is weaker than FGSM at {len(diag[name]['epsilons'])} strength(s): step size or gradient"
    if name == "weaker_than_fgsm":
        return (f"{attack} is weaker than FGSM at {len(diag[name][attack]['epsilons'])} strength(s): "
                "step size or gradient")
    if name == "remedy_changed":
        what = "a straight-through shape" if attack.startswith("ste=") else "a logit temperature"
        return f"{what} ({attack}) breaks more inputs: gradient masking (see diagnostics 'remedies')"
    if name == "approximate_target":
        what = "; ".join(diag[name]["approximations"]) or "an approximate mapping"
        return (f"the points are judged on an approximate program ({what}); gradients follow the integer "
                "model's surrogate and no expectation over the program's randomness is taken (no EOT): a "
                "stochastic program's decisions are single draws")
    if name == "zero_gradient":
        return f"{diag['zero_gradient']} input(s) have an exactly zero gradient"
    if name == "nonfinite_gradient":
        return f"{diag['nonfinite_gradient']} input(s) have NaN/Inf gradients"
    if name == "device_disagreement":  # hwq/cli/devices.py
        d = diag["device"]
        return (f"the device's decisions differ from the bit-exact model's on up to {max(d['disagreement']):.2%} "
                f"of inputs (limit --max-disagreement {d['max_disagreement']:g})")
    return flag


def writable_exports(path: Path, target: str) -> tuple[list[str], dict]:
    """The formats ``hwq export`` writes for this file, and the target's formats it refuses
    (name -> why): each target format is written once into a scratch folder, so the list
    says exactly what ``export`` then does."""
    import tempfile

    from hwq.errors import HwqError

    formats, refused = api.export_formats(target), {}
    own = [name for name in formats if name not in api.core_exports()]
    if own:
        program = hwqfile.load_program(path)
        with tempfile.TemporaryDirectory(prefix="hwq-info-") as scratch:
            for name in own:
                try:
                    formats[name].write(program, Path(scratch) / f"probe{formats[name].suffixes[0]}")
                except HwqError as exc:
                    refused[name] = exc.line()
    return [name for name in formats if name not in refused], refused


@app.command()
def export(
    model: Path = typer.Argument(..., help="Compiled .hwq file."),
    output: Path = typer.Option(..., "-o", "--output", help="File to write."),
    fmt: str = typer.Option(None, "--format", "-f",
                            help="onnx (integer-exact ONNX), nir (NIR graph + integer metadata), or a format of the "
                                 "file's target, e.g. truenorth, netx "
                                 "(default: from the output's suffix; `hwq info MODEL.hwq` lists them)."),
    as_json: bool = JSON,
):
    """Export the compiled network: the integer network (onnx) or the target's mapping."""
    stored = hwqfile.read_stored(model)
    fmt = api.export_format(stored.target, output, fmt)
    check_output(output, api.export_formats(stored.target)[fmt].suffixes)
    api.export(model, output, fmt)
    if as_json:
        return emit_json({"output": str(output), "format": fmt})
    typer.echo(f"exported {model} ({fmt}) -> {output}")


@app.command()
def info(
    path: Path = typer.Argument(None, help="A .hwq, results .h5, sweep .h5 or .onnx file."),
    targets: bool = typer.Option(False, "--targets", help="List the installed targets."),
    ops: bool = typer.Option(False, "--ops", help="List every ONNX op the importer reads, with its role."),
    as_json: bool = JSON,
):
    """Describe a file hwq wrote or reads, or list the installed targets or the ONNX ops hwq reads."""
    from hwq.target.registry import available_targets

    if ops:
        from hwq.onnx.importer import op_table

        rows = op_table()
        if as_json:
            return emit_json({"ops": dict(rows)})
        return typer.echo(table([list(r) for r in rows], ["op", "role"]))
    if targets or path is None:
        out = {"targets": available_targets(), "options": target_option_help()}
    elif path.suffix == ".nir":
        from hwq.files import nir

        out = nir.describe(path)
    elif path.suffix == ".onnx":
        graph = load_onnx(path)
        out = {"kind": "onnx model", "sample_shape": list(graph.sample_shape),
               "layers": [[a.n_in, a.n_out, act] for a, act in graph.layers()],
               "stages": [stage_row(st) for st in graph.stages()],
               "output": graph.output.kind, "grids": grid_info(graph), "notes": list(graph.notes),
               "metadata": model_metadata(path)}
    else:
        out = describe_h5(path)
    if as_json:
        return emit_json(out)
    if out.get("kind") == "compiled model":
        typer.echo(quantization_text(out.pop("quantization")))
        typer.echo(layer_text(out.pop("layers")))
        resources = resource_text(out.get("target_report") or {})
        if resources:
            typer.echo(resources)
    if out.get("kind") == "onnx model":
        typer.echo(grid_text(out.pop("grids")))
        stages = out.pop("stages")
        typer.echo(table([[i, r["node"], "x".join(map(str, r["in_shape"])), "x".join(map(str, r["out_shape"])),
                           r["activation"]] for i, r in enumerate(stages)],
                          ["stage", "node", "in", "out", "activation"]))
    for key, value in out.items():
        typer.echo(f"{key}: {value if not isinstance(value, (list, dict)) else json.dumps(value)}")


def stage_row(stage) -> dict:
    """One stage of a float graph (``hwq info`` on an ONNX file): the node with its window, shapes."""
    node = stage.node
    win = getattr(node, "window", None)
    name = {"Affine": "dense", "Conv2d": "conv", "MaxPool2d": "maxpool", "AvgPool2d": "avgpool",
            "SumPool2d": "sumpool"}.get(type(node).__name__, type(node).__name__)
    if win is not None:
        name += " " + win.describe(groups=name == "conv")
    return {"node": name, "in_shape": list(stage.in_shape), "out_shape": list(stage.out_shape),
            "activation": "" if not stage.linear else stage.activation}


def grid_info(graph) -> dict:
    """The QAT grids the importer found: per layer the weight grid and the activation's
    quantizer (None where there is none), the input quantizer, and a one-line summary."""
    def quant(q):
        return None if q is None else {"bits": q.bits, "signed": q.signed, "scale": q.scale, "name": q.name,
                                       "source": q.source}

    pairs, acts = graph.layers(), graph.activation_quants()
    weights = [None if a.grid is None else {"bits": a.grid.bits, "scheme": a.grid.scheme, "source": a.grid.source,
                                            "per_channel": len(a.grid.weight_scale) > 1} for a, _ in pairs]
    activations = [quant(q) for q in acts]
    hidden = [i for i, (_, act) in enumerate(pairs)
              if act in kinds.KINDS and kinds.KINDS[act].takes_quantizer]
    found = [w for w in weights if w]
    parts = [f"weight grids on {len(found)}/{len(weights)} layers"
             + (f" (q={'/'.join(str(w['bits']) for w in weights if w)})" if found else ""),
             f"activation quantizers on {sum(activations[i] is not None for i in hidden)}/{len(hidden)} "
             "quantizable hidden layers",
             "input quantizer " + (graph.input_quant.name if graph.input_quant else "none")]
    if grid_bits(graph):
        parts.append(f"compile --bits default: {grid_bits(graph)}")
    return {"summary": "; ".join(parts), "weights": weights, "activations": activations,
            "input": quant(graph.input_quant), "bits": grid_bits(graph)}


def grid_text(grids: dict) -> str:
    rows = [[i, f"{w['scheme']} q={w['bits']}{' per-channel' if w['per_channel'] else ''} ({w['source']})"
             if w else "float", a["name"] + f" ({a['source']})" if a else ""]
            for i, (w, a) in enumerate(zip(grids["weights"], grids["activations"]))]
    return table(rows, ["layer", "weight grid", "activation quantizer"]) + "\ngrids: " + grids["summary"]


def target_option_help() -> dict:
    """Every usable target's options (name -> help), for ``hwq info --targets``."""
    from hwq.errors import TargetError
    from hwq.target.registry import available_targets, get_target

    out = {}
    for name in available_targets():
        try:
            out[name] = {o.name: o.help for o in get_target(name).options}
        except TargetError as exc:
            out[name] = {"error": exc.line()}
    return out


def describe_h5(path: Path) -> dict:
    from hwq.files.h5io import open_h5

    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with open_h5(path) as f:
            fmt = str(f.attrs.get("format", ""))
    except OSError:
        raise FileFormatError(f"{path}: not an HDF5 file, or a corrupt one") from None
    if fmt == hwqfile.FORMAT:
        out = hwqfile.file_info(path)
        out["exports"], refused = writable_exports(path, out["target"])
        if refused:
            out["exports_refused"] = refused
        return out
    if fmt == results.RUN_FORMAT:
        r = results.read_run(path)
        return {"kind": "run", **r["attrs"], "n_inputs": int(r["labels"].size),
                "accuracy": float(r["correct"].mean()) if r["labels"].size else None}
    if fmt == results.FORMAT:
        r = results.read_attack(path)
        return {"kind": "attack results", **r["attrs"], "n_inputs": int(r["labels"].size),
                "n_epsilons": int(r["epsilons"].size), "clean_accuracy": float(r["clean_correct"].mean())}
    if fmt.startswith("hwq-sweep"):
        from hwq.sweep.run import describe

        return describe(path)
    raise FileFormatError(f"{path}: not a file hwq wrote (format={fmt or 'none'})")


@app.command()
def compare(
    model: Path = typer.Argument(..., help="Compiled .hwq file."),
    data_spec: str = typer.Option(..., "--data", help=DATA_HELP),
    targets: str = typer.Option("sim,loihi", help="Two targets, comma-separated."),
    limit: int = LIMIT,
    as_json: bool = JSON,
):
    """How often two targets disagree on the same compiled network."""
    from hwq.quant.reference import quantize_input
    from hwq.target.compare import compare_programs

    names = [t.strip() for t in targets.split(",")]
    if len(names) != 2:
        raise UsageError("--targets needs exactly two names, e.g. sim,loihi")
    a, b = (hwqfile.load_program(model, t) for t in names)
    ds = data(data_spec, limit)
    out = compare_programs(a, b, quantize_input(a.net.input, ds.x_test.reshape(len(ds.x_test), -1)))
    out.update(targets=names, n_inputs=len(ds.y_test), fidelity=1.0 - out["decisions_differ_fraction"])
    if as_json:
        return emit_json(out)
    units = out.pop("score_units")
    for key, value in out.items():
        typer.echo(f"{key}: {value}" + (f" (score units {units})" if key == "scores_differ_fraction" else ""))
