"""A device server for your board: adapt ``MyBoard`` to your driver, run it next to the board.

hwq then crafts attacks from the bit-exact model and judges every point on the board:

    python examples/device_server.py model.hwq --listen 127.0.0.1:7000        # on the board's host
    hwq attack model.hwq --data digits --device tcp://127.0.0.1:7000 -o board.h5

Until you fill in the driver calls, ``MyBoard`` runs the compiled model itself (a stand-in).
``--self-test`` serves on a free port, attacks through it once and exits (what the tests run).
Protocol and session rules: docs/devices.md.
"""

from __future__ import annotations

import argparse
import threading

import numpy as np

import hwq
from hwq.devices import BoardDevice, DeviceProgram, Server, SocketDevice, model_hash


class MyBoard(BoardDevice):
    """Integer input codes in, integer scores out. Replace the three bodies with driver calls."""

    identity = "my-board rev A (stand-in: runs the compiled model)"

    def open(self):
        # self.board = mydriver.open("/dev/ttyUSB0")
        # self.board.load(self.program.artifacts)   # the mapping hwq compiled
        self.chip = self.program  # stand-in
        return self

    def infer(self, codes: np.ndarray) -> np.ndarray:
        # return self.board.run(codes.astype(np.int32))  # reset neuron state between samples
        return self.chip.forward(codes)

    def close(self) -> None:
        pass  # self.board.close()


def demo_model():
    data = hwq.load_dataset("digits").limit(200)
    from hwq.onnx.importer import graph_from_model
    from hwq.train import TrainConfig, mlp_to_onnx, train_mlp

    mlp = train_mlp(data.x_train, data.y_train, data.n_classes,
                    TrainConfig(activation="relu", bits=4, epochs=10, seed=0))
    graph = graph_from_model(mlp_to_onnx(mlp, n_in=data.x_train.shape[1], n_classes=data.n_classes))
    net = hwq.quantize(graph, 4, calibration=data.x_train, bounds=data.bounds)
    return hwq.compile(net, "sim"), data


def self_test() -> None:
    program, data = demo_model()
    server = Server(MyBoard(program), "127.0.0.1", 0, log=lambda line: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    device = DeviceProgram(SocketDevice(server.address, model_hash=model_hash(program)), program)
    with device:
        result = hwq.attack(device, data.x_test, data.y_test, [0.0, 0.05, 0.1], bounds=data.bounds)
    local = hwq.attack(program, data.x_test, data.y_test, [0.0, 0.05, 0.1], bounds=data.bounds)
    print(f"board {device.describe()}: accuracy {np.round(result.accuracy, 3).tolist()}, "
          f"same as the bit-exact model: {np.array_equal(result.predictions, local.predictions)}")
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="the compiled .hwq file loaded onto the board")
    ap.add_argument("--listen", default="127.0.0.1:7000")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test or not args.model:
        return self_test()
    from hwq.devices import serve
    from hwq.devices.wire import parse_address

    host, port = parse_address(args.listen)
    serve(MyBoard(hwq.load_program(args.model)), host, port)


if __name__ == "__main__":
    main()
