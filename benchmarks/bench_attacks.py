"""PGD and Square on the 784-100-10 MLP: hwq on ``sim`` vs the same PGD written plainly on the
float model.

The network: random weights (hidden pre-activations centred on the data), relu hidden layer,
4-bit uniform weights, 16-bit activations and inputs (the study's formats); 1,000 random
inputs in [0, 1] labelled by the integer model; 11 strengths 0..0.1.

* ``hwq pgd``: ``hwq.attack`` with ``PGD(steps=40, l-inf, no random start)`` and the
  surrogate gradient, judged on the integer model after every step (diagnostics off). It
  stops a pair (input, eps) at its first adversarial step, as AutoAttack does.
* ``torch plain``: the same 40 steps written plainly in PyTorch on the float model (float32,
  one batch of 11,000 rows, every row every step, the float model's decision after each
  step; ``plain_pgd_torch.py``) -- what the issue asks for and what a user writes first.
  ``torch careful``: the same PGD written for speed (bounds once, in-place steps, ``addmm``).
  Both run in a worker process of a Python that has torch (``--torch-python``; default: this
  Python if it has torch, else ``.venv-torch/bin/python`` of the checkout; see
  benchmarks/README.md for the one-line set-up), alternating with hwq in every repeat.
* ``jax``: the same PGD in JAX with ``jit`` (compiled outside the timing), where JAX is
  installed (the test extra has it): a compiled baseline, for scale.

Throughput is row-steps per second (one row-step = one gradient + one forward of one point;
hwq counts only the steps it ran). The issue defines the ratio by throughput:
``pgd_vs_torch = hwq row-steps/s / torch plain row-steps/s`` (the last line), beside
``pgd_vs_torch_careful`` and ``pgd_vs_jax``. The wall time of the whole attack, what a user
waits, is printed as ``pgd_wall_vs_torch = median torch plain wall / median hwq wall``: hwq
stops a pair at its first adversarial step, so it runs far fewer steps. Medians of the
repeats; the runs alternate so that a load change on a shared machine hits all of them.
``hwq pgd, threaded BLAS``: the same hwq attack with its gradient products on numpy's
threaded BLAS (``one_blas_thread`` undone), in the same rotation; ``threaded_blas_slowdown``
is its median wall over hwq's (> 1: the one-thread limit pays).
``precision``: the float32 sign-only surrogate (hwq's default for l-inf steps) against float64
on the same run: gradient components whose sign differs, and decisions that differ.
Square: ``Square(queries=1000)`` on 200 inputs x 3 strengths, integer-model queries per
second, medians of the repeats on both paths below.

Both paths in the same run (issue 16): ``hwq`` is sim as this CPU plans it (VNNI where the CPU
has AVX-512 VNNI); ``hwq no-vnni`` is sim compiled with ``vnni=False`` (what ``HWQ_VNNI=0`` or a
CPU without VNNI plans: the AVX2 int16 product, ``targets/common/avx2.py``), in the same
rotation. Both must decide every (input, eps) identically (checked). The lines
``pgd_vs_torch_no_vnni`` and ``square_no_vnni_vs_vnni`` (no-vnni queries/s over the other
path's) report it; ``phases`` splits each path's hwq wall (medians) into the integer passes
(``accumulators``/``forward``), the gradient products (``grad_at``) and the rest (step kernel,
projection, indexing, judging). On a VNNI machine only sim's products change: the gradient
products, the step kernel and the baselines still use the CPU's AVX-512.
APGD: ``APGD(steps=100)`` (APGD-CE, l-inf) on the same network and inputs at 5 strengths
(0.002..0.01) against torchattacks' ``APGD`` (a port of the reference implementation) on the
float model (``apgd_torch.py``, in the torch Python, which then needs torchattacks), in
alternation; throughput in row-steps per second; the last line ``apgd_vs_torch``.

    python benchmarks/bench_attacks.py [--inputs 1000] [--repeats 5] [--torch-python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from builders import torch_style_mlp  # noqa: E402

import hwq  # noqa: E402
from hwq.attack import APGD, PGD, Square, gradients  # noqa: E402
from hwq.attack.gradients import SurrogateGradient, backprop  # noqa: E402
from hwq.onnx.importer import graph_from_model  # noqa: E402
from hwq.quant import reference  # noqa: E402


def network(rng):
    w1 = rng.uniform(-0.1, 0.1, (100, 784))
    w2 = rng.uniform(-1, 1, (10, 100))
    return graph_from_model(torch_style_mlp(w1, -0.5 * w1.sum(axis=1), w2, np.zeros(10)))


def plain_pgd_jax(net, x, y, eps, steps, rel):
    """A runner of the same PGD in JAX, compiled once (outside the timing); each call returns
    ``(broken (K, N), wall seconds)``."""
    import jax
    import jax.numpy as jnp

    w1, b1, w2, b2 = (jnp.asarray(v, jnp.float32) for v in net)

    def loss(v, yy):
        logits = jax.nn.relu(v @ w1.T + b1) @ w2.T + b2
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(yy)), yy])

    @jax.jit
    def run(X, Y, E):
        def step(carry, _):
            cur, broken = carry
            g = jax.grad(loss)(cur, Y)
            cur = jnp.clip(jnp.clip(cur + rel * E * jnp.sign(g), X - E, X + E), 0, 1)
            broken |= jnp.argmax(jax.nn.relu(cur @ w1.T + b1) @ w2.T + b2, 1) != Y
            return (cur, broken), None
        (cur, broken), _ = jax.lax.scan(step, (X, jnp.zeros(len(X), bool)), None, length=steps)
        return broken

    X = jnp.asarray(np.tile(x, (len(eps), 1)), jnp.float32)
    Y = jnp.asarray(np.tile(y, len(eps)))
    E = jnp.asarray(np.repeat(eps, len(x)), jnp.float32)[:, None]
    run(X, Y, E).block_until_ready()  # compile outside the timing

    def timed():
        t = time.perf_counter()
        out = np.asarray(run(X, Y, E).block_until_ready())
        return out.reshape(len(eps), -1), time.perf_counter() - t
    return timed


class TorchWorker:
    """``plain_pgd_torch.py`` in a process of ``python`` (one with numpy and torch); ``run(name)``
    -> ``(wall seconds, accuracy per eps)``."""

    def __init__(self, python, floats, x, y, eps, steps, rel, folder):
        path = os.path.join(folder, "problem.npz")
        w1, b1, w2, b2 = floats
        np.savez(path, w1=w1, b1=b1, w2=w2, b2=b2, x=x, y=y, eps=eps, steps=steps, rel=rel)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plain_pgd_torch.py")
        self.proc = subprocess.Popen([python, script, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, name):
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        return out["wall"], np.array(out["accuracy"])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def torch_python(given: str | None) -> str | None:
    """The Python that runs the torch baseline: ``given``, else this one if it has torch,
    else the checkout's ``.venv-torch``; None when there is none."""
    if given:
        return given
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    local = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv-torch", "bin", "python")
    return local if os.path.exists(local) else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-python", help="a Python with numpy and torch (and torchattacks) for the baselines")
    ap.add_argument("--no-apgd", action="store_true", help="skip APGD-CE against torchattacks")
    args = ap.parse_args()
    python = torch_python(args.torch_python)
    if python is None:
        sys.exit("bench_attacks: no Python with torch for the baseline; make one with "
                 "'python3.11 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy' "
                 "(benchmarks/README.md) or pass --torch-python")
    rng = np.random.default_rng(0)
    graph = network(rng)
    x = rng.uniform(0, 1, (args.inputs, 784))
    net = hwq.quantize(graph, 4, calibration=x, bounds=(0, 1), scheme="uniform", act_bits=16, input_bits=16)
    program = hwq.compile(net, "sim")
    no_vnni = hwq.compile(net, "sim", vnni=False)  # the products a CPU without VNNI plans
    y = reference.predict(net, x)
    eps = np.linspace(0, 0.1, 11)
    steps, rel = 40, 0.01 / 0.3
    method = PGD(steps=steps, rel_stepsize=rel, random_start=False)  # the baselines' step
    for p in (program, no_vnni):  # JIT warm-up
        hwq.attack(p, x[:50], y[:50], eps, method=method, bounds=(0, 1), diagnostics=False)
    layers = [graph.layers()[0][0], graph.layers()[1][0]]
    floats = (layers[0].weight, layers[0].bias, layers[1].weight, layers[1].bias)
    with tempfile.TemporaryDirectory() as folder:
        worker = TorchWorker(python, floats, x, y, eps, steps, rel, folder)
        jax_run = plain_pgd_jax(floats, x, y, eps, steps, rel) if importlib.util.find_spec("jax") else None
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"{args.inputs} inputs x {len(eps)} eps, {steps} steps; {args.repeats} repeats, order turning; "
              f"torch {worker.info['torch']} ({worker.info['threads']} threads, {python})")
        print(f"sim products: {program.report['products']} (this CPU's plan), no-vnni "
              f"{no_vnni.report['products']}")
        accuracy, counted, phases = {}, {}, {"hwq": [], "hwq no-vnni": []}

        def run_hwq(name="hwq", compiled=program):
            counter = Counting(compiled)
            gradient = TimedGradient(counter)
            t = time.perf_counter()
            counted[name] = hwq.attack(counter, x, y, eps, method=method, bounds=(0, 1), diagnostics=False,
                                       gradient=gradient)
            wall = time.perf_counter() - t
            counted["counter"] = counter
            phases[name].append((counter.seconds, gradient.seconds, wall - counter.seconds - gradient.seconds))
            return wall

        def run_variant(variant):
            with variant():
                t = time.perf_counter()
                hwq.attack(program, x, y, eps, method=method, bounds=(0, 1), diagnostics=False)
                return time.perf_counter() - t

        def run_torch(name):
            wall, accuracy[name] = worker.run(name)
            return wall

        def run_jax():
            broken, wall = jax_run()
            accuracy["jax"] = 1 - broken.mean(axis=1)
            return wall

        runners = {"hwq": run_hwq, "hwq no-vnni": lambda: run_hwq("hwq no-vnni", no_vnni),
                   **{name: (lambda v=v: run_variant(v)) for name, v in VARIANTS.items()},
                   "plain": lambda: run_torch("plain"), "careful": lambda: run_torch("careful")}
        if jax_run is not None:
            runners["jax"] = run_jax
        walls = {name: [] for name in runners}
        order = list(runners)
        for repeat in range(args.repeats):  # the order turns by one each repeat: every runner
            for name in order[repeat % len(order):] + order[:repeat % len(order)]:  # follows each other
                walls[name].append(runners[name]())
        r, counter = counted["hwq"], counted["counter"]
        if not np.array_equal(r.predictions, counted["hwq no-vnni"].predictions):
            sys.exit("bench_attacks: sim with and without VNNI decided differently")
        rowsteps = counter.rows - args.inputs  # integer passes after the clean one = steps judged
        worker.close()
    median = {k: float(np.median(v)) for k, v in walls.items() if v}
    base_rows = steps * len(eps) * args.inputs
    print(f"hwq pgd (sim, integer model): {median['hwq']:.2f} s (runs {listed(walls['hwq'])}), {rowsteps} "
          f"row-steps ({rowsteps / median['hwq']:,.0f} /s), {counter.traces} extra trace rows, accuracy "
          f"at eps 0.01, 0.1: {r.accuracy[1]:.3f}, {r.accuracy[-1]:.3f}")
    names = {"plain": "torch plain", "careful": "torch careful", "jax": "jax jit"}
    for key, name in names.items():
        if key in median:
            print(f"{name} (float model): {median[key]:.2f} s (runs {listed(walls[key])}), {base_rows} row-steps "
                  f"({base_rows / median[key]:,.0f} /s), accuracy at eps 0.01, 0.1: "
                  f"{accuracy[key][1]:.3f}, {accuracy[key][-1]:.3f}")
    print(f"hwq pgd no-vnni (sim, integer model): {median['hwq no-vnni']:.2f} s (runs "
          f"{listed(walls['hwq no-vnni'])}), {rowsteps} row-steps ({rowsteps / median['hwq no-vnni']:,.0f} /s), "
          f"the same decisions")
    for name, split in phases.items():
        passes, grads, rest = np.median(np.array(split), axis=0)
        print(f"phases, {name} (medians): integer passes {passes:.3f} s, gradient products {grads:.3f} s, "
              f"rest (step, projection, indexing) {rest:.3f} s")
    for name in VARIANTS:
        print(f"hwq pgd, {name}: {median[name]:.2f} s (runs {listed(walls[name])})")
    precision(program, x, y, eps, method, r)
    square = square_both(program, no_vnni, x[:200], y[:200], args.repeats)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for name in VARIANTS:  # > 1: the choice pays
        print(f"{name.lower().replace(' ', '_')}_slowdown={median[name] / median['hwq']:.2f}")
    throughput = rowsteps / median["hwq"]
    print(f"pgd_wall_vs_torch={median['plain'] / median['hwq']:.2f}")
    if "jax" in median:
        print(f"pgd_vs_jax={throughput / (base_rows / median['jax']):.2f}")
    print(f"pgd_vs_torch_careful={throughput / (base_rows / median['careful']):.2f}")
    print(f"square_no_vnni_vs_vnni={square:.2f}")
    print(f"pgd_vs_torch_no_vnni={rowsteps / median['hwq no-vnni'] / (base_rows / median['plain']):.2f}")
    print(f"pgd_vs_torch={throughput / (base_rows / median['plain']):.2f}")
    if not args.no_apgd:
        apgd_vs_torch(program, x, y, floats, args.repeats, python)


def apgd_vs_torch(program, x, y, floats, repeats, python):
    """APGD-CE (100 steps, l-inf) on ``sim`` against torchattacks' APGD (the reference
    implementation's port) on the float model in PyTorch, 5 strengths, alternating; throughput
    in row-steps per second (hwq: the integer passes after the clean ones, a broken pair stops;
    torchattacks: every attacked row every step). Last line ``apgd_vs_torch``."""
    from apgd_torch_client import Worker

    eps = np.array([0.002, 0.004, 0.006, 0.008, 0.01])
    method = APGD(steps=100)
    hwq.attack(program, x[:50], y[:50], eps, method=method, bounds=(0, 1), diagnostics=False)  # warm-up
    walls = {"hwq": [], "torch": []}
    with tempfile.TemporaryDirectory() as folder:
        worker = Worker(python, dict(w1=floats[0], b1=floats[1], w2=floats[2], b2=floats[3], x=x, y=y, eps=eps,
                                     steps=100, seed=0, norm="linf", side=28), folder)
        for repeat in range(repeats):
            for name in (("hwq", "torch") if repeat % 2 == 0 else ("torch", "hwq")):
                if name == "hwq":
                    counter = Counting(program)
                    t = time.perf_counter()
                    r = hwq.attack(counter, x, y, eps, method=method, bounds=(0, 1), diagnostics=False,
                                   gradient=hwq.api.default_gradient(counter))
                    walls["hwq"].append(time.perf_counter() - t)
                    rows = counter.rows - 2 * len(x)  # the clean pass and the clean gradient's
                else:
                    out = worker.run("ce")
                    walls["torch"].append(out["wall"])
                    torch_rows, torch_acc = out["row_steps"], np.array(out["robust"]).mean(axis=1)
        worker.close()
    hwq_wall, torch_wall = float(np.median(walls["hwq"])), float(np.median(walls["torch"]))
    print(f"apgd-ce hwq (sim, integer model): {hwq_wall:.2f} s (runs {listed(walls['hwq'])}), {rows} row-steps "
          f"({rows / hwq_wall:,.0f} /s), accuracy per eps {listed(r.accuracy)}")
    print(f"apgd-ce torchattacks (float model): {torch_wall:.2f} s (runs {listed(walls['torch'])}), {torch_rows} "
          f"row-steps ({torch_rows / torch_wall:,.0f} /s), accuracy per eps {listed(torch_acc)}")
    print(f"apgd_wall_vs_torch={torch_wall / hwq_wall:.2f}")
    print(f"apgd_vs_torch={(rows / hwq_wall) / (torch_rows / torch_wall):.2f}")


def square_both(program, no_vnni, x, y, repeats) -> float:
    """Square (1000 queries, 3 strengths) on both sim paths, alternating, ``repeats`` times each;
    prints queries/s (medians) and returns no-vnni's rate over the CPU's own path's."""
    hwq.attack(no_vnni, x[:20], y[:20], [0.05], method=Square(queries=20), bounds=(0, 1), diagnostics=False)
    rates, outcomes = {"sim": [], "no-vnni": []}, {}
    for repeat in range(repeats):
        pairs = [("sim", program), ("no-vnni", no_vnni)]
        for name, compiled in pairs if repeat % 2 == 0 else pairs[::-1]:
            counter = Counting(compiled)
            t = time.perf_counter()
            outcomes[name] = hwq.attack(counter, x, y, [0.02, 0.05, 0.1], method=Square(queries=1000),
                                        bounds=(0, 1), diagnostics=False).predictions
            rates[name].append(counter.rows / (time.perf_counter() - t))
    if not np.array_equal(outcomes["sim"], outcomes["no-vnni"]):
        sys.exit("bench_attacks: Square decided differently with and without VNNI")
    rate = {k: float(np.median(v)) for k, v in rates.items()}
    for name in rates:
        print(f"square {name}: {counter.rows} queries per run, {rate[name]:,.0f} queries/s (median; runs "
              f"{', '.join(f'{v:,.0f}' for v in rates[name])})")
    return rate["no-vnni"] / rate["sim"]


@contextlib.contextmanager
def threaded_blas():
    """hwq's gradient products on numpy's threaded BLAS (no ``one_blas_thread``)."""
    with patched(gradients, one_blas_thread=contextlib.nullcontext):
        yield


@contextlib.contextmanager
def patched(module, **names):
    saved = {k: getattr(module, k) for k in names}
    for k, v in names.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


VARIANTS = {"threaded BLAS": threaded_blas}


def listed(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def precision(program, x, y, eps, method, fast):
    """The float32 sign-only surrogate (the default) against float64: sign disagreements of
    every l-inf step's gradient, and the (input, eps) outcomes that differ between the runs."""
    checked = SignCheck(program)
    hwq.attack(program, x, y, eps, method=method, bounds=(0, 1), diagnostics=False, gradient=checked)
    exact = hwq.attack(program, x, y, eps, method=method, bounds=(0, 1), diagnostics=False,
                       gradient=SurrogateGradient(program, sign_dtype=None))
    differ = int((exact.predictions != fast.predictions).sum())
    print(f"float32 vs float64 surrogate: {checked.disagree} of {checked.components:,} gradient "
          f"components ({checked.disagree / max(1, checked.components):.1e}) in {checked.rows} "
          f"row-steps change sign ({checked.rows_flipped} rows); {differ} of "
          f"{exact.predictions.size} (input, eps) decisions differ; accuracy per eps float32 "
          f"{listed(fast.accuracy)}, float64 {listed(exact.accuracy)}")


class SignCheck(SurrogateGradient):
    """The default surrogate, also computing every sign-only gradient in float64 and counting
    the components whose sign differs (np.sign: -1, 0, +1)."""

    def __init__(self, program):
        super().__init__(program)
        self.disagree = self.components = self.rows = self.rows_flipped = 0

    def grad_at(self, zs, y, sign_only=False):
        loss, g = super().grad_at(zs, y, sign_only)
        if sign_only:
            _, exact = backprop(self.weights, self.gains, self.acts, zs, y, self.single, self.tops)
            diff = np.sign(g) != np.sign(exact)
            self.disagree += int(diff.sum())
            self.components += diff.size
            self.rows += len(g)
            self.rows_flipped += int(diff.any(axis=1).sum())
        return loss, g


class TimedGradient(SurrogateGradient):
    """The default surrogate (``default_gradient``), timing its products (``grad_at``)."""

    def __init__(self, program):
        super().__init__(gradients.reference_for(program))
        self.seconds = 0.0

    def grad_at(self, zs, y, sign_only=False, loss=None):
        t = time.perf_counter()
        out = super().grad_at(zs, y, sign_only, loss)
        self.seconds += time.perf_counter() - t
        return out


class Counting:
    """The program, counting the points it is asked to judge (``forward`` and the fused
    ``accumulators`` pass) and the extra trace rows (``trace``), and timing those passes."""

    def __init__(self, program):
        self.inner, self.net, self.target = program, program.net, program.target
        self.rows = self.traces = 0
        self.seconds = 0.0
        self.artifacts, self.report = {}, {}

    def forward(self, x_q):
        self.rows += len(x_q)
        t = time.perf_counter()
        out = self.inner.forward(x_q)
        self.seconds += time.perf_counter() - t
        return out

    def accumulators(self, x_q):
        self.rows += len(x_q)
        t = time.perf_counter()
        out = self.inner.accumulators(x_q)
        self.seconds += time.perf_counter() - t
        return out

    def trace(self, x_q):
        self.traces += len(x_q)
        return self.inner.trace(x_q)

    def decide(self, scores):
        return self.inner.decide(scores)


if __name__ == "__main__":
    main()
