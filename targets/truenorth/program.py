"""The compiled truenorth program: the mapped cores, run by the emulator, frames in batches."""

from __future__ import annotations

import numpy as np

from hwq.errors import DataError, TargetError
from hwq.quant import reference
from hwq.quant.qnet import QuantizedNetwork

from .core import AXONS
from .emulator import Drive, Emulator, EmulatorConfig
from .mapping import Mapping, map_network
from .modelfile import dumps_model

NAME = "truenorth"
CHUNK = 256
CHIP_CORES = 4096


class TrueNorthProgram:
    """``forward``: integer scores ``sum_g count(E+) - count(E-)``, the output layer's
    accumulators, as the cores compute them."""

    target = NAME

    def __init__(self, net: QuantizedNetwork, options: dict):
        self.net, self.options = net, dict(options)
        fmt = net.input
        if fmt.signed:
            raise TargetError("the truenorth mapping needs unsigned input codes (a rate code has no sign)")
        self.mapping: Mapping = map_network(net, fmt.qmax)
        self.emulator = Emulator(self.mapping.model, EmulatorConfig(count_merges=True))
        self.exact = True
        self.port = {cid: k for k, cid in enumerate(self.mapping.model.ids.tolist())}
        self.report = self.build_report()
        self.artifacts = {"ticks": self.mapping.ticks, "cores": len(self.mapping.model.cores)}

    def drive(self, x_q: np.ndarray) -> Drive:
        """The rate code (code ``x``: spikes arriving on ticks 1..x on every copy) and the gates."""
        frames = len(x_q)
        drive = Drive(frames)
        per_core: dict[int, list] = {}
        for i, ports in enumerate(self.mapping.inputs):
            for cid, axon in ports:
                per_core.setdefault(self.port[cid], []).append((i, axon))
        for t in range(1, self.mapping.in_max + 1):
            on = x_q >= t
            if not on.any():
                continue
            for c, pairs in per_core.items():
                active = np.zeros((frames, AXONS), bool)
                idx = np.array(pairs)
                active[:, idx[:, 1]] = on[:, idx[:, 0]]
                drive.add(t, c, active)
        for t, cid, axon in self.mapping.gates:
            active = np.zeros((frames, AXONS), bool)
            active[:, axon] = True
            drive.add(t, self.port[cid], active)
        return drive

    def check(self, x_q) -> np.ndarray:
        x_q = np.asarray(x_q)
        if x_q.ndim != 2 or x_q.shape[1] != self.net.n_features:
            raise DataError(f"inputs must have shape (N, {self.net.n_features}), got {x_q.shape}")
        if np.any(x_q != np.round(x_q)):
            raise DataError("input codes must be integers")
        x_q = x_q.astype(np.int64)
        return np.clip(x_q, self.net.input.qmin, self.net.input.qmax)

    def forward(self, x_q) -> np.ndarray:
        x_q = self.check(x_q)
        out = np.zeros((len(x_q), self.net.layers[-1].weight.shape[0]), np.int64)
        for s in range(0, len(x_q), CHUNK):
            out[s:s + CHUNK] = self.run_chunk(x_q[s:s + CHUNK], s)
        return out

    def run_chunk(self, x_q: np.ndarray, offset: int) -> np.ndarray:
        result = self.emulator.run(self.mapping.ticks, self.drive(x_q), frame_offset=offset)
        if result.stats["merged"]:
            raise TargetError(f"{result.stats['merged']} spikes merged at one (core, axon, tick); "
                              "the mapping relies on every one")
        scores = np.zeros((len(x_q), self.net.layers[-1].weight.shape[0]), np.int64)
        for cid, j, u, sign in self.mapping.outputs:
            scores[:, u] += sign * result.counts[self.port[cid], :, j]
        return scores

    def trace(self, x_q) -> list[np.ndarray]:
        """Real pre-activations per layer. The mapping is exact, so the cores' accumulators are
        the reference's: ``z = acc * acc_scale`` (straight through the step)."""
        accs = reference.trace(self.net, self.check(x_q))
        return [acc * layer.acc_scale for acc, layer in zip(accs, self.net.layers)]

    def decide(self, scores) -> np.ndarray:
        return reference.decide(scores, self.net.output)

    def build_report(self) -> dict:
        m = self.mapping
        cores = m.model.cores
        axons = sum(int(c.crossbar.any(axis=1).sum()) for c in cores)
        neurons = sum(int(c.neurons.exists.sum()) for c in cores)
        layers = [dict(layer=p.index, kind=p.kind, exact=True, groups=p.groups, unit_blocks=p.blocks,
                       digit_table=list(p.table.values), axons_per_input=p.table.k, emitter_cores=len(p.cores),
                       accumulator_cores=len(p.h_cores), gate_axons=p.n_gate, drain_ticks=p.drain) for p in m.layers]
        return dict(target=NAME, cores=len(cores), axons=axons, neurons=neurons, duplicated_neurons=m.duplicated,
                    ticks_per_frame=m.ticks, chip_fraction=len(cores) / CHIP_CORES, encoding="rate",
                    decoding="spike counts E+ - E-", exact=True, layers=layers)


def export_model(program: TrueNorthProgram, path) -> None:
    """Write the mapped cores as an IBM-format model file (``hwq truenorth run`` reads it)."""
    from hwq.files.atomic import atomic_write_bytes

    atomic_write_bytes(path, dumps_model(program.mapping.model).encode())
