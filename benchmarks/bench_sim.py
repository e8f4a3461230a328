"""Forward passes per second of the attack workload: sim vs onnxruntime vs the numpy reference.

The 784-100-10 MLP (random weights, relu hidden layer, 4-bit narrow weights, 8-bit
activations and inputs) is attacked with FGSM at 101 epsilons on 10,000 random inputs: 1.01 M
integer forward passes, in the chunks ``hwq.attack.attack`` uses.

* ``sim attack``: ``perturb_quantize`` (uint8 codes, the container ``hwq.attack`` makes for
  8-bit inputs) + sim ``forward`` + ``decide``, timed together;
* ``sim forward``: the same, timing ``forward`` + ``decide`` alone;
* ``sim attack f32``: ``perturb_quantize`` into float32 codes (four times the memory traffic)
  + ``forward`` + ``decide``;
* ``ort forward``: the graph of ``hwq.onnx.exporter`` on the same codes fed as uint8 (its native
  input), timing ``session.run`` alone; ``ort attack`` adds ``perturb_quantize`` into uint8;
* ``hwq.attack``: the whole ``hwq.attack.attack`` call (gradient and clean pass included);
* ``numpy reference``: ``hwq.quant.reference`` on a subset, extrapolated per pass;
* ``sim16 attack``: ``sim attack`` on the same network quantized with 16-bit input and
  activation codes (the paper's study formats): uint16 codes, both layers on two byte planes
  through the int8 VNNI product where the CPU has it (the AVX2 int16 product or float64 BLAS
  otherwise); ``sim16 attack blas``: the same with ``vnni=False, avx2=False`` (float64 BLAS: the
  path before byte planes);
* ``sim attack no-vnni``, ``sim16 attack no-vnni``: ``sim attack`` and ``sim16 attack`` compiled
  with ``vnni=False``: the products a CPU without AVX-512 VNNI plans (the AVX2 int16 product
  where the CPU has AVX2, else float BLAS), measured in the same run. onnxruntime keeps the
  kernels it picks for this CPU (it has no switch to turn VNNI off), so on a VNNI machine
  this ratio is sim without VNNI against onnxruntime with it.

The onnxruntime graph is hwq's own export: ``MatMulInteger`` (u8 x s8) where the weights lie in
[-64, 64] (exact on every CPU; the 4-bit weights here), a double ``MatMul`` for int8 weights
beyond that.

Every repeat checks that sim and onnxruntime decide identically on all 1.01 M inputs; the
first chunk's scores must be equal in sim, onnxruntime and the reference. Medians over
``--repeats``; peak memory is the process's maximum resident set. The last line is
``sim_vs_onnxruntime=<sim attack passes/s / ort attack passes/s>``: each engine makes its
codes the way it is fed (both: uint8, as ``hwq.attack`` does) and runs; then
``sim16_vs_sim8=<sim16 attack passes/s / sim attack passes/s>`` (same run, medians), then the
same two ratios with VNNI forced off for sim: ``sim_vs_onnxruntime_no_vnni=`` and
``sim16_vs_sim8_no_vnni=``.

    python benchmarks/bench_sim.py [--inputs 10000] [--epsilons 101] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numba
import numpy as np
import onnxruntime as ort

import hwq
from hwq import ir
from hwq.attack.base import CHUNK_ELEMENTS, code_dtype, perturb_quantize
from hwq.attack.gradients import SurrogateGradient
from hwq.onnx.exporter import export_onnx
from hwq.quant import reference
from hwq.ranges import check_epsilons

N_IN, HIDDEN, N_OUT = 784, 100, 10


def build_graph(rng: np.random.Generator) -> ir.Graph:
    w1, b1 = rng.normal(0, 1 / np.sqrt(N_IN), (HIDDEN, N_IN)), rng.normal(0, 0.1, HIDDEN)
    w2, b2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (N_OUT, HIDDEN)), rng.normal(0, 0.1, N_OUT)
    nodes = (ir.Affine(w1, b1), ir.Activation("relu"), ir.Affine(w2, b2))
    return ir.Graph((N_IN,), nodes, ir.Output("softmax"))


def build_network(graph: ir.Graph, x: np.ndarray, bits: int = 8):
    """4-bit weights; ``bits``-bit activations and inputs."""
    return hwq.quantize(graph, 4, calibration=x[:1000], bounds=(0.0, 1.0), act_bits=bits,
                        input_bits=bits)


class Workload:
    """The attack's chunks: inputs, FGSM directions, epsilons, and the code generator."""

    def __init__(self, net, x, direction, eps):
        self.net, self.x, self.direction, self.eps = net, x, direction, eps
        self.step = max(1, CHUNK_ELEMENTS // (len(eps) * N_IN))

    def chunks(self, n=None):
        n = len(self.x) if n is None else n
        for start in range(0, n, self.step):
            yield slice(start, min(n, start + self.step))

    def codes(self, sl, dtype):
        fmt = self.net.input
        out = np.empty((len(self.eps) * (sl.stop - sl.start), N_IN), dtype)
        perturb_quantize(self.x[sl], self.direction[sl], self.eps, 0.0, 1.0, fmt.inv_scale,
                         fmt.qmin, fmt.qmax, out)
        return out


def run_sim(work: Workload, program, dtype):
    """(seconds perturb+forward+decide, seconds forward+decide, decisions) with the codes
    made as ``dtype`` (float32: what ``hwq.attack`` makes)."""
    total = fwd = 0.0
    decisions = []
    for sl in work.chunks():
        t0 = time.perf_counter()
        codes = work.codes(sl, dtype)
        t1 = time.perf_counter()
        decisions.append(program.decide(program.forward(codes)))
        t2 = time.perf_counter()
        total += t2 - t0
        fwd += t2 - t1
    return total, fwd, np.concatenate(decisions)


def run_ort(work: Workload, session):
    """(seconds perturb+run, seconds run, decisions)."""
    total = fwd = 0.0
    decisions = []
    for sl in work.chunks():
        t0 = time.perf_counter()
        codes = work.codes(sl, np.uint8)
        t1 = time.perf_counter()
        decisions.append(session.run(["decision"], {"x_q": codes})[0])
        t2 = time.perf_counter()
        total += t2 - t0
        fwd += t2 - t1
    return total, fwd, np.concatenate(decisions)


def run_attack(work: Workload, program, y):
    t0 = time.perf_counter()
    hwq.attack(program, work.x, y, work.eps, bounds=(0.0, 1.0))
    return time.perf_counter() - t0


def run_reference(work: Workload, n_inputs: int):
    """Seconds per pass of perturb + ``hwq.quant.reference`` forward + decide on ``n_inputs``."""
    t0 = time.perf_counter()
    for sl in work.chunks(n_inputs):
        codes = work.codes(sl, np.float32)
        reference.decide(reference.forward(work.net, codes.astype(np.int64)), work.net.output)
    return (time.perf_counter() - t0) / (n_inputs * len(work.eps))


def check_first_chunk(work: Workload, program, session):
    sl = next(work.chunks())
    codes = work.codes(sl, np.float32)
    ref = reference.forward(work.net, codes.astype(np.int64))
    ort_scores = session.run(["scores"], {"x_q": codes.astype(np.uint8)})[0]
    if not (np.array_equal(program.forward(codes), ref) and np.array_equal(ort_scores, ref)):
        raise SystemExit("MISMATCH: sim, onnxruntime and reference scores differ")
    return len(codes)


def make_session(net, threads: int):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(export_onnx(net).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine spent busy, CPU seconds this process spent): their
    difference over a run is what other processes took (Linux; zeros elsewhere)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def rate(passes: int, seconds: list[float]) -> float:
    return passes / float(np.median(seconds))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--epsilons", type=int, default=101)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-inputs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for sim (numba) and onnxruntime (intra-op) alike")
    args = parser.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0.0, 1.0, (args.inputs, N_IN))
    graph = build_graph(rng)
    net, net16 = build_network(graph, x), build_network(graph, x, 16)
    program, program16 = hwq.compile(net, "sim"), hwq.compile(net16, "sim")
    program16_blas = hwq.compile(net16, "sim", vnni=False, avx2=False)
    program_nv, program16_nv = hwq.compile(net, "sim", vnni=False), hwq.compile(net16, "sim", vnni=False)
    y = rng.integers(0, N_OUT, args.inputs)
    _, grad = SurrogateGradient(program).value_and_grad(x, y)
    eps = check_epsilons(np.linspace(0.0, 0.5, args.epsilons))
    work = Workload(net, x, np.sign(grad).astype(np.float32), eps)
    work16 = Workload(net16, x, work.direction, eps)
    session = make_session(net, args.threads)
    passes = args.inputs * args.epsilons

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"onnxruntime {ort.__version__} ({args.threads} threads, ORT_ENABLE_ALL)")
    print(f"network 784-100-10 relu, 4-bit weights, 8-bit activations; sim products "
          f"{program.report['products']}; {passes:,} passes in chunks of {work.step} inputs")
    attack_dtype = code_dtype(net.input)  # the container hwq.attack makes (uint8 here)
    checked = check_first_chunk(work, program, session)  # also compiles every kernel
    print(f"scores identical in sim, onnxruntime and reference on {checked:,} passes")
    sl = next(work16.chunks())
    codes16 = work16.codes(sl, code_dtype(net16.input))
    if not np.array_equal(program16.forward(codes16), reference.forward(net16, codes16.astype(np.int64))):
        raise SystemExit("MISMATCH: sim and reference scores differ (16-bit codes)")
    for other in (program16_blas, program16_nv):
        if not np.array_equal(other.forward(codes16), program16.forward(codes16)):
            raise SystemExit(f"MISMATCH: sim 16-bit {program16.report} and {other.report} scores differ")
    codes8 = work.codes(next(work.chunks()), attack_dtype)
    if not np.array_equal(program_nv.forward(codes8), program.forward(codes8)):
        raise SystemExit("MISMATCH: sim with and without VNNI scores differ")
    print(f"16-bit codes: sim products {program16.report['products']} (BLAS: "
          f"{program16_blas.report['products']}); scores identical in sim and reference on "
          f"{len(codes16):,} passes")
    print(f"VNNI forced off: sim products {program_nv.report['products']}, 16-bit "
          f"{program16_nv.report['products']}; scores identical to the default plan")

    names = ("sim attack", "sim forward", "sim attack f32", "ort attack", "ort forward", "hwq.attack",
             "sim16 attack", "sim16 forward", "sim16 attack blas", "sim attack no-vnni", "sim16 attack no-vnni")
    times = {k: [] for k in names}
    busy0, own0, wall0 = *busy_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeats):
        total, fwd, sim_dec = run_sim(work, program, attack_dtype)
        times["sim attack"].append(total)
        times["sim forward"].append(fwd)
        times["sim attack f32"].append(run_sim(work, program, np.float32)[0])
        total, fwd, ort_dec = run_ort(work, session)
        times["ort attack"].append(total)
        times["ort forward"].append(fwd)
        if not np.array_equal(sim_dec, ort_dec):
            raise SystemExit("MISMATCH: sim and onnxruntime decisions differ")
        times["hwq.attack"].append(run_attack(work, program, y))
        total, fwd, _ = run_sim(work16, program16, code_dtype(net16.input))
        times["sim16 attack"].append(total)
        times["sim16 forward"].append(fwd)
        times["sim16 attack blas"].append(run_sim(work16, program16_blas, code_dtype(net16.input))[0])
        total, _, nv_dec = run_sim(work, program_nv, attack_dtype)
        times["sim attack no-vnni"].append(total)
        if not np.array_equal(nv_dec, ort_dec):
            raise SystemExit("MISMATCH: sim without VNNI and onnxruntime decisions differ")
        times["sim16 attack no-vnni"].append(run_sim(work16, program16_nv, code_dtype(net16.input))[0])
    busy1, own1, wall1 = *busy_cpu_seconds(), time.perf_counter()
    ref_rate = 1.0 / run_reference(work, min(args.reference_inputs, args.inputs))
    print(f"decisions identical in sim and onnxruntime on {passes:,} passes x {args.repeats} repeats")

    rates = {k: rate(passes, v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<16} {rates[k]:>12,.0f} passes/s  (median {np.median(v):.3f} s, "
              f"min {min(v):.3f}, max {max(v):.3f})")
    print(f"{'numpy reference':<16} {ref_rate:>12,.0f} passes/s  "
          f"({args.reference_inputs * args.epsilons:,} passes, extrapolated)")
    print(f"sim forward / onnxruntime forward: {rates['sim forward'] / rates['ort forward']:.2f}x; "
          f"sim attack / ort attack: {rates['sim attack'] / rates['ort attack']:.2f}x; "
          f"sim attack f32 / ort attack: {rates['sim attack f32'] / rates['ort attack']:.2f}x; "
          f"sim attack / numpy reference: {rates['sim attack'] / ref_rate:.0f}x")
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    print(f"other processes used {other:.2f} of {os.cpu_count()} CPUs during the timed runs")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:,.0f} MiB")
    print(f"sim_vs_onnxruntime={rates['sim attack'] / rates['ort attack']:.2f}")
    print(f"sim16 attack / sim16 attack blas (byte planes vs float64 BLAS): "
          f"{rates['sim16 attack'] / rates['sim16 attack blas']:.2f}x")
    print(f"sim16_vs_sim8={rates['sim16 attack'] / rates['sim attack']:.2f}")
    print(f"sim_vs_onnxruntime_no_vnni={rates['sim attack no-vnni'] / rates['ort attack']:.2f}")
    print(f"sim16_vs_sim8_no_vnni={rates['sim16 attack no-vnni'] / rates['sim attack no-vnni']:.2f}")


if __name__ == "__main__":
    main()
