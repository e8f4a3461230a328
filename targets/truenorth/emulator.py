"""The batched TrueNorth emulator: every core of a :class:`Model`, tick by tick, for many frames.

Each frame is an independent run of the whole model from its initial state (``V`` of the
neuron types, empty schedulers). One tick (shared/specs/truenorth.md section 6)::

    A = sched[t mod 16] | host spikes arriving at t;  clear sched[t mod 16]
    per core: syn = A @ W_eff   (eq. 1; stochastic synapses add sgn(s) [|s| >= rho])
              neuron update, eqs. 2-3 (kernels.neuron_step)
    route: spike of (core, j) at t -> sched[(t + d_j) mod 16][dest core, dest axon] = 1

Spikes meeting at one (core, axon, tick) merge into one (counted in ``stats["merged"]``).
``destCore == -1`` sends nowhere; other negative destinations are off-chip outputs; a
destination core that is not in the model drops the spike (``stats["dropped_absent"]``).

Fast paths, all exact: the synaptic product adds only the rows of active axons (work is
proportional to the spikes, int32, no rounding); a leak-free deterministic core with no input
whose every potential lies in ``[-beta, alpha)`` is at a fixed point and is skipped until a
spike reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwq.errors import DataError, UsageError

from . import kernels, prng
from .core import AXONS, NEURONS, SLOTS, Model

ON_CHIP_UNUSED, OFF_CHIP, ABSENT = -1, -2, -3


@dataclass(frozen=True)
class EmulatorConfig:
    """Choices where the public sources are silent (docs/truenorth.md).

    ``v_bits``: the membrane potential is a ``v_bits`` signed integer and saturates at
    ``[-2^(v_bits-1), 2^(v_bits-1) - 1]`` after integration, after the leak and after the
    reset. ``count_merges``: count merged spikes (costs a sort per tick)."""

    v_bits: int = 20
    count_merges: bool = True

    def __post_init__(self):
        if not 2 <= self.v_bits <= 31:
            raise UsageError(f"v_bits must be in 2..31, got {self.v_bits}")

    @property
    def v_range(self) -> tuple[int, int]:
        return -(2 ** (self.v_bits - 1)), 2 ** (self.v_bits - 1) - 1


@dataclass
class RunResult:
    """``counts[c, f, j]``: spikes of neuron ``j`` of core ``cores[c]`` in frame ``f``;
    ``spikes`` (when recorded): rows ``(tick, core position, frame, neuron)``."""

    counts: np.ndarray
    v: np.ndarray
    stats: dict = field(default_factory=dict)
    spikes: np.ndarray | None = None


class Drive:
    """Host spikes: ``add(tick, core_pos, active)`` with ``active`` (frames, 256) bool, the
    axons of that core active at that (arrival) tick."""

    def __init__(self, frames: int):
        self.frames = frames
        self.by_tick: dict[int, dict[int, np.ndarray]] = {}
        self.count = 0

    def add(self, tick: int, core: int, active: np.ndarray) -> None:
        active = np.asarray(active, bool)
        if active.shape != (self.frames, AXONS):
            raise DataError(f"host spikes for one core and tick must have shape ({self.frames}, {AXONS})")
        slot = self.by_tick.setdefault(int(tick), {})
        slot[core] = slot[core] | active if core in slot else active.copy()
        self.count += int(active.sum())


class Emulator:
    def __init__(self, model: Model, config: EmulatorConfig | None = None):
        self.model, self.config = model, config or EmulatorConfig()
        self.cores = model.cores
        pos = model.index()
        self.weights, self.stoch_mask, self.rowcount, self.params = [], [], [], []
        self.dest, self.stoch, self.quiet = [], [], []
        for core in self.cores:
            n = core.neurons
            w = core.effective_weights()
            stoch_syn = core.crossbar & n.stochastic[:, core.axon_type].T  # [i, j]
            self.weights.append(np.ascontiguousarray(np.where(stoch_syn, 0, w), np.int32))
            self.stoch_mask.append(stoch_syn if stoch_syn.any() else None)
            self.rowcount.append(core.crossbar.sum(axis=1).astype(np.int64))
            self.params.append(tuple(np.ascontiguousarray(a) for a in (
                n.exists, n.leak, n.stochastic_leak, n.leak_reversal, n.alpha, n.beta, n.gamma,
                n.kappa, n.reset)))
            det = bool(np.all(n.deterministic | ~n.exists))
            self.stoch.append(not det)
            self.quiet.append(det and not np.any(n.leak[n.exists]))
            self.dest.append(self.routing(core, pos))

    @staticmethod
    def routing(core, pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = core.neurons
        dc = n.dest_core
        where = np.array([pos.get(int(c), ABSENT) if c >= 0 else (ON_CHIP_UNUSED if c == -1 else OFF_CHIP)
                          for c in dc], np.int64)
        where[~n.exists] = ON_CHIP_UNUSED
        return where, n.dest_axon.astype(np.int64), n.dest_delay.astype(np.int64)

    def run(self, ticks: int, drive: Drive, record_spikes: bool = False, frame_offset: int = 0,
            progress=None) -> RunResult:
        """Run ticks ``0 .. ticks - 1`` for ``drive.frames`` frames; ``progress(t, ticks)`` hears of
        each finished tick (``t`` ticks done)."""
        frames, n_cores = drive.frames, len(self.cores)
        vmin, vmax = self.config.v_range
        v = np.empty((n_cores, frames, NEURONS), np.int32)
        for c, core in enumerate(self.cores):
            v[c] = core.neurons.v0
        sched = np.zeros((n_cores, SLOTS, frames, AXONS), bool)
        counts = np.zeros((n_cores, frames, NEURONS), np.int32)
        syn = np.zeros((frames, NEURONS), np.int32)
        zero = np.zeros((frames, NEURONS), np.int32)
        fire = np.zeros((frames, NEURONS), bool)
        idle = np.zeros(n_cores, bool)
        dummy = kernels.step_arrays(NEURONS)
        stats = dict(input_spikes=drive.count, merged=0, offchip=0, dropped_absent=0, synaptic_events=0,
                     spikes=0, core_ticks=0, core_ticks_skipped=0)
        late = sum(int(a.sum()) for t, d in drive.by_tick.items() if t >= ticks for a in d.values())
        stats["inputs_after_last_tick"] = late
        recorded = []
        for t in range(ticks):
            slot = t % SLOTS
            host = drive.by_tick.get(t, {})
            for c, active in host.items():
                if self.config.count_merges:
                    stats["merged"] += int((sched[c, slot] & active).sum())
                sched[c, slot] |= active
            for c in range(n_cores):
                active = sched[c, slot]
                has_input = bool(active.any())
                if idle[c] and not has_input:
                    stats["core_ticks_skipped"] += 1
                    continue
                stats["core_ticks"] += 1
                if has_input:
                    kernels.integrate_sparse(active, self.weights[c], syn)
                    stats["synaptic_events"] += int(active.sum(axis=0) @ self.rowcount[c])
                    if self.stoch_mask[c] is not None:
                        syn += self.stochastic_synapses(c, active, t, frame_offset)
                    cur = syn
                    active[:] = False
                else:
                    cur = zero
                rho_leak, eta = self.draws(c, t, frames, frame_offset) if self.stoch[c] else dummy
                kernels.neuron_step(v[c], cur, *self.params[c], rho_leak, eta, self.stoch[c], vmin, vmax, fire)
                if self.quiet[c]:
                    idle[c] = self.settled(c, v[c])
                if fire.any():
                    idle[c] = False
                    counts[c] += fire
                    f_idx, j_idx = np.nonzero(fire)
                    stats["spikes"] += len(f_idx)
                    if record_spikes:
                        recorded.append(np.stack([np.full_like(f_idx, t), np.full_like(f_idx, c), f_idx, j_idx], 1))
                    self.route(c, t, f_idx, j_idx, sched, stats, idle)
            if progress is not None:
                progress(t + 1, ticks)
        spikes = np.concatenate(recorded) if recorded else np.zeros((0, 4), np.int64)
        return RunResult(counts, v, stats, spikes if record_spikes else None)

    def settled(self, c: int, v: np.ndarray) -> bool:
        """Whether core ``c`` (leak-free, deterministic) is at a fixed point without input."""
        exists, alpha, beta = self.params[c][0], self.params[c][4], self.params[c][5]
        x = v[:, exists]
        return bool(np.all((x < alpha[exists]) & (x >= -beta[exists])))

    def route(self, c, t, f_idx, j_idx, sched, stats, idle) -> None:
        where, axon, delay = self.dest[c]
        dc = where[j_idx]
        stats["offchip"] += int(np.count_nonzero(dc == OFF_CHIP))
        stats["dropped_absent"] += int(np.count_nonzero(dc == ABSENT))
        ok = dc >= 0
        if not ok.any():
            return
        dc, f, ax, sl = dc[ok], f_idx[ok], axon[j_idx[ok]], (t + delay[j_idx[ok]]) % SLOTS
        if self.config.count_merges:
            lin = ((dc * SLOTS + sl) * sched.shape[2] + f) * AXONS + ax
            stats["merged"] += len(lin) - len(np.unique(lin)) + int(sched[dc, sl, f, ax].sum())
        sched[dc, sl, f, ax] = True
        idle[np.unique(dc)] = False

    def stochastic_synapses(self, c: int, active: np.ndarray, t: int, frame_offset: int) -> np.ndarray:
        """``sum_i A_i w_ij b_j^{G_i} sgn(s_j^{G_i}) [|s_j^{G_i}| >= rho]`` for the stochastic
        synapses of core ``c`` (one draw per active synapse)."""
        core = self.cores[c]
        mask = self.stoch_mask[c]
        s = core.neurons.weight[:, core.axon_type].T  # [i, j]
        out = np.zeros(active.shape, np.int32)
        f_idx, i_idx = np.nonzero(active)
        if len(f_idx) == 0:
            return out
        j = np.arange(NEURONS)
        u = prng.draws(core.rng_seed, frame_offset + f_idx[:, None], t, prng.SYNAPSE, j[None, :], i_idx[:, None])
        add = np.where(mask[i_idx] & (np.abs(s[i_idx]) >= prng.rho8(u)), np.sign(s[i_idx]), 0)
        np.add.at(out, f_idx, add.astype(np.int32))
        return out

    def draws(self, c: int, t: int, frames: int, frame_offset: int):
        core = self.cores[c]
        f = frame_offset + np.arange(frames)[:, None]
        j = np.arange(NEURONS)[None, :]
        rho_leak = prng.rho8(prng.draws(core.rng_seed, f, t, prng.LEAK, j))
        eta = prng.threshold_noise(prng.draws(core.rng_seed, f, t, prng.THRESHOLD, j), core.neurons.tm[None, :])
        return np.ascontiguousarray(rho_leak), np.ascontiguousarray(eta)
