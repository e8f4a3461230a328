"""Make the small ONNX files of clipped activations (ReLU6, Hardtanh) with the real PyTorch
exporter (run by hand, not by tests).

    .venv-torch/bin/python tests/data/exporters/make_clip_files.py

Needs torch (CPU is enough) and scikit-learn. As ``make_files.py``: MLPs on scikit-learn's 8x8
digits (pixels / 16, as ``hwq.load_dataset("digits")``), trained for a few epochs with fixed
seeds. ``nn.ReLU6`` exports as ``Clip(x, 0, 6)`` and ``nn.Hardtanh`` as ``Clip(x, -1, 1)``: with
the bounds as inputs at opset 11+ (classic and dynamo exporters) and as ``min``/``max``
attributes at opset 10. The files are committed and the tests only read them
(``tests/test_clip_activation.py``); ``manifest_clip.json`` records the versions and accuracies.
"""

from __future__ import annotations

import json

import numpy as np
from make_files import HERE, single_file, train

ROOT = HERE.parents[2]


def digits():
    """``make_files.digits`` (pixels / 16); without scikit-learn in this environment, its
    ``digits.csv.gz`` read from the project's ``.venv`` (the same 1797 rows)."""
    try:
        from make_files import digits as from_sklearn

        return from_sklearn()
    except ModuleNotFoundError:
        path = next(ROOT.glob(".venv/lib/python3*/site-packages/sklearn/datasets/data/digits.csv.gz"))
        data = np.loadtxt(path, delimiter=",")
        return (data[:, :-1] / 16.0).astype(np.float32), data[:, -1].astype(np.int64)


def mlp(act, hidden=32, seed=0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), act, torch.nn.Linear(hidden, 10))


def main() -> None:
    import torch

    x, y = digits()
    models = {"torch_relu6": mlp(torch.nn.ReLU6()), "torch_hardtanh": mlp(torch.nn.Hardtanh())}
    accs = {}
    example = torch.zeros(1, 64)
    for name, model in models.items():
        accs[name] = train(model, x, y, epochs=10)
        torch.onnx.export(model, (example,), str(HERE / f"{name}_classic.onnx"), dynamo=False,
                          input_names=["x"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}})
        torch.onnx.export(model, (example,), str(HERE / f"{name}_opset10.onnx"), dynamo=False,
                          input_names=["x"], output_names=["scores"], opset_version=10,
                          dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}})
        path = HERE / f"{name}_dynamo.onnx"
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["x"],
                          output_names=["scores"], dynamic_shapes=({0: torch.export.Dim("N")},),
                          external_data=False)
        single_file(path)
    manifest = {"train_accuracy": accs, "versions": {"torch": torch.__version__}}
    (HERE / "manifest_clip.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
