"""Train quantization-aware LeNet-style CNNs with Brevitas on Fashion-MNIST and export them as
ONNX files hwq reads with their grids kept (QCDQ for 2..8 weight bits, QONNX for 1 bit).

hwq's own trainer is the paper's MLP recipe; CNNs come from the frameworks people train in.
Set-up (one line; PyTorch CPU + Brevitas in their own environment, hwq stays in `.venv`):

    python3.11 -m venv .venv-torch && .venv-torch/bin/pip install "torch==2.13.0+cpu" brevitas onnx onnxoptimizer \
        onnxscript qonnx

("+cpu": the CPU build, from the PyTorch CPU index or a local wheel folder; a plain ``torch``
from PyPI pulls several GB of CUDA libraries.)

Then (Fashion-MNIST from Debian's `dataset-fashion-mnist`, or any folder of the four IDX files):

    .venv-torch/bin/python examples/brevitas_cnn.py --data /usr/share/datasets/fashion-mnist \
        --bits 1,2,4,8 --seeds 0,1,2 --epochs 2 -o models/
    .venv/bin/hwq sweep --data fashion-mnist:/usr/share/datasets/fashion-mnist \
        --model models/lenet-w2-s0.onnx --model models/lenet-w4-s0.onnx ... -o cnn.h5

The network (LeNet-5 shaped, 1x28x28): QuantIdentity (8-bit input grid, k/255) -> QuantConv2d 6
5x5 pad 2 -> QuantReLU -> MaxPool 2 -> QuantConv2d 16 5x5 -> QuantReLU -> MaxPool 2 -> flatten ->
QuantLinear 120 -> QuantReLU -> QuantLinear 84 -> QuantReLU -> QuantLinear 10. Weights are
per-output-channel (Brevitas' default for ``Int8WeightPerChannelFloat``-style quantizers), narrow,
signed, ``--bits`` wide; activations 8-bit unsigned. Each file's name records its weight bits and
seed; a JSON file beside it records its test accuracy (float QAT model, i.e. what PyTorch sees).
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(folder: Path, stem: str) -> Path:
    for cand in sorted(folder.glob(stem + "*")):
        return cand
    raise SystemExit(f"brevitas_cnn: error: no {stem}* file in {folder}")


def load(folder: Path):
    x_tr = read_idx(find(folder, "train-images")).astype(np.float32) / 255.0
    y_tr = read_idx(find(folder, "train-labels")).astype(np.int64)
    x_te = read_idx(find(folder, "t10k-images")).astype(np.float32) / 255.0
    y_te = read_idx(find(folder, "t10k-labels")).astype(np.int64)
    return x_tr[:, None], y_tr, x_te[:, None], y_te


def float_lenet():
    """The same LeNet in plain PyTorch (no quantizers): hwq quantizes it post-training."""
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lenet(bits: int):
    import brevitas.nn as qnn
    import torch.nn as nn
    from brevitas.quant import Int8WeightPerChannelFloat, SignedBinaryWeightPerTensorConst, Uint8ActPerTensorFloat

    class Weights(Int8WeightPerChannelFloat):
        bit_width = bits
        narrow_range = True

    weight_quant = SignedBinaryWeightPerTensorConst if bits == 1 else Weights

    class Input(Uint8ActPerTensorFloat):
        max_val = 1.0  # x in [0, 1] on the k/255 grid

    def conv(cin, cout, k, pad):
        return qnn.QuantConv2d(cin, cout, k, padding=pad, weight_quant=weight_quant, bias=True)

    def relu():
        return qnn.QuantReLU(bit_width=8, return_quant_tensor=False)

    def fc(cin, cout):
        return qnn.QuantLinear(cin, cout, bias=True, weight_quant=weight_quant)

    return nn.Sequential(qnn.QuantIdentity(act_quant=Input, return_quant_tensor=False),
                         conv(1, 6, 5, 2), relu(), nn.MaxPool2d(2),
                         conv(6, 16, 5, 0), relu(), nn.MaxPool2d(2), nn.Flatten(),
                         fc(16 * 5 * 5, 120), relu(), fc(120, 84), relu(), fc(84, 10))


def train(model, data, epochs: int, seed: int, batch: int = 128, lr: float = 2e-3):
    import torch

    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x_te[i:i + 1000])).argmax(1) for i in range(0, len(x_te), 1000)])
    return float((pred.numpy() == y_te).mean())


def export(model, bits: int, path: Path) -> None:
    import torch

    example = torch.zeros(1, 1, 28, 28)
    if bits == 0:  # the float model: PyTorch's classic exporter
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["scores"],
                          dynamic_axes={"x": {0: "N"}}, opset_version=13)
    elif bits == 1:  # QCDQ holds 2..8 bits; 1-bit weights go out as QONNX BipolarQuant
        from brevitas.export import export_qonnx
        export_qonnx(model, example, export_path=str(path), dynamo=False)
    else:
        from brevitas.export import export_onnx_qcdq
        export_onnx_qcdq(model, example, export_path=str(path), opset_version=13, dynamo=False)
    import onnx

    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 9)  # onnxruntime 1.23 refuses IR 14
    onnx.save(m, str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--bits", default="1,2,4,8", help="weight bit widths, comma separated; 'float' trains the "
                                                       "same LeNet without quantizers (for post-training quantization)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-rows", type=int, default=60000, help="use the first N training images")
    ap.add_argument("-o", "--out", type=Path, default=Path("models"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_tr, y_tr, x_te, y_te = load(args.data)
    data = (x_tr[:args.train_rows], y_tr[:args.train_rows], x_te, y_te)
    args.out.mkdir(parents=True, exist_ok=True)
    for bits in [0 if b == "float" else int(b) for b in args.bits.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            model = lenet(bits) if bits else float_lenet()
            print(f"lenet, {f'{bits}-bit' if bits else 'float'} weights, seed {seed}", flush=True)
            acc = train(model, data, args.epochs, seed)
            path = args.out / (f"lenet-w{bits}-s{seed}.onnx" if bits else f"lenet-float-s{seed}.onnx")
            export(model, bits, path)
            path.with_suffix(".json").write_text(json.dumps({"bits": bits or "float", "seed": seed,
                                                             "epochs": args.epochs,
                                                             "test_accuracy_torch": acc}) + "\n")
            print(f"  test accuracy {acc:.4f} -> {path}", flush=True)


if __name__ == "__main__":
    main()
