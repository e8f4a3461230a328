"""A per-neuron, per-axon pure-Python loop of shared/specs/truenorth.md section 3, written
independently of the emulator (only the addressed draws of ``prng`` are shared), for tests."""

from __future__ import annotations

from hwq_targets.truenorth import prng


def sgn(x: int) -> int:
    return (x > 0) - (x < 0)


def draw(seed, frame, tick, purpose, j, i=0) -> int:
    return int(prng.draws(seed, frame, tick, purpose, j, i))


def neuron_tick(n, j, v, inputs, seed, frame, tick, lo, hi):
    """One tick of neuron ``j``; ``inputs`` = the axon types of its active synapses (in axon
    order, as (axon, type)). Returns (v, fired)."""
    sat = lambda x: min(max(x, lo), hi)  # noqa: E731
    for i, g in inputs:
        s = int(n.weight[j, g])
        if n.stochastic[j, g]:
            rho = draw(seed, frame, tick, prng.SYNAPSE, j, i) & 255
            v += sgn(s) * (abs(s) >= rho)
        else:
            v += s
    v = sat(v)
    lam = int(n.leak[j])
    if n.stochastic_leak[j]:
        rho = draw(seed, frame, tick, prng.LEAK, j) & 255
        lam = sgn(lam) * (abs(lam) >= rho)
    omega = sgn(v) if n.leak_reversal[j] else 1
    v = sat(v + omega * lam)
    eta = (draw(seed, frame, tick, prng.THRESHOLD, j) >> 8) & (2 ** int(n.tm[j]) - 1)
    alpha, beta, gamma, kappa, r = int(n.alpha[j]), int(n.beta[j]), int(n.gamma[j]), bool(n.kappa[j]), int(n.reset[j])
    fired = False
    if v >= alpha + eta:
        fired = True
        v = [r, v - (alpha + eta), v][gamma]
    elif v < -(beta if kappa else beta + eta):
        v = -beta if kappa else [-r, v + (beta + eta), v][gamma]
    return sat(v), fired


def run(model, host, ticks, frame=0, v_bits=20):
    """``host``: iterable of (arrival tick, core id, axon). Returns sorted (tick, core id, j)."""
    lo, hi = -(2 ** (v_bits - 1)), 2 ** (v_bits - 1) - 1
    cores = {c.id: c for c in model.cores}
    pending = set((t, c, a) for t, c, a in host if c in cores)
    v = {c.id: [int(x) for x in c.neurons.v0] for c in model.cores}
    out = []
    for t in range(ticks):
        fired_now = []
        for core in model.cores:
            n = core.neurons
            active = [a for a in range(256) if (t, core.id, a) in pending]
            for j in range(256):
                if not n.exists[j]:
                    continue
                inputs = [(i, int(core.axon_type[i])) for i in active if core.crossbar[i, j]]
                v[core.id][j], f = neuron_tick(n, j, v[core.id][j], inputs, core.rng_seed, frame, t, lo, hi)
                if f:
                    fired_now.append((core, j))
        for core, j in fired_now:
            out.append((t, core.id, j))
            dc = int(core.neurons.dest_core[j])
            if dc >= 0:
                pending.add((t + int(core.neurons.dest_delay[j]), dc, int(core.neurons.dest_axon[j])))
    return sorted(out)
