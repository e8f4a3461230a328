"""The TrueNorth emulator against the spec's equations (shared/specs/truenorth.md section 3):
tonic vectors, the reset table, leak modes, delays and merging, the Eedn neuron, stochastic
modes, and against an independent per-neuron loop (tests/truenorth_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.truenorth import Core, Drive, Emulator, EmulatorConfig, Model, Neurons, SpikeInput, run_model
from truenorth_reference import run as reference_run


def neurons(n=1, **params) -> Neurons:
    """``n`` neurons (the rest absent) with the given parameters; defaults: weights 0, alpha 1,
    gamma 0, kappa 0, R 0, destination unused."""
    base = Neurons.empty()
    cols = {k: np.array(getattr(base, k)) for k in Neurons.DTYPES}
    cols["exists"][:n] = True
    cols["alpha"][:n] = 1
    for key, value in params.items():
        cols[key][:n] = value
    return Neurons(**cols)


def core(cid=0, crossbar=None, axon_type=None, **params) -> Core:
    w = np.zeros((256, 256), bool) if crossbar is None else crossbar
    g = np.zeros(256, np.int8) if axon_type is None else axon_type
    return Core(cid, w, g, neurons(**params))


def fire_ticks(model, ticks, host=(), core_id=0, neuron=0):
    spikes = SpikeInput(*(np.array([h[k] for h in host], np.int64) for k in range(3)))
    rows = run_model(model, spikes, ticks).spikes
    return [t for t, c, j in rows.tolist() if c == core_id and j == neuron]


def period_phase(ts):
    period = ts[1] - ts[0]
    assert all(b - a == period for a, b in zip(ts, ts[1:]))
    return period, (ts[0] + 1) % period


@pytest.mark.parametrize("alpha,leak,v0,driven,expect", [
    (10, 1, 0, False, (10, 0)),
    (10, 1, 1, False, (10, 9)),
    (11, 2, 0, False, (6, 0)),
    (10, -1, 0, True, (5, 1)),
])
def test_tonic_vectors(alpha, leak, v0, driven, expect):
    """The pytruenorth README tonic neurons (spec section 6): V >= alpha, leak added in the
    same tick after integration, an input stamped t integrates at t + 1."""
    w = np.zeros((256, 256), bool)
    w[0, 0] = True
    model = Model((core(crossbar=w, alpha=alpha, leak=leak, v0=v0, weight=[3, 0, 0, 0]),))
    host = [(t, 0, 0) for t in range(60)] if driven else []
    assert period_phase(fire_ticks(model, 60, host)) == expect


# gamma, kappa, V after the input: positive reset (alpha 10) and negative reset (beta 5)
RESETS = [
    (0, 0, 13, 7, -9, -7),   # R = 7: spike -> R; below -beta -> -R
    (0, 1, 13, 7, -9, -5),   # -> -beta
    (1, 0, 13, 3, -9, -4),   # V - alpha; V + beta
    (1, 1, 13, 3, -9, -5),
    (2, 0, 13, 13, -9, -9),  # non-reset
    (2, 1, 13, 13, -9, -5),
]


@pytest.mark.parametrize("gamma,kappa,vpos,after_pos,vneg,after_neg", RESETS)
def test_reset_table(gamma, kappa, vpos, after_pos, vneg, after_neg):
    for v0, expect, fires in ((vpos, after_pos, True), (vneg, after_neg, False)):
        model = Model((core(alpha=10, beta=5, gamma=gamma, kappa=kappa, reset=7, v0=v0),))
        drive = Drive(1)
        result = Emulator(model).run(1, drive)
        assert result.v[0, 0, 0] == expect
        assert bool(result.counts[0, 0, 0]) == fires


@pytest.mark.parametrize("eps", [False, True])
@pytest.mark.parametrize("lam", [-3, 3])
@pytest.mark.parametrize("v0", [-20, 0, 20])
def test_deterministic_leak_modes(eps, lam, v0):
    """Omega = 1 - eps + eps sgn(V): with eps the leak follows sgn(V) (no ringing fix)."""
    model = Model((core(alpha=100, beta=100, kappa=0, gamma=2, leak=lam, leak_reversal=eps, v0=v0),))
    v = Emulator(model).run(1, Drive(1)).v[0, 0, 0]
    omega = np.sign(v0) if eps else 1
    assert v == v0 + omega * lam


def test_epsilon_leak_crosses_zero():
    """No ringing fix: V = 1 with a -3 reversal leak ends at -2 and then rises back."""
    model = Model((core(alpha=100, beta=100, gamma=2, leak=-3, leak_reversal=True, v0=1),))
    assert Emulator(model).run(1, Drive(1)).v[0, 0, 0] == -2
    assert Emulator(model).run(2, Drive(1)).v[0, 0, 0] == 1


def test_saturation_at_v_bits():
    model = Model((core(alpha=2**18 - 1, gamma=2, leak=255, v0=2**19 - 100),))
    assert Emulator(model).run(3, Drive(1)).v[0, 0, 0] == 2**19 - 1
    assert Emulator(model, EmulatorConfig(v_bits=24)).run(3, Drive(1)).v[0, 0, 0] == 2**19 - 100 + 765


def test_delays_and_merging():
    """Neuron 0 fires at every tick (leak 1, alpha 1); spikes of neurons 0 and 1 reach core 1
    axon 5 after delays 3 and 3 (merged) and neuron 2 with delay 7."""
    src = core(0, n=3, leak=1, dest_core=1, dest_axon=[5, 5, 6], dest_delay=[3, 3, 7])
    w = np.zeros((256, 256), bool)
    w[5, 0] = w[6, 1] = True
    dst = core(1, crossbar=w, n=2, weight=[1, 0, 0, 0], alpha=100, gamma=2)
    model = Model((src, dst))
    result = Emulator(model).run(10, Drive(1))
    # axon 5 receives one (merged) spike per tick from t = 3, axon 6 from t = 7
    assert result.v[1, 0, 0] == 7 and result.v[1, 0, 1] == 3
    assert result.stats["merged"] == 10  # counted when sent: ticks 0..9
    assert fire_ticks(model, 5, core_id=0, neuron=2) == [0, 1, 2, 3, 4]


def test_host_spikes_integrate_after_default_delay():
    w = np.zeros((256, 256), bool)
    w[3, 0] = True
    model = Model((core(crossbar=w, weight=[1, 0, 0, 0]),))
    spikes = SpikeInput(np.array([2, 2]), np.array([0, 9]), np.array([3, 3]), delay=4)
    run = run_model(model, spikes, 10)
    assert run.spikes.tolist() == [[6, 0, 0]]
    assert run.stats["inputs_dropped_absent"] == 1


def test_eedn_neuron_is_memoryless():
    """alpha 1, beta 0, kappa 1, gamma 0, R 0, leak b: y(t) = [sum W x(t) + b >= 1] at every
    tick, whatever came before (spec section 7a)."""
    rng = np.random.default_rng(0)
    w = np.zeros((256, 256), bool)
    w[:40, :30] = rng.random((40, 30)) < 0.5
    g = np.zeros(256, np.int8)
    g[1:40:2] = 1
    bias = rng.integers(-4, 4, 30)
    model = Model((core(crossbar=w, axon_type=g, n=30, weight=[-1, 1, 0, 0], leak=bias, beta=0, kappa=1),))
    frames, ticks = 8, 12
    x = rng.random((ticks, frames, 256)) < 0.4
    x[:, :, 40:] = False
    drive = Drive(frames)
    for t in range(ticks):
        drive.add(t, 0, x[t])
    result = Emulator(model).run(ticks, drive, record_spikes=True)
    weff = model.cores[0].effective_weights()[:, :30].astype(int)
    expect = (np.einsum("tfi,ij->tfj", x.astype(int), weff) + bias >= 1)
    got = np.zeros_like(expect)
    for t, _, f, j in result.spikes.tolist():
        got[t, f, j] = True
    assert np.array_equal(got, expect)


def random_model(rng, stochastic=False, n_cores=2):
    """Two cores wired to each other with random parameters from every mode."""
    cores = []
    for cid in range(n_cores):
        w = rng.random((256, 256)) < 0.05
        g = rng.integers(0, 4, 256).astype(np.int8)
        p = dict(n=256, weight=rng.integers(-6, 7, (256, 4)), leak=rng.integers(-2, 3, 256),
                 leak_reversal=rng.random(256) < 0.3, alpha=rng.integers(1, 12, 256),
                 beta=rng.integers(0, 12, 256), gamma=rng.integers(0, 3, 256), kappa=rng.random(256) < 0.5,
                 reset=rng.choice([0, 1, 3, -3], 256), v0=rng.integers(-5, 5, 256),
                 dest_core=rng.choice([0, 1, -1, -32, 7], 256), dest_axon=rng.integers(0, 256, 256),
                 dest_delay=rng.integers(1, 16, 256))
        if stochastic:
            p.update(stochastic=rng.random((256, 4)) < 0.3, stochastic_leak=rng.random(256) < 0.3,
                     tm=rng.integers(0, 4, 256) * (rng.random(256) < 0.3))
        cores.append(Core(cid, w, g, neurons(**p), rng_seed=int(rng.integers(0, 2**32))))
    return Model(tuple(cores))


@pytest.mark.parametrize("stochastic", [False, True])
def test_against_independent_loop(stochastic):
    rng = np.random.default_rng(1 + stochastic)
    model = random_model(rng, stochastic)
    host = [(int(t), int(c), int(a)) for t, c, a in zip(rng.integers(0, 12, 300), rng.integers(0, 2, 300),
                                                        rng.integers(0, 256, 300))]
    spikes = SpikeInput(np.array([h[0] for h in host]), np.array([h[1] for h in host]), np.array([h[2] for h in host]))
    got = run_model(model, spikes, 14).spikes.tolist()
    expect = reference_run(model, [(t + 1, c, a) for t, c, a in host], 14)
    assert len(expect) > 100
    assert got == [list(r) for r in expect]


def test_frames_are_independent_and_batched():
    """Frame f of a batch equals the same frame run alone (frame_offset addresses the draws)."""
    rng = np.random.default_rng(5)
    model = random_model(rng, stochastic=True)
    x = rng.random((6, 4, 256)) < 0.1
    batch = Drive(4)
    for t in range(6):
        batch.add(t, 0, x[t])
    whole = Emulator(model).run(10, batch).counts
    for f in range(4):
        one = Drive(1)
        for t in range(6):
            one.add(t, 0, x[t, f:f + 1])
        assert np.array_equal(Emulator(model).run(10, one, frame_offset=f).counts[:, 0], whole[:, f])


def test_stochastic_synapse_rate():
    """A stochastic synapse of weight s adds sgn(s) with probability (|s| + 1) / 256."""
    w = np.zeros((256, 256), bool)
    w[0, :] = True
    model = Model((Core(0, w, np.zeros(256, np.int8), neurons(n=256, weight=[63, 0, 0, 0], stochastic=[True] * 4,
                                                             alpha=10**5, gamma=2), rng_seed=7),))
    drive = Drive(50)
    drive.add(0, 0, np.ones((50, 256), bool) * (np.arange(256) == 0))
    v = Emulator(model).run(1, drive).v[0]
    assert abs(v.mean() - 64 / 256) < 0.02
