"""Hardware in the loop: judge FGSM on *your* device, with gradients from hwq's surrogate.

hwq's attack engine needs only an object with ``net``, ``target``, ``forward(x_q)``,
``trace(x_q)`` and ``decide(scores)``. Here ``Device`` stands in for a chip behind a driver:
``forward`` sends integer input codes and reads back integer scores. We wrap the bit-exact
simulator and count the round trips; swap ``Device.infer`` for your driver call. The
gradient still comes from the integer weights (``trace``), so every FGSM point is proposed
from the model and judged on the device.

    python examples/hardware_in_the_loop.py [--model MODEL.hwq --data digits]
"""

from __future__ import annotations

import argparse

import numpy as np

import hwq
from hwq.onnx.importer import graph_from_model
from hwq.train import TrainConfig, mlp_to_onnx, train_mlp


class Device:
    """A stand-in for real hardware: integer codes in, integer scores out."""

    def __init__(self, program):
        self._chip = program  # replace with your driver
        self.calls = 0

    def infer(self, codes: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self._chip.forward(np.asarray(codes, dtype=np.int32))


class DeviceProgram:
    """Adapts a device to hwq's Program protocol."""

    target = "my-device"

    def __init__(self, device: Device, reference_program):
        self.device, self.net = device, reference_program.net
        self._model = reference_program  # the surrogate's operating point
        self.artifacts, self.report = {}, {}

    def forward(self, x_q):
        return self.device.infer(x_q)

    def trace(self, x_q):
        return self._model.trace(x_q)

    def decide(self, scores):
        return self._model.decide(scores)


def build_program(model: str | None, data):
    if model:
        return hwq.load_program(model)
    mlp = train_mlp(data.x_train, data.y_train, data.n_classes,
                    TrainConfig(activation="relu", bits=4, epochs=20, seed=0))
    graph = graph_from_model(mlp_to_onnx(mlp, n_in=data.x_train.shape[1], n_classes=data.n_classes))
    net = hwq.quantize(graph, 4, calibration=data.x_train, bounds=data.bounds, scheme="uniform")
    return hwq.compile(net, "sim")


def main(model: str | None, data_spec: str, limit: int) -> dict:
    data = hwq.load_dataset(data_spec).limit(limit)
    reference_program = build_program(model, data)
    device = Device(reference_program)
    program = DeviceProgram(device, reference_program)
    eps = [0.0, 0.02, 0.05, 0.1, 0.2]
    on_device = hwq.attack(program, data.x_test, data.y_test, eps, bounds=data.bounds)
    in_sim = hwq.attack(reference_program, data.x_test, data.y_test, eps, bounds=data.bounds)
    agree = bool(np.array_equal(on_device.predictions, in_sim.predictions))
    print(f"device accuracy per eps: {np.round(on_device.accuracy, 3).tolist()}")
    print(f"device calls: {device.calls}; device and simulator agree on every point: {agree}")
    return {"agree": agree, "calls": device.calls}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a compiled .hwq file (default: train one)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    main(args.model, args.data, args.limit)
