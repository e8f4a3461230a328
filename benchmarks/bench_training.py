"""Time one paper cell: QAT training of a 784-100-10 MLP and its FGSM sweep.

    python benchmarks/bench_training.py [--activation relu] [--bits 4] [--epochs 3]
                                        [--repeats 3] [--synthetic] [--threads N]

Data: Fashion-MNIST (/usr/share/datasets/fashion-mnist, 60k train -> 54k after the 10 %
validation split; 10k test) if installed, else synthetic data of the same size. Training is
reported as samples per second (54k x epochs / time; validation passes included) next to a
plain numpy float loop with the same architecture, batch size and Adam, measured in the same
run under the same BLAS thread count. The attack times FGSM on the 10k test inputs at 101
strengths (0 to 0.5 step 0.005), judged on the integer model (sim target). Numbers are
medians over ``--repeats``. The last line is ``training_vs_numpy=<ratio>`` (hwq / numpy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import hwq
from hwq.errors import DataError
from hwq.onnx.importer import graph_from_model
from hwq.train import TrainConfig, mlp_to_onnx, train_mlp

BATCH, HIDDEN, LR = 64, 100, 1e-3


def load(synthetic: bool):
    if not synthetic:
        try:
            ds = hwq.load_dataset("fashion-mnist")
            return "fashion-mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test
        except DataError:  # not installed
            pass
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (70_000, 784)).astype(np.float32)
    y = rng.integers(0, 10, 70_000)
    return "synthetic", x[:60_000], y[:60_000], x[60_000:], y[60_000:]


def numpy_epoch(x, y, params, adam, rng, step):
    """One epoch of a plain float32 MLP (ReLU, softmax cross-entropy, Adam), as simply as it
    can be written in numpy (no validation pass). Returns the Adam step count."""
    w1, b1, w2, b2 = params
    order = rng.permutation(len(x))
    for start in range(0, len(x), BATCH):
        idx = order[start:start + BATCH]
        xb, yb = x[idx], y[idx]
        z = xb @ w1.T + b1
        h = np.maximum(z, 0)
        o = h @ w2.T + b2
        p = np.exp(o - o.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1
        do = p / len(yb)
        dz = (do @ w2) * (z > 0)
        grads = (dz.T @ xb, dz.sum(axis=0), do.T @ h, do.sum(axis=0))
        step += 1
        for param, g, m, v in zip(params, grads, adam[0], adam[1]):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            m_hat = m / (1 - 0.9**step)
            v_hat = v / (1 - 0.999**step)
            param -= LR * m_hat / (np.sqrt(v_hat) + 1e-8)
    return step


def time_numpy(x, y, epochs: int) -> float:
    rng = np.random.default_rng(0)
    n_in = x.shape[1]
    params = [rng.uniform(-a, a, s).astype(np.float32) for a, s in
              ((1 / np.sqrt(n_in), (HIDDEN, n_in)), (1 / np.sqrt(n_in), (HIDDEN,)),
               (0.1, (10, HIDDEN)), (0.1, (10,)))]
    adam = ([np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params])
    x_train, y_train = x[: int(0.9 * len(x))], y[: int(0.9 * len(x))]
    t0, step = time.perf_counter(), 0
    for _ in range(epochs):
        step = numpy_epoch(x_train, y_train, params, adam, rng, step)
    return len(x_train) * epochs / (time.perf_counter() - t0)


def time_hwq(x, y, activation: str, bits: int, epochs: int, seed: int):
    config = TrainConfig(activation=activation, bits=bits, epochs=epochs, patience=epochs,
                         seed=seed)
    t0 = time.perf_counter()
    mlp = train_mlp(x, y, 10, config)
    rate = int(round(0.9 * len(x))) * len(mlp.history["loss"]) / (time.perf_counter() - t0)
    return rate, mlp


def time_attack(mlp, x_train, x_test, y_test, bits: int) -> tuple[float, float]:
    graph = graph_from_model(mlp_to_onnx(mlp, n_in=784, n_classes=10))
    net = hwq.quantize(graph, bits, calibration=x_train[:5000], bounds=(0.0, 1.0),
                       scheme="uniform", act_bits=16, input_bits=16)
    program = hwq.compile(net, "sim")
    eps = np.round(np.arange(101) * 0.005, 12)
    t0 = time.perf_counter()
    result = hwq.attack(program, x_test, y_test, eps, bounds=(0.0, 1.0))
    return time.perf_counter() - t0, result.clean_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for both loops (1: what a sweep worker uses)")
    args = parser.parse_args()
    name, x, y, x_test, y_test = load(args.synthetic)
    print(f"data: {name}, {int(0.9 * len(x))} training samples, {len(x_test)} test inputs; "
          f"784-{HIDDEN}-10 {args.activation}, {args.bits}-bit QAT, batch {BATCH}, "
          f"{args.epochs} epochs, {args.threads} BLAS thread(s), {args.repeats} repeats")
    with threadpool_limits(limits=args.threads):
        time_hwq(x[:2000], y[:2000], args.activation, args.bits, 1, 0)  # numba warm-up
        hwq_rates, numpy_rates, attack_s = [], [], []
        for r in range(args.repeats):
            rate, mlp = time_hwq(x, y, args.activation, args.bits, args.epochs, r)
            hwq_rates.append(rate)
            numpy_rates.append(time_numpy(x, y, args.epochs))
            seconds, clean = time_attack(mlp, x, x_test, y_test, args.bits)
            attack_s.append(seconds)
            print(f"repeat {r}: hwq {rate:,.0f} samples/s, numpy {numpy_rates[-1]:,.0f} "
                  f"samples/s, attack {seconds:.2f} s (clean accuracy {clean:.3f})", flush=True)
    h, n = statistics.median(hwq_rates), statistics.median(numpy_rates)
    a = statistics.median(attack_s)
    print(f"training hwq (QAT, {args.bits} bits): {h:,.0f} samples/s "
          f"({54_000 / h:.2f} s per 54k-sample epoch)")
    print(f"training numpy float loop:      {n:,.0f} samples/s ({54_000 / n:.2f} s per epoch)")
    print(f"attack: {a:.2f} s for {len(x_test)} inputs x 101 strengths "
          f"({len(x_test) * 101 / a:,.0f} integer forward passes/s)")
    print(f"training_vs_numpy={h / n:.3f}")


if __name__ == "__main__":
    main()
