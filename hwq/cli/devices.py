"""``hwq serve``: any target as a device, over the wire protocol (docs/devices.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from hwq.cli.app import app
from hwq.cli.common import OPTION, TARGET, program_for
from hwq.errors import UsageError


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


OPEN_JOURNALS: dict = {}  # journal path -> its Journal, locked until remove_journal(output)


def gradient_key(gradient) -> str:
    """What the gradient source is, for the journal's key: its name, and for ``model:FILE`` the
    file's digest (another file under the same name gives other gradients)."""
    import hashlib

    name = getattr(gradient, "name", "none")
    if name.startswith("model:"):
        path = Path(name.partition(":")[2])
        name += "#" + (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "?")
    return name


def disagreement_line(address: str, disagreement, epsilons, limit: float) -> tuple[str, bool]:
    """The summary line of the device's disagreement with the bit-exact model, and whether it is
    above ``limit`` (a share of inputs at some strength)."""
    import numpy as np

    worst = int(np.argmax(disagreement)) if len(disagreement) else 0
    top = float(disagreement[worst]) if len(disagreement) else 0.0
    text = (f"device {address}: disagrees with the bit-exact model on {top:.2%} of inputs at most "
            f"(eps {float(epsilons[worst]):g})" if top > 0 else
            f"device {address}: agrees with the bit-exact model on every input and strength")
    return text, top > limit


def attack_on(device: str, program, ds, epsilons, method, gradient, output: Path | None, progress,
              max_disagreement: float = 0.0):
    """``hwq attack --device``: the attack judged on the device, journaled beside ``output``
    (``hwq.api.run_attack``'s ``runner``). Returns the result and the results file's device
    attributes. A device whose decisions differ from the bit-exact model's on more than
    ``max_disagreement`` of the inputs at some strength stops the run before anything is
    written (the journal keeps the finished batches, so the same command with a higher
    ``--max-disagreement`` writes them without running them again); below it, the disagreement
    is printed and recorded."""
    from hwq import api
    from hwq.devices import SocketDevice, model_hash
    from hwq.devices.attack import attack_on_device
    from hwq.devices.errors import DeviceMismatch

    if not 0.0 <= max_disagreement <= 1.0:
        raise UsageError(f"--max-disagreement must be a share of inputs in [0, 1], got {max_disagreement:g}")
    if output is not None:  # before the device runs: a sweep or another file under -o is refused now
        from hwq.files import results

        results.check_replaceable(output, results.FORMAT, results.READABLE)
    expected = model_hash(program)
    client = SocketDevice(device, model_hash=expected)

    def attack(p, x, y, eps, **kw):
        return api.attack(p, x, y, eps, method=method, diagnostics=False, **kw)

    key = {"model": expected.hex(), "data": ds.fingerprint(), "attack": getattr(method, "label", method.name),
           "params": repr(getattr(method, "params", lambda: {})()), "gradient": gradient_key(gradient),
           "bounds": repr(ds.bounds)}
    run = attack_on_device(attack, program, client, ds.x_test, ds.y_test, epsilons, gradient=gradient,
                           bounds=ds.bounds, journal=journal_for(output), key=key, progress=progress,
                           output=output)
    if run.journal is not None:
        OPEN_JOURNALS[run.journal.path] = run.journal
    if run.resumed:
        typer.echo(f"resumed: {run.resumed} finished batches taken from {journal_for(output)}", err=True)
    text, above = disagreement_line(client.address, run.disagreement, epsilons, max_disagreement)
    if above:
        if run.journal is not None:
            run.journal.close()  # keep the parts: a rerun with a higher limit writes them
        raise DeviceMismatch(f"{text}, above --max-disagreement {max_disagreement:g}; nothing written",
                             hint="the device is wrong off the golden inputs; pass --max-disagreement 1 to keep "
                                  "its results anyway" + (f" (the finished batches stay in {journal_for(output)})"
                                                          if output is not None else ""))
    typer.echo(text, err=True)
    disagreement = [float(v) for v in run.disagreement]
    result = run.result
    result.diagnostics["device"] = {"address": client.address, "identity": client.identity,
                                    "disagreement": disagreement, "max_disagreement": max_disagreement}
    if max(disagreement, default=0.0) > 0:
        result.diagnostics.setdefault("flags", []).append("device_disagreement")
    meta = {"device": client.address, "device_identity": client.identity, "model_hash": expected.hex(),
            "device_disagreement": disagreement}
    return result, meta


def remove_journal(output: Path | None) -> None:
    """After the results file is written: delete the run's journal (hwq's files only) and
    release its lock; files hwq did not write are kept and named."""
    path = journal_for(output)
    jr = OPEN_JOURNALS.pop(path, None) if path is not None else None
    if jr is not None:
        left = jr.remove()
        if left:
            typer.echo(f"warning: {path} kept: it holds files hwq did not write ({', '.join(left[:3])}"
                       f"{', ...' if len(left) > 3 else ''})", err=True)
