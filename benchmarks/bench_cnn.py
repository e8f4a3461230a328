"""FGSM on a LeNet-5 CNN: sim against onnxruntime running hwq's exported integer graph.

The workload (issue 19): LeNet-5 on 1x28x28 images (conv 6 5x5 pad 2 -> relu -> max 2x2 ->
conv 16 5x5 -> relu -> max 2x2 -> dense 120 -> relu -> dense 84 -> relu -> dense 10), random
weights quantized post-training to 8-bit weights (per-channel for the convolutions), 8-bit
activations and 8-bit image codes (k/255); FGSM directions from the surrogate gradient, then
``--epsilons`` strengths (default 21) on ``--inputs`` images (default 10,000): 210,000 integer
forward passes per repeat, fed in the chunks ``hwq.attack`` uses.

* ``sim``: ``perturb_quantize`` into uint8 codes + sim ``forward`` + ``decide``;
* ``ort``: the same codes into the graph of ``hwq.onnx.exporter`` (Gather im2col, products
  proven exact on every CPU: docs/integer-semantics.md section 7), ``session.run`` + the codes;
* every repeat checks that both decide identically on every pass; the first chunk's scores
  must equal ``hwq.quant.reference``'s.

Also printed: int8 multiply-accumulates per second of sim against a nominal VNNI peak (threads x
clock x 64 u8 x s8 MACs per cycle, one 512-bit ``vpdpbusd`` a cycle: an assumption, stated), and
a CIFAR-sized VGG-style network (3x32x32: 32-32-pool-64-64-pool-128-pool-FC) on sim: passes per
second, and FGSM (3 strengths) on ``--cifar-inputs`` images (default 10,000) with the process's
peak resident memory (the issue's bound: under 2 GB).

``cnn_sim_vs_torch_int8`` needs PyTorch's quantized backend in this environment; hwq's test and
benchmark environment (.venv) keeps torch out, so the line then says ``n/a`` and why.

Medians over ``--repeats``. Last lines: ``cnn_sim_vs_onnxruntime=`` (goal >= 2) and
``cnn_sim_vs_torch_int8=`` (goal >= 1).

    python benchmarks/bench_cnn.py [--inputs 10000] [--epsilons 21] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numba
import numpy as np
import onnxruntime as ort

import hwq
from hwq import ir
from hwq.attack.base import CHUNK_ELEMENTS, perturb_quantize
from hwq.attack.gradients import SurrogateGradient
from hwq.ir.window import Window
from hwq.onnx.exporter import export_onnx
from hwq.quant import reference


def conv(rng, in_shape, out, k, pad):
    win = Window(in_shape, (k, k), (1, 1), (pad,) * 4, (1, 1), 1)
    fan_in = in_shape[0] * k * k
    return ir.Conv2d(rng.normal(0, np.sqrt(2 / fan_in), (out, in_shape[0], k, k)), rng.normal(0, 0.05, out), win)


def maxpool(shape):
    return ir.MaxPool2d(Window(shape, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), shape[0]))


def dense(rng, n_in, n_out):
    return ir.Affine(rng.normal(0, np.sqrt(2 / n_in), (n_out, n_in)), rng.normal(0, 0.05, n_out))


def chain(rng, in_shape, convs, fcs, n_out=10, act="relu") -> ir.Graph:
    """``convs``: (channels, kernel, pad) or "pool"; then dense layers ``fcs``, then ``n_out``;
    every hidden layer followed by ``act``."""
    nodes, shape = [], tuple(in_shape)
    for c in convs:
        if c == "pool":
            node = maxpool(shape)
            nodes.append(node)
        else:
            node = conv(rng, shape, *c)
            nodes += [node, ir.Activation(act)]
        shape = tuple(node.out_shape)
    nodes.append(ir.Flatten())
    n = int(np.prod(shape))
    for width in fcs:
        nodes += [dense(rng, n, width), ir.Activation(act)]
        n = width
    nodes.append(dense(rng, n, n_out))
    return ir.Graph(tuple(in_shape), tuple(nodes), ir.Output("softmax"))


def lenet5(rng, act="relu", fcs=(120, 84)) -> ir.Graph:
    return chain(rng, (1, 28, 28), [(6, 5, 2), "pool", (16, 5, 0), "pool"], list(fcs), act=act)


def vgg_cifar(rng) -> ir.Graph:
    return chain(rng, (3, 32, 32), [(32, 3, 1), (32, 3, 1), "pool", (64, 3, 1), (64, 3, 1), "pool", (128, 3, 1),
                                    "pool"], [])


def macs(net) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers)."""
    total = 0
    for layer in net.layers:
        if hasattr(layer, "weight"):
            positions = 1 if layer.window is None else layer.window.positions
            total += int(layer.weight.size) * positions
    return total


def images(rng, n, shape) -> np.ndarray:
    """Smooth random images in [0, 1] with 255 levels (blurred noise: neighbouring pixels agree)."""
    x = rng.uniform(0, 1, (n, *shape))
    x = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2) + np.roll(x, (1, 1), (-1, -2))) / 4
    return (np.rint(x * 255) / 255).reshape(n, -1)


def nominal_peak_macs(threads: int) -> tuple[float, str]:
    ghz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        ghz = max(mhz) / 1000 if mhz else 0.0
    except OSError:
        pass
    return threads * ghz * 1e9 * 64, f"{threads} threads x {ghz:.2f} GHz x 64 MACs/cycle"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--epsilons", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar-inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(args.seed)

    # first, so that the process's peak resident memory is the CIFAR attack's
    xc = images(rng, args.cifar_inputs, (3, 32, 32))
    cifar = hwq.quantize(vgg_cifar(rng), 8, calibration=xc[:200], bounds=(0.0, 1.0), per_channel=True)
    pc = hwq.compile(cifar, "sim")
    cq = reference.quantize_input(cifar.input, xc).astype(np.uint8)
    pc.forward(cq[:10])  # compiled kernels (Numba) before timing
    t0 = time.perf_counter()
    yc = pc.decide(pc.forward(cq))
    fwd_rate = len(xc) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    hwq.attack(pc, xc, yc, [0.0, 0.01, 0.03], bounds=(0.0, 1.0))
    attack_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cifar_line = (f"CIFAR-sized VGG (3x32x32, {macs(cifar):,} MACs a pass): {fwd_rate:,.0f} passes/s; FGSM on "
                  f"{len(xc)} images x 3 strengths {attack_s:.1f} s, peak resident {peak_mb:,.0f} MB (whole process)")
    del xc, cq, pc, cifar

    x = images(rng, args.inputs, (1, 28, 28))
    net = hwq.quantize(lenet5(rng), 8, calibration=x[:500], bounds=(0.0, 1.0), per_channel=True)
    program = hwq.compile(net, "sim")
    y = reference.predict(net, x[:2000])
    y = np.concatenate([y, rng.integers(0, 10, len(x) - len(y))])[: len(x)]
    source = SurrogateGradient(program)
    direction = np.concatenate([np.sign(source.value_and_grad(x[i:i + 500], y[i:i + 500])[1])
                                for i in range(0, len(x), 500)])
    eps = np.linspace(0.0, 0.2, args.epsilons)
    fmt = net.input
    n_in = net.n_features
    step = max(1, CHUNK_ELEMENTS // (len(eps) * n_in))
    chunks = [slice(i, min(i + step, len(x))) for i in range(0, len(x), step)]

    def codes(sl):
        out = np.empty((len(eps) * (sl.stop - sl.start), n_in), np.uint8)
        perturb_quantize(x[sl], direction[sl], eps, 0.0, 1.0, fmt.inv_scale, fmt.qmin, fmt.qmax, out)
        return out

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(export_onnx(net).SerializeToString(), options, providers=["CPUExecutionProvider"])
    first = codes(chunks[0])
    want = reference.forward(net, first[:200].astype(np.int64))
    if not (np.array_equal(program.forward(first[:200]), want)
            and np.array_equal(session.run(["scores"], {"x_q": first[:200]})[0], want)):
        raise SystemExit("MISMATCH: sim, onnxruntime and the reference give different scores")

    passes = len(x) * len(eps)
    times = {"sim": [], "ort": []}
    for _ in range(args.repeats):
        got = {}
        for engine in ("sim", "ort"):
            t0, decisions = time.perf_counter(), []
            for sl in chunks:
                c = codes(sl)
                if engine == "sim":
                    decisions.append(program.decide(program.forward(c)))
                else:
                    decisions.append(session.run(["decision"], {"x_q": c})[0])
            times[engine].append(time.perf_counter() - t0)
            got[engine] = np.concatenate(decisions)
        if not np.array_equal(got["sim"], got["ort"]):
            raise SystemExit("MISMATCH: sim and onnxruntime decide differently")
    sim_rate = passes / float(np.median(times["sim"]))
    ort_rate = passes / float(np.median(times["ort"]))
    print(f"LeNet-5 8-bit, {args.inputs} images x {len(eps)} strengths = {passes} passes, {args.threads} threads")
    print(f"products: {program.report['products']}")
    print(f"sim: {sim_rate:,.0f} passes/s   onnxruntime (hwq's export): {ort_rate:,.0f} passes/s "
          f"(medians of {args.repeats}; decisions identical every repeat)")
    per_pass = macs(net)
    peak, how = nominal_peak_macs(args.threads)
    achieved = sim_rate * per_pass
    share = f" = {achieved / peak:.1%} of a nominal VNNI peak ({how})" if peak else ""
    print(f"sim int8 MACs: {per_pass:,} per pass, {achieved / 1e9:.1f} G MAC/s{share}")

    print(cifar_line)
    print(f"cnn_sim_vs_onnxruntime={sim_rate / ort_rate:.2f}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("cnn_sim_vs_torch_int8=n/a (torch is not installed in this environment)")
    else:
        print("cnn_sim_vs_torch_int8=n/a (the torch int8 comparison is not written yet)")


if __name__ == "__main__":
    main()
