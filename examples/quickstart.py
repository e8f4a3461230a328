"""Quickstart: train a 4-bit QAT MLP on the two spirals, compile it for the bit-exact
simulator and measure its accuracy under FGSM, all through the Python API.

    python examples/quickstart.py [--bits 4] [--activation relu] [--epochs 60]
"""

from __future__ import annotations

import argparse

import numpy as np

import hwq
from hwq.onnx.importer import graph_from_model
from hwq.train import TrainConfig, mlp_to_onnx, train_mlp


def main(bits: int, activation: str, epochs: int) -> dict:
    data = hwq.load_dataset("spiral", seed=0)
    config = TrainConfig(activation=activation, bits=bits, gain=10.0, epochs=epochs, seed=0)
    mlp = train_mlp(data.x_train, data.y_train, data.n_classes, config)
    graph = graph_from_model(mlp_to_onnx(mlp, n_in=2, n_classes=2))  # any ONNX file works too
    net = hwq.quantize(graph, bits, calibration=data.x_train, bounds=data.bounds,
                       scheme=config.scheme, act_bits=16)
    program = hwq.compile(net, target="sim")
    clean = hwq.evaluate(program, data.x_test, data.y_test)
    eps = np.round(np.arange(0, 0.51, 0.05), 3)
    result = hwq.attack(program, data.x_test, data.y_test, eps, bounds=data.bounds)
    print(f"{activation}, {bits}-bit weights: clean accuracy {clean.accuracy:.3f}")
    for e, a in zip(result.epsilons, result.accuracy):
        print(f"  eps {e:4.2f}  accuracy {a:.3f}")
    return {"clean": clean.accuracy, "accuracy": result.accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    main(args.bits, args.activation, args.epochs)
