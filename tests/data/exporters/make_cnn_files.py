"""Make the small convolutional ONNX files in this folder with the real exporters (run by hand,
not by tests; the tests only read the committed files: ``tests/test_import_cnn.py``).

    .venv-torch/bin/python tests/data/exporters/make_cnn_files.py --only torch,brevitas
    <venv with tensorflow-cpu + tf2onnx>/bin/python tests/data/exporters/make_cnn_files.py --only keras

torch 2.13 CPU for PyTorch's classic and ``dynamo=True`` exporters; brevitas 0.13.4, qonnx and
onnxoptimizer (in the torch environment) for QCDQ and QONNX; tensorflow-cpu 2.21 + tf2onnx 1.17
(a separate environment) for Keras 3. The networks are tiny (1x8x8 inputs, a few hundred
weights) with random weights and random BatchNorm statistics: the tests compare hwq's float
evaluator with onnxruntime (or qonnx) on random inputs, so no training is needed. Seeds are fixed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS: dict[str, str] = {}


def single_file(path):
    """Inline external data (the dynamo exporter writes a .data file beside the model)."""
    import onnx

    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=False)
    Path(str(path) + ".data").unlink(missing_ok=True)


def randomize_bn(model, seed):
    """Random running statistics and affine parameters (one gamma negative), so that folding
    BatchNormalization is really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight[0] = -m.weight[0]
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


# ------------------------------------------------------------------ PyTorch (classic and dynamo)


def torch_models():
    import torch
    from torch import nn

    torch.manual_seed(0)
    bn = nn.Sequential(  # BatchNorm, padding, groups, max and average pooling
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10))
    torch.manual_seed(1)
    glob = nn.Sequential(  # a Pad op, stride, MaxPool before its ReLU, dilation, global average pooling
        nn.ZeroPad2d(1), nn.Conv2d(1, 4, 3, stride=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 10))
    torch.manual_seed(2)
    gmax = nn.Sequential(  # 'same' padding, sigmoid on maps, global max pooling
        nn.Conv2d(1, 5, 3, padding="same"), nn.Sigmoid(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(5, 10))
    return {"torch_cnn_bn": randomize_bn(bn, 0), "torch_cnn_global": glob.eval(), "torch_cnn_gmax": gmax.eval()}


def make_torch():
    import torch

    VERSIONS["torch"] = torch.__version__
    example = torch.zeros(1, 1, 8, 8)
    for name, model in torch_models().items():
        torch.onnx.export(model, (example,), str(HERE / f"{name}_classic.onnx"), dynamo=False,
                          input_names=["x"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}})
        torch.onnx.export(model, (example,), str(HERE / f"{name}_dynamo.onnx"), dynamo=True,
                          input_names=["x"], output_names=["scores"],
                          dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False)
        single_file(HERE / f"{name}_dynamo.onnx")
    # the dynamo exporter's optimizer folds BatchNormalization into the Conv; unoptimized it stays
    model = torch_models()["torch_cnn_bn"]
    torch.onnx.export(model, (example,), str(HERE / "torch_cnn_bn_dynamo_unoptimized.onnx"), dynamo=True,
                      input_names=["x"], output_names=["scores"], optimize=False,
                      dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False)
    single_file(HERE / "torch_cnn_bn_dynamo_unoptimized.onnx")


# ------------------------------------------------------------------ Brevitas (QCDQ and QONNX)


def brevitas_cnn(seed=0):
    """QuantIdentity -> QuantConv2d (4-bit per-channel weights) -> QuantReLU -> MaxPool ->
    QuantConv2d -> QuantReLU -> TruncAvgPool2d (QuantAvgPool2d; ``TruncTo8bit``: sum, then a
    truncating shift; the default ``RoundTo8bit`` rounds instead) ->
    Flatten -> QuantLinear."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, TruncTo8bit

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        qnn.QuantIdentity(bit_width=8, return_quant_tensor=True),
        qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=4, weight_quant=Int8WeightPerChannelFloat,
                        return_quant_tensor=True),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        torch.nn.MaxPool2d(2),
        qnn.QuantConv2d(4, 8, 3, padding=1, weight_bit_width=4, return_quant_tensor=True),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        qnn.TruncAvgPool2d(2, stride=2, bit_width=5, trunc_quant=TruncTo8bit, return_quant_tensor=True),
        torch.nn.Flatten(),
        qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4),
    )
    model.train()
    with torch.no_grad():  # calibrate the activation scales on a few random images
        for _ in range(8):
            model(torch.rand(16, 1, 8, 8))
    return model.eval()


def make_brevitas():
    import brevitas
    import torch
    from brevitas.export import export_onnx_qcdq, export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    VERSIONS["brevitas"] = brevitas.__version__
    model = brevitas_cnn()
    example = torch.zeros(1, 1, 8, 8)
    path = HERE / "brevitas_cnn_qcdq.onnx"
    export_onnx_qcdq(model, example, export_path=str(path), opset_version=17)
    single_file(path)
    path = HERE / "brevitas_cnn_qonnx.onnx"
    export_qonnx(model, example, export_path=str(path))
    cleanup_model(ModelWrapper(str(path))).save(str(path))
    single_file(path)


# ------------------------------------------------------------------ Keras 3 (tf2onnx)


def make_keras():
    import keras
    import tensorflow as tf
    import tf2onnx

    VERSIONS["keras"] = keras.__version__
    VERSIONS["tf2onnx"] = tf2onnx.__version__
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(6, 3, strides=2, padding="valid", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="x"),)
    fn = tf.function(lambda v: model(v))  # from_keras fails on Keras 3: use from_function
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17,
                                  output_path=str(HERE / "keras3_cnn_tf2onnx.onnx"))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([  # three channels: the input transpose is not a no-op
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(4, 3, padding="valid", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(5),
    ])
    spec = (tf.TensorSpec((None, 6, 6, 3), tf.float32, name="x"),)
    fn = tf.function(lambda v: model(v))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17,
                                  output_path=str(HERE / "keras3_cnn_rgb_tf2onnx.onnx"))


MAKERS = {"torch": make_torch, "brevitas": make_brevitas, "keras": make_keras}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(MAKERS))
    args = ap.parse_args()
    for name in args.only.split(","):
        MAKERS[name]()
    path = HERE / "manifest_cnn.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("versions", {}).update(VERSIONS)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
