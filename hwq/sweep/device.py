"""Sweeps judged on a device (``hwq sweep --device``): every cell's attack runs through the
wire protocol, gradients from the cell's bit-exact model, decisions from the device.

Two ways to name the device:

* ``tcp://HOST:PORT``: one device that serves one compiled model. Every cell must pass the
  golden-batch gate against it (docs/devices.md), so this suits grids of one network (a
  given model at one bit width, attacked with several attacks or strengths); a cell whose
  network the device does not serve stops the sweep with the per-input diff.
* ``exec:COMMAND``: a device started per cell, for boards that are flashed with each network.
  hwq writes the cell's compiled program to a temporary ``.hwq`` file and runs COMMAND with
  ``{model}`` replaced by its path (e.g. ``exec:hwq serve {model}`` or
  ``exec:python examples/device_server.py {model} --listen 127.0.0.1:0``). The command must
  print ``listening tcp://HOST:PORT`` as its first line on stdout (``hwq serve`` does); it is
  stopped when the cell is done.

Cells are journaled like any other, so a rerun after a device fault finishes only the
missing cells. Each cell records the device, its identity, the model hash and the share of
inputs per strength where the device's decision differs from the bit-exact model's.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hwq.errors import UsageError
from hwq.files.program import save_program


def check_device(device: str | None) -> str | None:
    if device is None:
        return None
    if device.startswith("tcp://"):
        return device
    if device.startswith("exec:") and "{model}" in device:
        return device
    raise UsageError(f"malformed --device '{device}'",
                     hint="use tcp://HOST:PORT or exec:COMMAND with {model} (e.g. exec:hwq serve {model})")


@contextlib.contextmanager
def device_address(device: str, program) -> Iterator[str]:
    """The address of the device that judges ``program``'s cell (started here for ``exec:``)."""
    from hwq.devices.launch import wait_listening

    if device.startswith("tcp://"):
        yield device
        return
    with tempfile.TemporaryDirectory(prefix="hwq-cell-") as tmp:
        model = Path(tmp) / "cell.hwq"
        save_program(model, program)
        argv = [part.replace("{model}", str(model)) for part in shlex.split(device.removeprefix("exec:"))]
        if argv and argv[0] == "hwq":  # the installed command, from this interpreter
            argv = [sys.executable, "-m", "hwq", *argv[1:]]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            raise UsageError(f"cannot start the device command {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            yield wait_listening(proc)  # within a start-up deadline (hwq/devices/launch.py)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def attack_on_device(device: str, program, ds, epsilons, method, gradient):
    """The cell's attack judged on the device: ``(AttackResult, device attributes)``."""
    from hwq import api
    from hwq.devices import SocketDevice, model_hash
    from hwq.devices.attack import attack_on_device as run_on_device

    expected = model_hash(program)
    with device_address(device, program) as address:
        client = SocketDevice(address, model_hash=expected)

        def attack(p, x, y, eps, **kw):
            return api.attack(p, x, y, eps, method=method, diagnostics=False, **kw)

        run = run_on_device(attack, program, client, ds.x_test, ds.y_test, epsilons, gradient=gradient,
                            bounds=ds.bounds)
        meta = {"device": address if device.startswith("tcp://") else device,
                "device_identity": client.identity, "model_hash": expected.hex()}
    return run.result, meta, run.disagreement
