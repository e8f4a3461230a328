"""hwq's integer LeNet-5 in PyTorch's quantized (int8) backend: the baseline of
``bench_cnn.py``'s ``cnn_sim_vs_torch_int8``, run by it as a worker process of a Python with
torch (``.venv-torch``); hwq itself is not needed here.

    python int8_torch_worker.py NETWORK.npz CODES.npy THREADS

``NETWORK.npz`` holds the integer network, layer ``k`` as ``k_kind`` (``conv``, ``dense``,
``maxpool``), its weight codes ``k_weight`` (``(O, C, kh, kw)`` or ``(O, I)``), ``k_bias``
(accumulator units), requantization ``k_multiplier``/``k_shift`` (hidden layers), window
``k_stride``/``k_pads``/``k_kernel``. ``CODES.npy`` holds the input codes (uint8, one sample a
row, ``(N, C*H*W)`` C-order) with ``in_shape``. The worker prints one JSON line ``ready``, then
for each line ``ENGINE CHUNK OUT.npy`` on stdin (``ENGINE``: a ``torch.backends.quantized``
engine; ``CHUNK``: rows per call) decides every row in chunks, writes the decisions (int64) to
``OUT.npy`` and prints its wall time and the first 200 rows' scores.

How the integer network is expressed (where PyTorch can express it):

* codes are ``quint8`` tensors of scale 1 and zero point 0 (the code is the stored byte), weights
  ``qint8`` per output channel with zero point 0 and the exact codes;
* a hidden layer's requantization ``floor((acc M + 2^(S-1)) / 2^S)`` (per channel, round half
  up) becomes ``round(acc * (1 * w_scale[o]) / 1)`` with ``w_scale[o] = M[o] / 2^S[o]``: PyTorch
  requantizes with one float32 multiplier per channel and rounds half to even, so a code can
  differ by one where ``acc M / 2^S`` lies at (or, through float32, within about 1e-7 of) a half;
  the bias is given in float as ``bias * w_scale[o]`` (the backend divides it back);
  ``conv2d_relu``/``linear_relu`` clamp to ``0..255`` as hwq's ReLU to 8-bit codes;
* padding reads the zero point, code 0, as hwq's; max pooling on codes is exact;
* the output layer (hwq: the int64 accumulator as the score) cannot be expressed: PyTorch's
  quantized linear requantizes its output to 8 bits. It runs as a float32 product over the
  dequantized codes, exact while every partial sum stays below 2^24 (checked here); the decision
  is the first maximal score (``argmax``), as hwq's;
* fbgemm/x86 (convolutions and dense layers) and onednn (dense layers) on a CPU without
  AVX-512 VNNI multiply with ``vpmaddubsw``, whose int16 pair sums saturate for 8-bit
  activations (255 * 127 * 2 > 32767): PyTorch's own recipe uses 7-bit activations there
  (``reduce_range``). hwq's 8-bit codes are kept as they are, so those engines compute another
  function there (measured on an AVX2 EPYC: about 1 % of LeNet's first-layer codes off, by up to
  34); qnnpack does not saturate (its codes differ from hwq's only at float32 rounding, one in
  about 10^6). The agreement is reported as measured.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import torch


def load_network(path):
    d = np.load(path)
    layers, k = [], 0
    while f"{k}_kind" in d:
        kind = str(d[f"{k}_kind"])
        layer = {"kind": kind}
        if kind == "maxpool":
            layer["kernel"] = tuple(int(v) for v in d[f"{k}_kernel"])
            layer["stride"] = tuple(int(v) for v in d[f"{k}_stride"])
        else:
            w = np.asarray(d[f"{k}_weight"], np.int64)
            bias = np.asarray(d[f"{k}_bias"], np.int64)
            last = f"{k}_multiplier" not in d
            if last:
                if int(np.abs(w).sum(axis=1).max()) * 255 + int(np.abs(bias).max()) >= 2**24:
                    raise SystemExit(f"layer {k}: float32 scores would not be exact (|acc| can reach 2^24)")
                layer["weight"] = torch.tensor(w.T, dtype=torch.float32)
                layer["bias"] = torch.tensor(bias, dtype=torch.float32)
            else:
                scale = np.asarray(d[f"{k}_multiplier"], np.float64) / 2.0 ** np.asarray(d[f"{k}_shift"])
                if np.any(scale <= 0):
                    raise SystemExit(f"layer {k}: a zero requantization multiplier (PyTorch needs scales > 0)")
                qw = torch._make_per_channel_quantized_tensor(
                    torch.tensor(w, dtype=torch.int8), torch.tensor(scale, dtype=torch.float64),
                    torch.zeros(len(scale), dtype=torch.int64), 0)
                fbias = torch.tensor(bias * scale, dtype=torch.float32)
                if kind == "conv":
                    stride = tuple(int(v) for v in d[f"{k}_stride"])
                    top, left, bottom, right = (int(v) for v in d[f"{k}_pads"])
                    if (top, left) != (bottom, right):
                        raise SystemExit(f"layer {k}: asymmetric padding (PyTorch's quantized conv pads evenly)")
                    layer["pack"] = lambda qw=qw, fbias=fbias, stride=stride, pad=(top, left): \
                        torch.ops.quantized.conv2d_prepack(qw, fbias, list(stride), list(pad), [1, 1], 1)
                else:
                    layer["pack"] = lambda qw=qw, fbias=fbias: torch.ops.quantized.linear_prepack(qw, fbias)
            layer["last"] = last
        layers.append(layer)
        k += 1
    return layers


def prepared(layers):
    """Each layer's packed weights for the current engine (packing is per engine)."""
    return [dict(layer, packed=layer["pack"]()) if "pack" in layer else layer for layer in layers]


def forward(layers, codes: torch.Tensor, in_shape) -> torch.Tensor:
    """Scores (float32) of uint8 code rows."""
    q = torch._make_per_tensor_quantized_tensor(codes.reshape(len(codes), *in_shape), 1.0, 0)
    for layer in layers:
        kind = layer["kind"]
        if kind == "maxpool":
            q = torch.nn.functional.max_pool2d(q, layer["kernel"], layer["stride"])
        elif layer["last"]:
            return torch.addmm(layer["bias"], q.dequantize().reshape(len(codes), -1), layer["weight"])
        elif kind == "conv":
            q = torch.ops.quantized.conv2d_relu(q, layer["packed"], 1.0, 0)
        else:
            q = torch.ops.quantized.linear_relu(q.reshape(len(codes), -1), layer["packed"], 1.0, 0)
    raise SystemExit("the network has no output layer")


def main():
    net_path, codes_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    layers = load_network(net_path)
    codes = np.load(codes_path, mmap_mode="r")
    in_shape = tuple(int(v) for v in np.load(net_path)["in_shape"])
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "engines": list(torch.backends.quantized.supported_engines)}), flush=True)
    for line in sys.stdin:
        engine, chunk, out = line.split()
        chunk = int(chunk)
        torch.backends.quantized.engine = engine
        net = prepared(layers)
        with torch.inference_mode():
            forward(net, torch.from_numpy(np.array(codes[:64])), in_shape)  # warm-up (packing, threads)
            decisions, first = [], None
            t0 = time.perf_counter()
            for i in range(0, len(codes), chunk):
                scores = forward(net, torch.from_numpy(np.array(codes[i:i + chunk])), in_shape)
                if first is None:
                    first = scores[:200].numpy().astype(np.int64).tolist()
                decisions.append(scores.argmax(1))
            wall = time.perf_counter() - t0
        np.save(out, torch.cat(decisions).numpy().astype(np.int64))
        print(json.dumps({"wall": wall, "engine": engine, "first_scores": first}), flush=True)


if __name__ == "__main__":
    main()
