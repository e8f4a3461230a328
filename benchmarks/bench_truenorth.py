"""Emulator speed on the paper's 784-100-10 network, ternary weights, 1-bit inputs, mapped
exactly (count domain), against a straightforward per-frame, per-tick, per-core numpy loop of
the same semantics (deterministic cores only), checked identical on the shared frames. The same
comparison first on a mapped step CNN (1x16x16, conv 3x3 x8, max pool 2, conv 3x3 x16, dense 10,
ternary weights, 1-bit inputs; one tick per layer, docs/truenorth.md section 4)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import conv_layer, make_layer, pool_node, random_net  # noqa: E402
from hwq_targets.truenorth import TrueNorthTarget  # noqa: E402
from hwq_targets.truenorth.core import SLOTS  # noqa: E402


def loop_counts(model, drive, ticks, f):
    """One frame, every core every tick: dense product, the neuron equations, routing."""
    cores = model.cores
    pos = model.index()
    v = [c.neurons.v0.astype(np.int64) for c in cores]
    weff = [c.effective_weights().astype(np.int64) for c in cores]
    sched = np.zeros((len(cores), SLOTS, 256), bool)
    counts = np.zeros((len(cores), 256), np.int64)
    for t in range(ticks):
        for c, act in drive.by_tick.get(t, {}).items():
            sched[c, t % SLOTS] |= act[f]
        fired = []
        for c, core in enumerate(cores):
            n = core.neurons
            a = sched[c, t % SLOTS].copy()
            sched[c, t % SLOTS] = False
            x = np.clip(v[c] + a @ weff[c], -2**19, 2**19 - 1)
            x = np.clip(x + np.where(n.leak_reversal, np.sign(x), 1) * n.leak, -2**19, 2**19 - 1)
            fire = (x >= n.alpha) & n.exists
            pos_r = np.choose(n.gamma, [n.reset, x - n.alpha, x])
            neg = ~fire & (x < -n.beta)
            neg_r = np.where(n.kappa, -n.beta, np.choose(n.gamma, [-n.reset, x + n.beta, x]))
            v[c] = np.where(fire, pos_r, np.where(neg, neg_r, x))
            counts[c] += fire
            fired.append(np.flatnonzero(fire))
        for c, js in enumerate(fired):
            n = cores[c].neurons
            for j in js:
                if n.dest_core[j] >= 0 and int(n.dest_core[j]) in pos:
                    sched[pos[int(n.dest_core[j])], (t + n.dest_delay[j]) % SLOTS, n.dest_axon[j]] = True
    return counts


def time_real_files(ticks=1000):
    """Run IBM's own model files (tests/data/truenorth): the multi-core Eedn excerpt
    th_small_test.json (2 of 4042 cores; its crossbar prototypes are not in the excerpt, read as
    empty crossbars) and ex1.json with its NSCS spike file (1 core)."""
    from hwq_targets.truenorth import read_model, read_spikes, run_model

    data = Path(__file__).resolve().parents[1] / "tests" / "data" / "truenorth"
    spikes = read_spikes(data / "ex1_spikes.sfti")
    for name, opts in (("th_small_test.json", {"missing_crossbars": "empty"}), ("ex1.json", {})):
        model = read_model(data / name, **opts)
        t0 = time.perf_counter()
        run = run_model(model, spikes, ticks)
        dt = time.perf_counter() - t0
        print(f"real model file {name}: cores={len(model.cores)} ticks={ticks} input_spikes={len(spikes)} "
              f"spikes_out={len(run.spikes)} {dt:.3f} s ({ticks / dt:.0f} ticks/s)")


def step_cnn(rng, shape=(1, 16, 16)):
    """conv 3x3 x8, max pool 2x2, conv 3x3 x16, dense 10: step convolutions with ternary weights
    whose biases (about minus a third of the positive weights) keep a share of units firing, as
    tests/test_truenorth_cnn.py's ``cnn`` builds them."""
    import dataclasses

    from hwq.quant.qnet import InputFormat, QuantizedNetwork, QuantSettings

    def conv(s, c):
        layer = conv_layer(rng, s, c, (3, 3), "step", top=1, in_max=1)
        bias = -(np.maximum(layer.weight, 0).sum(axis=1) // 3) + rng.integers(-1, 2, c)
        return dataclasses.replace(layer, bias=bias)

    nodes = [conv(shape, 8)]
    nodes.append(pool_node(nodes[-1].out_shape, "max", (2, 2)))
    nodes.append(conv(nodes[-1].out_shape, 16))
    n = int(np.prod(nodes[-1].out_shape))
    nodes.append(make_layer(rng.integers(-1, 2, (10, n)), rng.integers(-6, 7, 10), "identity"))
    net = QuantizedNetwork(InputFormat(1, False, 1.0), tuple(nodes), "argmax", QuantSettings(bits=8), None,
                           input_shape=tuple(shape))
    net.validate()
    return net


def compare(program, x, loop_frames, repeats):
    """Seconds per frame of the emulator (all of ``x`` at once) and of ``loop_counts`` (its first
    ``loop_frames`` frames), medians of ``repeats``; the counts checked identical."""
    m = program.mapping
    drive = program.drive(x)
    emu, loop = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = program.emulator.run(m.ticks, drive)
        emu.append((time.perf_counter() - t0) / len(x))
        t0 = time.perf_counter()
        ref = [loop_counts(m.model, drive, m.ticks, f) for f in range(loop_frames)]
        loop.append((time.perf_counter() - t0) / loop_frames)
        for f in range(loop_frames):
            assert np.array_equal(ref[f], result.counts[:, f]), "loop and emulator differ"
    return statistics.median(emu), statistics.median(loop), result


def time_cnn(frames=256, loop_frames=4, repeats=3):
    from hwq.quant import reference

    rng = np.random.default_rng(1)
    net = step_cnn(rng)
    program = TrueNorthTarget().compile(net, fidelity_samples=0)
    x = rng.integers(0, 2, (frames, net.n_features))
    e, lp, result = compare(program, x, loop_frames, repeats)
    assert np.array_equal(program.forward(x), reference.forward(net, x)), "mapped CNN differs from the reference"
    m, rep = program.mapping, program.report
    spikes = result.counts.sum() / frames
    events = result.stats["synaptic_events"] / frames
    print(f"cnn 1x16x16 conv8 maxpool conv16 dense10: cores={len(m.model.cores)} ticks/frame={m.ticks} "
          f"splitters={rep['duplicated_neurons']} frames={frames} spikes/frame={spikes:.0f} "
          f"synaptic events/frame={events:.0f}")
    print(f"cnn emulator: {1 / e:.1f} frames/s; loop: {1 / lp:.2f} frames/s")
    print(f"truenorth_cnn_emulator_vs_loop={lp / e:.1f}")


def main(frames=256, loop_frames=2, repeats=3):
    time_cnn()
    rng = np.random.default_rng(0)
    net = random_net(rng, 784, [100], ["step"], 1, input_bits=1, out=10)
    program = TrueNorthTarget().compile(net)
    m = program.mapping
    x = rng.integers(0, 2, (frames, 784))
    e, lp, result = compare(program, x, loop_frames, repeats)
    events = result.stats["synaptic_events"] / frames
    print(f"cores={len(m.model.cores)} ticks/frame={m.ticks} frames={frames}")
    print(f"emulator: {1 / e:.1f} frames/s, {events / e:.3g} synaptic events/s")
    print(f"loop: {1 / lp:.2f} frames/s")
    time_real_files()
    print(f"truenorth_emulator_vs_loop={lp / e:.1f}")


if __name__ == "__main__":
    main()
