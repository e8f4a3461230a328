"""Bring your own model: a scikit-learn MLP exported with skl2onnx, quantized post-training
to 1..8 bits, compiled for the simulator and attacked. The exporter's post-processing
(ArgMax, ZipMap) is dropped with a note; the probabilities path is kept.

    python examples/import_sklearn.py        (needs: pip install skl2onnx)
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

import hwq


def main() -> dict:
    data = hwq.load_dataset("digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
        clf.fit(data.x_train, data.y_train)
    path = Path(tempfile.mkdtemp()) / "digits_mlp.onnx"
    path.write_bytes(to_onnx(clf, data.x_train[:1], target_opset=17).SerializeToString())
    graph = hwq.load_onnx(path)
    print("\n".join(f"note: {n}" for n in graph.notes))
    print(f"float accuracy (scikit-learn): {clf.score(data.x_test, data.y_test):.3f}")
    out = {}
    for bits in (1, 2, 4, 8):
        net = hwq.quantize(graph, bits, calibration=data.x_train, bounds=data.bounds)
        program = hwq.compile(net, "sim")
        res = hwq.attack(program, data.x_test, data.y_test, [0.0, 0.05, 0.1], bounds=data.bounds)
        out[bits] = res.accuracy
        print(f"{bits}-bit PTQ: accuracy at eps 0 / 0.05 / 0.1 = {np.round(res.accuracy, 3).tolist()}")
    return out


if __name__ == "__main__":
    main()
