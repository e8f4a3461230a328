"""``hwq serve``: any target as a device, over the wire protocol (docs/devices.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from hwq.cli.app import app
from hwq.cli.common import OPTION, TARGET, program_for


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Compiled .hwq file."),
    target: str = TARGET,
    option: list[str] = OPTION,
    listen: str = typer.Option("127.0.0.1:0", help="HOST:PORT to listen on (port 0: a free one). "
                               "Loopback by default; another address serves anyone who can reach it."),
    limit_mb: int = typer.Option(512, "--limit-mb", help="Largest frame payload accepted, in MiB."),
    identity: str = typer.Option(None, help="What the device reports as its identity."),
):
    """Serve a compiled model as a device, one client at a time, until interrupted."""
    from hwq.devices import serve as serve_device
    from hwq.devices.fingerprint import short
    from hwq.devices.server import stderr_log
    from hwq.devices.wire import parse_address

    host, port = parse_address(listen)
    program = program_for(model, target, option)

    def ready(server):
        stderr_log(f"serving {model} ({program.target}, model {short(server.hash)}) on {server.address}")
        typer.echo(f"listening {server.address}")  # first stdout line, for scripts

    serve_device(program, host, port, ready=ready, limit=limit_mb * 2**20,
                 identity=identity or f"hwq serve {model.name} ({program.target})")


def journal_for(output: Path | None) -> Path | None:
    return None if output is None else output.with_name(output.name + ".parts")


def attack_on(device: str, program, ds, epsilons, method, gradient, output: Path | None, progress):
    """``hwq attack --device``: the attack judged on the device, journaled beside ``output``.
    Returns the result and the results file's device attributes."""
    from hwq import api
    from hwq.devices import SocketDevice, model_hash
    from hwq.devices.attack import attack_on_device

    expected = model_hash(program)
    client = SocketDevice(device, model_hash=expected)

    def attack(p, x, y, eps, **kw):
        return api.attack(p, x, y, eps, method=method, diagnostics=False, **kw)

    key = {"model": expected.hex(), "data": ds.fingerprint(), "attack": getattr(method, "label", method.name),
           "params": repr(getattr(method, "params", lambda: {})()), "gradient": getattr(gradient, "name", "none")}
    run = attack_on_device(attack, program, client, ds.x_test, ds.y_test, epsilons, gradient=gradient,
                           bounds=ds.bounds, journal=journal_for(output), key=key, progress=progress)
    if run.resumed:
        typer.echo(f"resumed: {run.resumed} finished batches taken from {journal_for(output)}", err=True)
    meta = {"device": client.address, "device_identity": client.identity, "model_hash": expected.hex(),
            "device_disagreement": [float(v) for v in run.disagreement]}
    return run.result, meta


def remove_journal(output: Path | None) -> None:
    from hwq.devices.attack import Journal

    path = journal_for(output)
    if path is not None:
        Journal(path, {}).remove() if path.exists() else None
