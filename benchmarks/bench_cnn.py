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

Also printed: int8 multiply-accumulates per second of sim (and of the fastest torch engine)
against a nominal VNNI peak: ``threads x clock x 64`` (one 512-bit ``vpdpbusd`` a cycle per core,
64 u8 x s8 MACs: an assumption, stated; the clock is /proc/cpuinfo's largest ``cpu MHz``); on a
CPU without AVX-512 VNNI it says so and adds its AVX2 bound, ``threads x clock x 32`` (one 256-bit
``vpmaddubsw`` of 32 MACs a cycle, the ``vpmaddwd``/``vpaddd`` that follow on other ports), and
a CIFAR-sized VGG-style network (3x32x32: 32-32-pool-64-64-pool-128-pool-FC) on sim: passes per
second, and FGSM (3 strengths) on ``--cifar-inputs`` images (default 10,000) with the peak resident
memory during the attack (``VmHWM`` reset before it; the issue's bound: under 2 GB) and the whole
process's.

``torch int8``: the same integer LeNet-5 in PyTorch's quantized backend (``quint8`` codes of
scale 1, ``qint8`` per-channel weights with the exact codes, ``conv2d_relu``/``linear_relu``,
``max_pool2d``; ``int8_torch_worker.py`` says how each integer step is expressed and where
PyTorch cannot express it: round half to even in float32 instead of hwq's round half up, the
output layer as a float32 product), in a worker process of a Python with torch
(``--torch-python``; default this Python if it has torch, else the checkout's ``.venv-torch``;
the mechanism of ``bench_attacks.py``), on every engine it offers (``--torch-engines``). Both
decide the same 210,000 stored code rows (``sim given codes``: sim timed on those rows, so both
sides read the same bytes); the agreement of decisions is reported, not required.
``cnn_sim_vs_torch_int8`` = sim passes/s / the fastest engine's that computes the same integer
network (its scores equal the reference's on the checked rows), both on the stored codes;
``cnn_sim_vs_torch_int8_fastest`` against the fastest engine whatever it computes.
Without a torch Python the line says ``n/a`` and why.

Medians over ``--repeats``. Last lines: ``cnn_sim_vs_onnxruntime=`` (goal >= 2) and
``cnn_sim_vs_torch_int8=`` (goal >= 1).

    python benchmarks/bench_cnn.py [--inputs 10000] [--epsilons 21] [--repeats 3] [--threads 2]
                                   [--torch-python PATH] [--torch-engines fbgemm,x86,onednn,qnnpack]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apgd_torch_client import Worker  # noqa: E402
from bench_attacks import torch_python  # noqa: E402


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


def cpu_facts() -> tuple[float, set[str]]:
    """The largest ``cpu MHz`` of /proc/cpuinfo in GHz (0 if unknown) and the CPU's flags."""
    mhz, flags = [], set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz.append(float(line.split(":")[1]))
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":")[1].split())
    except OSError:
        pass
    return (max(mhz) / 1000 if mhz else 0.0), flags


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux: ``5`` into /proc/self/clear_refs resets
    ``VmHWM``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak_rss_mb() is not None
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """``VmHWM`` of /proc/self/status in MB (the peak resident memory since the last reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def nominal_peak_macs(threads: int) -> tuple[float, str]:
    """``threads x clock x 64`` u8 x s8 MACs a second (one 512-bit ``vpdpbusd`` a cycle per core)."""
    ghz, flags = cpu_facts()
    how = f"{threads} threads x {ghz:.2f} GHz x 64 MACs/cycle"
    if "avx512_vnni" not in flags:
        how += (f"; this CPU has no AVX-512 VNNI ({'avx_vnni' if 'avx_vnni' in flags else 'AVX2 only'}): "
                f"its AVX2 bound {threads} x {ghz:.2f} GHz x 32 = {threads * ghz * 32:.0f} G MAC/s")
    return threads * ghz * 1e9 * 64, how


def torch_problem(net, folder: str) -> str:
    """The integer LeNet for ``int8_torch_worker.py``: per layer its kind, weight codes, bias,
    requantization and window (refused where the worker cannot express it)."""
    arrays = {"in_shape": np.array(net.input_shape)}
    for k, layer in enumerate(net.layers):
        win = layer.window
        if hasattr(layer, "op"):  # a pooling
            if layer.op != "max" or any(win.pads):
                raise SystemExit(f"torch int8: layer {k} ({layer.op} pooling) is not expressed")
            arrays.update({f"{k}_kind": "maxpool", f"{k}_kernel": np.array(win.kernel),
                           f"{k}_stride": np.array(win.stride)})
            continue
        last = k == len(net.layers) - 1
        if last != (layer.activation == "identity") or (not last and layer.activation != "relu") \
                or (not last and layer.act_bits != 8):
            raise SystemExit(f"torch int8: layer {k} ({layer.activation}, {layer.act_bits} bits) is not expressed")
        w = np.asarray(layer.weight)
        if win is not None:
            if win.groups != 1 or win.dilation != (1, 1):
                raise SystemExit(f"torch int8: layer {k} (groups or dilation) is not expressed")
            w = w.reshape(w.shape[0], win.in_shape[0], *win.kernel)
            arrays.update({f"{k}_stride": np.array(win.stride), f"{k}_pads": np.array(win.pads)})
        arrays.update({f"{k}_kind": "conv" if win is not None else "dense", f"{k}_weight": w,
                       f"{k}_bias": np.asarray(layer.bias)})
        if not last:
            arrays.update({f"{k}_multiplier": np.asarray(layer.requant.multiplier),
                           f"{k}_shift": np.asarray(layer.requant.shift)})
    path = os.path.join(folder, "lenet_int8.npz")
    np.savez(path, **arrays)
    return path


class Int8Worker(Worker):
    """``int8_torch_worker.py`` in a process of ``python``: ``apgd_torch_client.Worker``'s
    line protocol (``run(command)`` -> its JSON answer), another script."""

    def __init__(self, python, network: str, codes: str, threads: int):
        import json
        import subprocess

        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8_torch_worker.py")
        self.proc = subprocess.Popen([python, script, network, codes, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("torch int8: the worker stopped before it was ready")
        self.info = json.loads(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--epsilons", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar-inputs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-python", help="a Python with torch for the int8 baseline (default: "
                                               "this one if it has torch, else .venv-torch)")
    parser.add_argument("--torch-engines", default="fbgemm,x86,onednn,qnnpack",
                        help="PyTorch quantized engines to time (those the torch offers)")
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
    # in chunks of 500 images, as an attack feeds sim (one call on 10,000 images holds 1 GB of maps)
    yc = np.concatenate([pc.decide(pc.forward(cq[i:i + 500])) for i in range(0, len(cq), 500)])
    fwd_rate = len(xc) / (time.perf_counter() - t0)
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    hwq.attack(pc, xc, yc, [0.0, 0.01, 0.03], bounds=(0.0, 1.0))
    attack_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    attack_mb = peak_rss_mb() if reset else None
    cifar_line = (f"CIFAR-sized VGG (3x32x32, {macs(cifar):,} MACs a pass): {fwd_rate:,.0f} passes/s; FGSM on "
                  f"{len(xc)} images x 3 strengths {attack_s:.1f} s, peak resident "
                  + (f"{attack_mb:,.0f} MB during the attack (its inputs included), " if attack_mb else "")
                  + f"{peak_mb:,.0f} MB whole process (making the images included)")
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

    torch_line = torch_int8(args, net, program, chunks, codes, passes, per_pass, peak)
    print(cifar_line)
    print(f"cnn_sim_vs_onnxruntime={sim_rate / ort_rate:.2f}")
    print(torch_line)


def torch_int8(args, net, program, chunks, codes, passes, per_pass, peak) -> str:
    """sim and PyTorch's int8 engines on the same stored code rows; prints their rates and
    agreement, returns the ``cnn_sim_vs_torch_int8=`` line."""
    python = torch_python(args.torch_python)
    if python is None:
        return "cnn_sim_vs_torch_int8=n/a (no Python with torch: make .venv-torch or pass --torch-python)"
    with tempfile.TemporaryDirectory() as folder:
        stored = os.path.join(folder, "codes.npy")
        rows = np.lib.format.open_memmap(stored, "w+", np.uint8, (passes, net.n_features))
        at = 0
        for sl in chunks:
            c = codes(sl)
            rows[at:at + len(c)] = c
            at += len(c)
        rows.flush()
        del rows
        given = np.load(stored)
        step = len(codes(chunks[0]))
        worker = Int8Worker(python, torch_problem(net, folder), stored, args.threads)
        engines = [e for e in args.torch_engines.split(",") if e in worker.info["engines"]]
        if not engines:
            worker.close()
            return f"cnn_sim_vs_torch_int8=n/a (none of {args.torch_engines} in torch's {worker.info['engines']})"
        want = reference.forward(net, given[:200].astype(np.int64))
        times = {name: [] for name in ["sim", *engines]}
        agree, exact = {}, {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mine = np.concatenate([program.decide(program.forward(given[i:i + step]))
                                   for i in range(0, passes, step)])
            times["sim"].append(time.perf_counter() - t0)
            for engine in engines:
                out = os.path.join(folder, f"{engine}.npy")
                answer = worker.run(f"{engine} {step} {out}")
                times[engine].append(answer["wall"])
                theirs = np.load(out)
                agree[engine] = min(agree.get(engine, 1.0), float(np.mean(theirs == mine)))
                exact[engine] = float(np.mean(np.all(np.array(answer["first_scores"]) == want, axis=1)))
        worker.close()
    sim_rate = passes / float(np.median(times["sim"]))
    print(f"torch {worker.info['torch']} int8 ({worker.info['threads']} threads, {python}), the same "
          f"{passes} stored code rows, chunks of {step}; medians of {args.repeats}:")
    print(f"  sim given codes: {sim_rate:,.0f} passes/s")
    rates = {}
    for engine in engines:
        rates[engine] = passes / float(np.median(times[engine]))
        share = f", {rates[engine] * per_pass / peak:.1%} of the nominal VNNI peak" if peak else ""
        print(f"  torch {engine}: {rates[engine]:,.0f} passes/s{share}; decisions agree with sim on "
              f"{agree[engine]:.4%} of passes (worst repeat); first 200 rows' scores equal to the reference: "
              f"{exact[engine]:.1%}; sim / torch {engine} = {sim_rate / rates[engine]:.2f}")
    # "the same integer network where it can express it": engines whose scores equal the
    # reference on the checked rows; the fastest engine overall is printed beside it (on CPUs
    # without VNNI fbgemm, x86 and onednn saturate 16-bit partial sums: not the same network)
    fastest = max(rates, key=rates.get)
    print(f"cnn_sim_vs_torch_int8_fastest={sim_rate / rates[fastest]:.2f} ({fastest}, scores equal on "
          f"{exact[fastest]:.1%} of the checked rows)")
    same = {e: r for e, r in rates.items() if exact[e] == 1.0}
    if not same:
        return "cnn_sim_vs_torch_int8=n/a (no engine computed the same integer network on the checked rows)"
    best = max(same, key=same.get)
    print(f"cnn_sim_vs_torch_int8 against the fastest engine that computes the same network, {best}")
    return f"cnn_sim_vs_torch_int8={sim_rate / rates[best]:.2f}"


if __name__ == "__main__":
    main()
