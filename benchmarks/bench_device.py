"""Forward passes per second through a loopback device serving ``sim`` vs in-process ``sim``.

The attack workload: a 784-100-10 ReLU MLP (4-bit weights, 8-bit input codes), FGSM over
``--eps`` strengths, so each evaluation is one batch of ``K x step`` uint8 code rows, with
``step = min(2048, 2^24 // (K * 784))`` inputs as ``hwq.attack`` chunks them. The device is a
``hwq.devices.Server`` in a separate process on 127.0.0.1, reached with ``SocketDevice``;
both paths must give identical scores (checked every repeat). Medians over ``--repeats``.
Last line: ``device_vs_inprocess=<device rate / in-process rate>`` (goal >= 0.5).

    python benchmarks/bench_device.py [--eps 21] [--batches 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hwq
from hwq.devices import SocketDevice, model_hash
from hwq.ir import graph as ir
from hwq.quant.reference import quantize_input

N_IN, HIDDEN, N_OUT = 784, 100, 10
SERVER = """
import sys, hwq
from hwq.devices import Server
server = Server(hwq.load_program(sys.argv[1]), log=lambda line: None)
print(f"listening {server.address}", flush=True)
server.serve_forever()
"""


def build(rng):
    w1, b1 = rng.normal(0, 1 / np.sqrt(N_IN), (HIDDEN, N_IN)), rng.normal(0, 0.1, HIDDEN)
    w2, b2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (N_OUT, HIDDEN)), rng.normal(0, 0.1, N_OUT)
    graph = ir.Graph((N_IN,), (ir.Affine(w1, b1), ir.Activation("relu"), ir.Affine(w2, b2)),
                     ir.Output("softmax"))
    x = rng.uniform(0, 1, (1000, N_IN))
    net = hwq.quantize(graph, 4, calibration=x, bounds=(0.0, 1.0), act_bits=8, input_bits=8)
    return hwq.compile(net, "sim")


def timed(fn, batches):
    t0 = time.perf_counter()
    out = [fn(b) for b in batches]
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=int, default=21, help="strengths per attack batch")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    program = build(rng)
    step = min(2048, 2**24 // (args.eps * N_IN))
    rows = args.eps * step
    batches = [quantize_input(program.net.input, rng.uniform(0, 1, (rows, N_IN))).astype(np.uint8)
               for _ in range(args.batches)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.hwq"
        hwq.save_program(path, program)
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            address = proc.stdout.readline().split()[1]
            with SocketDevice(address, model_hash=model_hash(program)) as device:
                device.infer(batches[0][:100])  # warm up both sides (Numba kernels)
                program.forward(batches[0][:100])
                local_rates, device_rates = [], []
                for _ in range(args.repeats):
                    t_local, local = timed(program.forward, batches)
                    t_device, remote = timed(device.infer, batches)
                    if not all(np.array_equal(a, b) for a, b in zip(local, remote)):
                        raise SystemExit("device and in-process scores differ")
                    local_rates.append(rows * args.batches / t_local)
                    device_rates.append(rows * args.batches / t_device)
        finally:
            proc.kill()
            proc.wait()
    local, device = float(np.median(local_rates)), float(np.median(device_rates))
    mb = rows * N_IN / 2**20
    print(f"workload: {N_IN}-{HIDDEN}-{N_OUT} relu, uint8 codes, {args.eps} strengths x {step} inputs "
          f"= {rows} rows ({mb:.1f} MiB) per request, {args.batches} requests, {args.repeats} repeats")
    print(f"in-process sim: {local:12.0f} forward passes/s (median)")
    print(f"loopback device: {device:12.0f} forward passes/s (median), scores identical")
    print(f"device_vs_inprocess={device / local:.2f}")


if __name__ == "__main__":
    main()
