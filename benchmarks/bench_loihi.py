"""Samples per second of the loihi target: Lava's CPU fixed-point processes vs the emulator.

The 784-100-10 MLP (random weights, 4-bit narrow weights, 8-bit inputs and activations), once
with a step and once with a ReLU hidden layer, on random images in [0, 1]:

* ``lava``: ``run_lava`` (build, compile, run, read the Monitor) on ``--lava-small`` and
  ``--lava-samples`` inputs presented back to back; its rate is the marginal one,
  ``(large - small) / (t_large - t_small)``, so Lava's fixed start-up cost is left out (the
  table also shows ``large / t_large``, start-up included);
* ``emulator``: ``program.forward`` on ``--samples`` inputs, after one warm-up call that
  compiles the Numba kernels, in two code containers: uint8 (what ``hwq.attack`` makes for
  input formats of 8 bits or fewer) and float32 (what it made before).

Both must give identical scores on the inputs they share (checked every repeat), and the two
emulator runs identical scores on all inputs. Medians over ``--repeats``. The last line is
``loihi_emulator_vs_lava=<ratio>``: the smallest, over both activations and both containers,
of median emulator rate / median Lava rate. ``emulator paths`` shows each layer's product
(``vnni``: the exact int8 product shared with the sim target, on CPUs with AVX-512 VNNI;
``avx2``: the exact int16 product, where no VNNI product runs). The emulator also runs with VNNI
forced off (``use_vnni=False``: the products a CPU without AVX-512 VNNI plans, AVX2 where the CPU
has it) on the uint8 codes in the same repeats; the line after is
``loihi_emulator_vs_lava_no_vnni=<ratio>``, the smallest over both activations.

The CNN workload (issue 20): a step LeNet on 1x28x28 (conv 6 5x5 pad 2 -> step -> max 2x2 -> conv 16
5x5 -> step -> max 2x2 -> dense 120 -> step -> dense 10; 4-bit weights), on Lava (``Sparse``
connections, ``--cnn-lava-samples`` inputs, marginal rate as above) and on the emulator
(``program.forward``: the direct convolutions, in int16 lanes where every sum is below 2^15,
float32 elsewhere, each fused with its pooling, where the CPU has AVX2 and FMA; convolutions over
gathered patches otherwise; ``--cnn-samples`` inputs);
identical scores checked every repeat; its line is ``loihi_cnn_emulator_vs_lava=``, printed
before the two MLP lines.

    python benchmarks/bench_loihi.py [--samples 50000] [--lava-samples 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from hwq_targets.loihi.emulator import Emulator
from hwq_targets.loihi.lavanet import run_lava

import hwq
from hwq import ir
from hwq.quant.reference import quantize_input

N_IN, HIDDEN, N_OUT = 784, 100, 10


def build_network(rng: np.random.Generator, x: np.ndarray, act: str):
    w1, b1 = rng.normal(0, 1 / np.sqrt(N_IN), (HIDDEN, N_IN)), rng.normal(0, 0.1, HIDDEN)
    w2, b2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (N_OUT, HIDDEN)), rng.normal(0, 0.1, N_OUT)
    nodes = (ir.Affine(w1, b1), ir.Activation(act), ir.Affine(w2, b2))
    graph = ir.Graph((N_IN,), nodes, ir.Output("softmax"))
    return hwq.quantize(graph, 4, calibration=x[:1000], bounds=(0.0, 1.0), act_bits=8,
                        input_bits=8)


def build_cnn(rng: np.random.Generator, x: np.ndarray):
    """The step LeNet of ``bench_cnn.py`` (one dense hidden layer of 120), 4-bit weights."""
    from bench_cnn import lenet5

    graph = lenet5(rng, act="step", fcs=(120,))
    return hwq.quantize(graph, 4, calibration=x[:500], bounds=(0.0, 1.0), act_bits=8, input_bits=8)


def measure_cnn(args, rng) -> dict:
    x = rng.uniform(0, 1, (args.cnn_samples, 784))
    net = build_cnn(rng, x)
    program = hwq.compile(net, target="loihi")
    xq8 = quantize_input(net.input, x).astype(np.uint8)
    program.forward(xq8[:50])
    run_lava([program.mapping], xq8[:2])
    lava_rates, emu_rates = [], []
    for _ in range(args.repeats):
        t_small, _ = time_lava(program, xq8, args.cnn_lava_small)
        t_large, lava_scores = time_lava(program, xq8, args.cnn_lava_samples)
        t_emu, emu_scores = time_emulator(program, xq8)
        if not np.array_equal(lava_scores, emu_scores[:args.cnn_lava_samples]):
            raise SystemExit("CNN: Lava and the emulator differ")
        lava_rates.append((args.cnn_lava_samples - args.cnn_lava_small) / max(t_large - t_small, 1e-9))
        emu_rates.append(args.cnn_samples / t_emu)
    return {"lava": float(np.median(lava_rates)), "emu": float(np.median(emu_rates)),
            "paths": program.emulator.report}


def time_lava(program, xq, n: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    scores = run_lava([program.mapping], xq[:n])[0]
    return time.perf_counter() - t0, scores


def time_emulator(program, xq) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    scores = program.forward(xq)
    return time.perf_counter() - t0, scores


def measure(act: str, args, rng) -> dict:
    x = rng.uniform(0, 1, (args.samples, N_IN))
    net = build_network(rng, x, act)
    program = hwq.compile(net, target="loihi")
    xq = quantize_input(net.input, x).astype(np.float32)
    xq8 = xq.astype(np.uint8)
    program.forward(xq[:100])  # compile the Numba kernels
    program.forward(xq8[:100])
    no_vnni = Emulator(program.mapping, use_vnni=False)
    no_vnni.run(xq8[:100])
    run_lava([program.mapping], xq[:2])  # start the Lava device once, outside the timings
    lava_rates, lava_totals, emu_rates, emu32_rates, nv_rates = [], [], [], [], []
    for _ in range(args.repeats):
        t_small, _ = time_lava(program, xq, args.lava_small)
        t_large, lava_scores = time_lava(program, xq, args.lava_samples)
        t_emu, emu_scores = time_emulator(program, xq8)
        t_emu32, emu32_scores = time_emulator(program, xq)
        t0 = time.perf_counter()
        nv_scores = no_vnni.run(xq8)
        nv_rates.append(args.samples / (time.perf_counter() - t0))
        if not np.array_equal(nv_scores, emu_scores):
            raise SystemExit(f"{act}: the emulator differs with VNNI forced off")
        if not np.array_equal(lava_scores, emu_scores[:args.lava_samples]):
            raise SystemExit(f"{act}: Lava and the emulator differ")
        if not np.array_equal(emu_scores, emu32_scores):
            raise SystemExit(f"{act}: the emulator differs between uint8 and float32 codes")
        lava_rates.append((args.lava_samples - args.lava_small) / max(t_large - t_small, 1e-9))
        lava_totals.append(args.lava_samples / t_large)
        emu_rates.append(args.samples / t_emu)
        emu32_rates.append(args.samples / t_emu32)
    sim = hwq.compile(net, target="sim")
    agree = np.mean(sim.decide(sim.forward(xq)) == program.decide(emu_scores))
    return {"act": act, "lava": float(np.median(lava_rates)), "emu": float(np.median(emu_rates)),
            "emu32": float(np.median(emu32_rates)), "lava_total": float(np.median(lava_totals)),
            "paths": program.emulator.report, "no_vnni": float(np.median(nv_rates)),
            "no_vnni_paths": no_vnni.report,
            "shifts": [lm.shift for lm in program.mapping.layers], "sim_agree": float(agree)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--lava-samples", type=int, default=400)
    parser.add_argument("--lava-small", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-samples", type=int, default=5000)
    parser.add_argument("--cnn-lava-samples", type=int, default=40)
    parser.add_argument("--cnn-lava-small", type=int, default=10)
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN workload")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"784-{HIDDEN}-{N_OUT}, 4-bit weights, medians of {args.repeats}")
    print(f"{'hidden':8s} {'lava samples/s':>15s} {'(with start-up)':>16s} "
          f"{'emulator u8 /s':>15s} {'ratio':>7s} {'emulator f32 /s':>16s} {'ratio':>7s} "
          f"{'emulator paths':>18s} {'shifts':>8s} {'agrees with sim':>16s}")
    ratios, nv_ratios = [], []
    for act in ("step", "relu"):
        r = measure(act, args, rng)
        ratio8, ratio32 = r["emu"] / r["lava"], r["emu32"] / r["lava"]
        ratios += [ratio8, ratio32]
        nv_ratios.append(r["no_vnni"] / r["lava"])
        print(f"{act:8s} {r['lava']:15.1f} {r['lava_total']:16.1f} {r['emu']:15.0f} {ratio8:7.0f} "
              f"{r['emu32']:16.0f} {ratio32:7.0f} {','.join(r['paths']):>18s} "
              f"{str(r['shifts']):>8s} {r['sim_agree']:16.4f}")
        print(f"{'':8s} VNNI forced off: emulator u8 {r['no_vnni']:.0f}/s, ratio {nv_ratios[-1]:.0f}, "
              f"paths {','.join(r['no_vnni_paths'])}")
    print(f"identical scores on the {args.lava_samples} shared inputs: yes")
    if not args.no_cnn:
        c = measure_cnn(args, rng)
        print(f"step LeNet 1x28x28: lava {c['lava']:.1f} samples/s, emulator {c['emu']:.0f} samples/s "
              f"(paths {','.join(c['paths'])}); identical scores on {args.cnn_lava_samples} shared inputs")
        print(f"loihi_cnn_emulator_vs_lava={c['emu'] / c['lava']:.0f}")
    print(f"loihi_emulator_vs_lava={min(ratios):.0f}")
    print(f"loihi_emulator_vs_lava_no_vnni={min(nv_ratios):.0f}")


if __name__ == "__main__":
    main()
