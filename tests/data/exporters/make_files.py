"""Make the small ONNX files in this folder with the real exporters (run by hand, not by tests).

    python tests/data/exporters/make_files.py [--only NAME,...]

Needs a separate environment with the heavy exporters (the test suite never imports them):
torch (CPU is enough), brevitas 0.13.4, onnxoptimizer (Brevitas's QCDQ export calls it),
qonnx, scikit-learn; tensorflow-cpu + tf2onnx for the Keras 3 file. Every model is an MLP on
scikit-learn's 8x8 digits (pixels / 16, as ``hwq.load_dataset("digits")``), trained for a few
epochs so that test inputs exercise real decisions. The seeds are fixed; the files are committed
and the tests only read them (``tests/test_import_exporters.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VERSIONS: dict[str, str] = {}


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def train(model, x, y, epochs=40, lr=0.01, seed=0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return acc


# ------------------------------------------------------------------ Brevitas (QCDQ and QONNX)


def brevitas_mlp(w_bits, a_bits, in_bits=8, unsigned_input=False, hidden=32, seed=0,
                 float_bias=False, per_channel=False):
    """QuantIdentity (input) -> QuantLinear -> QuantReLU -> QuantLinear: the FINN-style MLP.
    Biases are quantized to the accumulator (``Int32Bias``: scale = input scale x weight
    scale), as integer hardware needs; ``float_bias=True`` keeps Brevitas's default float bias."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int32Bias, Uint8ActPerTensorFloat

    torch.manual_seed(seed)
    in_quant = Uint8ActPerTensorFloat if unsigned_input else Int8ActPerTensorFloat
    bias = {} if float_bias else {"bias_quant": Int32Bias}
    first = {"weight_quant": Int8WeightPerChannelFloat} if per_channel else {}
    return torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=in_quant, bit_width=in_bits, return_quant_tensor=True),
        qnn.QuantLinear(64, hidden, bias=True, weight_bit_width=w_bits, **bias, **first),
        qnn.QuantReLU(bit_width=a_bits, return_quant_tensor=True),
        qnn.QuantLinear(hidden, 10, bias=True, weight_bit_width=w_bits, **bias),
    )


def brevitas_weights_only(w_bits=2, hidden=32, seed=0):
    """Weight-only QAT: quantized weights, float input and float ReLU."""
    import torch
    from brevitas import nn as qnn

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        qnn.QuantLinear(64, hidden, bias=True, weight_bit_width=w_bits), torch.nn.ReLU(),
        qnn.QuantLinear(hidden, 10, bias=True, weight_bit_width=w_bits),
    )


def brevitas_binary(hidden=32, seed=0):
    """A binarized MLP: 1-bit (bipolar) weights and +-1 hidden activations (QONNX only:
    Brevitas's QCDQ export refuses 1 bit)."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant import Int32Bias, SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        qnn.QuantIdentity(bit_width=8, return_quant_tensor=True),
        qnn.QuantLinear(64, hidden, bias=True, weight_quant=SignedBinaryWeightPerTensorConst,
                        bias_quant=Int32Bias),
        qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True),
        qnn.QuantLinear(hidden, 10, bias=True, weight_bit_width=4, bias_quant=Int32Bias),
    )


def single_file(path):
    """Inline external data (the dynamo exporter writes a .data file beside the model)."""
    import onnx

    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=False)
    Path(str(path) + ".data").unlink(missing_ok=True)


def export_brevitas(model, kind, path, dynamo=False):
    """QCDQ or QONNX; ``dynamo=False`` is Brevitas's TorchScript path (integer weight
    initializers, onnxoptimizer passes), ``dynamo=True`` the torch.export one (weights
    quantized in the graph: float initializer -> QuantizeLinear -> Clip -> DequantizeLinear)."""
    import torch
    from brevitas.export import export_onnx_qcdq, export_qonnx

    example = torch.zeros(1, 64)
    if kind == "qcdq":
        export_onnx_qcdq(model, example, export_path=str(path), opset_version=17, dynamo=dynamo)
    else:
        export_qonnx(model, example, export_path=str(path), dynamo=dynamo)
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.util.cleanup import cleanup_model

        cleanup_model(ModelWrapper(str(path))).save(str(path))
    single_file(path)


def make_brevitas(x, y):
    import brevitas

    VERSIONS["brevitas"] = brevitas.__version__
    specs = {
        "brevitas_w4a4": dict(w_bits=4, a_bits=4),
        "brevitas_w2a2_u8in": dict(w_bits=2, a_bits=2, unsigned_input=True),
        "brevitas_w3a4_perchannel": dict(w_bits=3, a_bits=4, per_channel=True),
        "brevitas_w2a2_floatbias": dict(w_bits=2, a_bits=2, unsigned_input=True, float_bias=True),
    }
    accs = {}
    for name, kw in specs.items():
        model = brevitas_mlp(**kw)
        accs[name] = train(model, x, y, epochs=15, lr=0.01)
        for kind in ("qcdq", "qonnx"):
            export_brevitas(model, kind, HERE / f"{name}_{kind}.onnx")
        if name == "brevitas_w2a2_floatbias":  # dynamo QCDQ refuses quantized biases
            export_brevitas(model, "qcdq", HERE / f"{name}_qcdq_dynamo.onnx", dynamo=True)
    model = brevitas_weights_only()
    accs["brevitas_w2_weights_only"] = train(model, x, y, epochs=15, lr=0.01)
    for kind in ("qcdq", "qonnx"):
        export_brevitas(model, kind, HERE / f"brevitas_w2_weights_only_{kind}.onnx")
    model = brevitas_binary()
    accs["brevitas_binary"] = train(model, x, y, epochs=15, lr=0.01)
    export_brevitas(model, "qonnx", HERE / "brevitas_binary_qonnx.onnx")
    return accs


# ------------------------------------------------------------------ PyTorch (classic and dynamo)



def torch_models():
    import torch

    class StepDiv(torch.nn.Module):  # (sign(x) + 1) / 2: PyTorch writes Div(2)
        def forward(self, z):
            return (torch.sign(z) + 1) / 2

    class Sign(torch.nn.Module):
        def forward(self, z):
            return torch.sign(z)

    def mlp(act):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), act, torch.nn.Linear(32, 10))

    return {"torch_step_div": mlp(StepDiv()), "torch_sign": mlp(Sign()),
            "torch_relu": mlp(torch.nn.ReLU())}


def make_torch(x, y):
    import torch

    VERSIONS["torch"] = torch.__version__
    accs = {}
    for name, model in torch_models().items():
        if name == "torch_relu":
            accs[name] = train(model, x, y, epochs=10)
        else:  # a step/sign net has no gradient: train with ReLU, then swap the activation
            act = model[1]
            model[1] = torch.nn.Tanh()
            accs[name + " (tanh)"] = train(model, x, y, epochs=10)
            model[1] = act
        example = torch.zeros(1, 64)
        torch.onnx.export(model, (example,), str(HERE / f"{name}_classic.onnx"), dynamo=False,
                          input_names=["x"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "scores": {0: "N"}})
        if name != "torch_step_div":
            torch.onnx.export(model, (example,), str(HERE / f"{name}_dynamo.onnx"), dynamo=True,
                              input_names=["x"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10))
    torch.onnx.export(conv.eval(), (torch.zeros(1, 1, 8, 8),), str(HERE / "torch_conv_classic.onnx"),
                      dynamo=False, input_names=["x"], output_names=["scores"], opset_version=17)
    return accs


# ------------------------------------------------------------------ Keras 3 (tf2onnx)


def make_keras(x, y):
    import keras
    import tensorflow as tf
    import tf2onnx

    VERSIONS["keras"] = keras.__version__
    VERSIONS["tf2onnx"] = tf2onnx.__version__
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=20, verbose=0)
    spec = (tf.TensorSpec((None, 64), tf.float32, name="x"),)
    fn = tf.function(lambda v: model(v))  # from_keras fails on Keras 3: use from_function
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17,
                                  output_path=str(HERE / "keras3_relu_tf2onnx.onnx"))
    return {"keras3_relu": float(model.evaluate(x, y, verbose=0)[1])}


MAKERS = {"brevitas": make_brevitas, "torch": make_torch, "keras": make_keras}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(MAKERS))
    args = ap.parse_args()
    x, y = digits()
    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in args.only.split(","):
        accs = MAKERS[name](x, y)
        manifest.setdefault("train_accuracy", {}).update(accs)
    manifest.setdefault("versions", {}).update(VERSIONS)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
