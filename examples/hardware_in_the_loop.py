"""Hardware in the loop from Python: attack a device, judge every point on what it returns.

The device here is a real server process (``hwq serve``, the stand-in for a board; see
``examples/device_server.py`` to put your driver behind the same protocol). The script talks
to it over the wire protocol (``hwq.devices.SocketDevice``), behind the golden-batch gate
(``DeviceProgram``). A device cannot trace its pre-activations, so the gradient source is built
explicitly from the bit-exact model of the same compiled network: every FGSM point is proposed
from the model's integer weights and judged on the device.

    python examples/hardware_in_the_loop.py [--model MODEL.hwq --data digits]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import hwq
from hwq.attack.gradients import SurrogateGradient
from hwq.devices import DeviceProgram, SocketDevice, model_hash
from hwq.onnx.importer import graph_from_model
from hwq.train import TrainConfig, mlp_to_onnx, train_mlp


def build_model(folder: Path, data) -> Path:
    """Train and compile a small 4-bit ReLU MLP (or bring your own .hwq with --model)."""
    mlp = train_mlp(data.x_train, data.y_train, data.n_classes,
                    TrainConfig(activation="relu", bits=4, epochs=20, seed=0))
    graph = graph_from_model(mlp_to_onnx(mlp, n_in=data.x_train.shape[1], n_classes=data.n_classes))
    net = hwq.quantize(graph, 4, calibration=data.x_train, bounds=data.bounds, scheme="uniform")
    path = folder / "model.hwq"
    hwq.save_program(path, hwq.compile(net, "sim"))
    return path


def start_device(model: Path) -> tuple[subprocess.Popen, str]:
    """``hwq serve`` in its own process on a free loopback port; returns it and its address."""
    proc = subprocess.Popen([sys.executable, "-m", "hwq", "serve", str(model), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()  # "listening tcp://127.0.0.1:PORT"
    if not line.startswith("listening "):
        proc.kill()
        raise SystemExit(f"the device server did not start: {line!r}")
    return proc, line.split()[1]


def main(model: str | None, data_spec: str, limit: int) -> dict:
    data = hwq.load_dataset(data_spec).limit(limit)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if model else build_model(Path(tmp), data)
        reference = hwq.load_program(path)  # the bit-exact model of what the device runs
        server, address = start_device(path)
        try:
            eps = [0.0, 0.02, 0.05, 0.1, 0.2]
            gradient = SurrogateGradient(reference)  # explicit: the device cannot trace
            with DeviceProgram(SocketDevice(address, model_hash=model_hash(reference)), reference) as device:
                on_device = hwq.attack(device, data.x_test, data.y_test, eps, gradient=gradient,
                                       bounds=data.bounds)
                batches = device.session.batches
            in_model = hwq.attack(reference, data.x_test, data.y_test, eps, gradient=gradient,
                                  bounds=data.bounds)
        finally:
            server.terminate()
            server.wait(timeout=10)
    agree = bool(np.array_equal(on_device.predictions, in_model.predictions))
    print(f"device {address}: accuracy per eps {np.round(on_device.accuracy, 3).tolist()}")
    print(f"batches sent: {batches}; device and bit-exact model agree on every point: {agree}")
    return {"agree": agree, "batches": batches}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a compiled .hwq file (default: train one)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    main(args.model, args.data, args.limit)
