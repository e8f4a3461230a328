"""Lava as a device: Lava runs in its own Python 3.10 environment, served over hwq's protocol.

lava-nc 0.10 needs Python 3.10 and numpy < 2, hwq runs on current Python. ``LavaDevice``
writes the mappings to a plain ``.npz`` (no pickle), starts ``python -m
hwq_targets.loihi.lava_device BUNDLE`` in the Lava environment (``$HWQ_LAVA_PYTHON``, else
the repository's ``.venv-lava``; ``./bootstrap.sh`` creates it), and talks to it through a
``SocketDevice`` on loopback. The child serves until its parent goes away (its stdin closes).
The device's scores are the mappings' scores side by side (one Lava run feeds them all).
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from hwq.devices.client import SocketDevice
from hwq.devices.errors import DeviceError
from hwq.devices.fingerprint import digest
from hwq.devices.launch import wait_listening
from hwq.errors import TargetError

from .artifacts import from_artifacts, to_artifacts
from .limits import LOIHI
from .mapping import Mapping

ENV = "HWQ_LAVA_PYTHON"
REPO = Path(__file__).resolve().parents[2]
SETUP = (f"run ./bootstrap.sh where Python 3.10 exists (it creates .venv-lava), or set {ENV} to a "
         "Python 3.10 with lava-nc==0.10.0 and hwq installed; or use backend=emulator")
START_TIMEOUT = 180.0  # seconds for the child to import Lava and listen
KEEP = 2  # live Lava devices kept for reuse


def lava_python() -> str:
    """The Lava environment's interpreter, or a one-line TargetError saying how to set it up."""
    path = os.environ.get(ENV) or str(REPO / ".venv-lava" / "bin" / "python")
    if not os.access(path, os.X_OK):
        raise TargetError(f"the lava backend needs a Python 3.10 environment with Lava, none found "
                          f"at {path}", hint=SETUP)
    return path


def bundle(mappings: list[Mapping]) -> dict:
    """The mappings as flat arrays and scalars (keys ``m<i>.<artifact>``)."""
    art = {"count": len(mappings)}
    for i, m in enumerate(mappings):
        art.update({f"m{i}.{k}": v for k, v in to_artifacts(m, LOIHI, "lava", flat=True).items()})
    return art


def read_bundle(path: str) -> tuple[list[Mapping], dict]:
    with np.load(path, allow_pickle=False) as f:
        art = {k: f[k].item() if f[k].ndim == 0 else f[k] for k in f.files}
    count = int(art["count"])
    mappings = []
    for i in range(count):
        p = f"m{i}."
        mappings.append(from_artifacts({k[len(p):]: v for k, v in art.items() if k.startswith(p)})[0])
    return mappings, art


def bundle_hash(art: dict) -> bytes:
    return digest({"lava-bundle": art})


def why_not_started(python: str, message: str) -> str:
    """What is missing in the Lava Python, in one line (from the child's last words)."""
    missing = re.search(r"No module named '([\w.]+)'", message)
    if missing:
        needs = {"lava": "lava-nc==0.10.0", "hwq_targets": "hwq", "hwq": "hwq", "numpy": "numpy<2"}
        top = missing.group(1).split(".")[0]
        return (f"{python} cannot run the Lava device: it has no module '{missing.group(1)}' "
                f"(install {needs.get(top, missing.group(1))} there)")
    return f"the Lava device did not start with {python}: {message}"


class LavaDevice(SocketDevice):
    """A Lava device server for ``mappings``, started in the Lava environment."""

    def __init__(self, mappings: list[Mapping], *, timeout: float = 300.0, per_row: float = 2.0):
        self.sock = None  # stop() closes it, also when the child fails before we connect
        self.python = python = lava_python()
        art = bundle(mappings)
        self.outputs = [m.layers[-1].n_out for m in mappings]
        fd, self.bundle_path = tempfile.mkstemp(prefix="hwq-lava-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in art.items()})
        self.proc = subprocess.Popen([python, "-m", "hwq_targets.loihi.lava_device", self.bundle_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        try:
            address = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        super().__init__(address, model_hash=bundle_hash(art), timeout=timeout, per_row=per_row,
                         reconnects=0)

    def _wait_ready(self) -> str:
        """The child's first stdout line is ``listening tcp://127.0.0.1:PORT``."""
        try:
            return wait_listening(self.proc, START_TIMEOUT, "the Lava device")
        except DeviceError as exc:
            raise TargetError(why_not_started(self.python, exc.message), hint=SETUP) from None

    def infer(self, codes: np.ndarray) -> np.ndarray:
        if self.proc.poll() is not None:
            raise TargetError(f"the Lava device exited (code {self.proc.returncode})")
        return super().infer(codes)

    def split(self, scores: np.ndarray) -> list[np.ndarray]:
        return np.split(scores, np.cumsum(self.outputs)[:-1], axis=1)

    def stop(self) -> None:
        self.close()
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the child exits when its stdin closes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        Path(self.bundle_path).unlink(missing_ok=True)


_devices: OrderedDict[bytes, LavaDevice] = OrderedDict()


def device_for(mappings: list[Mapping]) -> LavaDevice:
    """A running Lava device for these mappings (the last ``KEEP`` are kept for reuse)."""
    key = bundle_hash(bundle(mappings))
    if key in _devices and _devices[key].proc.poll() is None:
        _devices.move_to_end(key)
        return _devices[key]
    while len(_devices) >= KEEP:
        _devices.popitem(last=False)[1].stop()
    _devices[key] = LavaDevice(mappings)
    return _devices[key]


@atexit.register
def stop_all() -> None:
    while _devices:
        _devices.popitem()[1].stop()


def run_on_device(mappings: list[Mapping], x_q: np.ndarray) -> list[np.ndarray]:
    device = device_for(list(mappings))
    return device.split(device.infer(np.asarray(x_q)))


def exit_with_parent() -> None:
    """Exit when the parent closes our stdin. Reads the raw descriptor: a thread blocked in
    ``sys.stdin.read`` holds its lock, and Lava's forked processes would deadlock closing it."""
    while os.read(0, 4096):
        pass
    os._exit(0)


def main(path: str) -> None:
    """The child: serve the bundle's mappings with Lava in this process until stdin closes."""
    from hwq.devices.server import Server

    from .lavanet import lava, run_lava_here

    lava()  # fail early, with the reason, if Lava is missing here
    mappings, art = read_bundle(path)

    def infer(codes: np.ndarray) -> np.ndarray:
        return np.concatenate(run_lava_here(mappings, codes), axis=1)

    import lava as lava_pkg

    identity = (f"lava-nc {getattr(lava_pkg, '__version__', '0.10')} CPU fixed-point (Loihi2SimCfg "
                f"fixed_pt), Python {sys.version.split()[0]}, numpy {np.__version__}")
    server = Server(infer, "127.0.0.1", 0, model_hash=bundle_hash(art), identity=identity,
                    log=lambda line: print(f"lava device: {line}", file=sys.stderr, flush=True))
    threading.Thread(target=exit_with_parent, daemon=True).start()
    print(f"listening {server.address}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main(sys.argv[1])
