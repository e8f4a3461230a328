"""The compiled truenorth program: the mapped cores, run by the emulator, frames in batches."""

from __future__ import annotations

import hashlib

import numpy as np

from hwq.errors import DataError, LimitError, TargetError, UsageError
from hwq.ir import activations
from hwq.quant import reference
from hwq.quant.qnet import QPool, QuantizedNetwork
from hwq.target.protocol import refuse_outside_format

from . import prng
from .conv_mapping import dense_view
from .core import AXONS, CHIP_CORES
from .emulator import Drive, Emulator, EmulatorConfig
from .mapping import Mapping, map_network
from .modelfile import dumps_model
from .validate import validate

NAME = "truenorth"
CHUNK = 256
INPUT_DRAW = 3  # prng purpose of the stochastic input code
ENCODINGS = ("rate", "binary", "stochastic")
DECODINGS = ("count", "vote")
DEFAULTS = dict(step="auto", relu="exact", encoding="rate", threshold=None, seed=0, fidelity_samples=64,
                decoding="count")
CHOICES = dict(step=("auto", "count"), relu=("exact", "rate", "refuse"), encoding=ENCODINGS, decoding=DECODINGS)


def resolve(options: dict) -> dict:
    opts = {**DEFAULTS, **options}
    for key, allowed in CHOICES.items():
        if opts[key] not in allowed:
            raise UsageError(f"truenorth option {key}={opts[key]!r} is not one of {', '.join(allowed)}")
    for key in ("seed", "fidelity_samples"):
        if not isinstance(opts[key], (int, np.integer)) or opts[key] < 0:
            raise UsageError(f"truenorth option {key} must be an integer >= 0, got {opts[key]!r}")
    thr = opts["threshold"]
    if thr is not None and (not isinstance(thr, (int, np.integer)) or thr < 1):
        raise UsageError(f"truenorth option threshold must be an integer >= 1, got {opts['threshold']!r}")
    return opts


class TrueNorthProgram:
    """``forward``: integer scores ``sum_g count(E+) - count(E-)``, the output layer's
    accumulators, as the cores compute them."""

    target = NAME

    def __init__(self, net: QuantizedNetwork, options: dict, progress=None):
        self.net = net
        self.options = {k: v for k, v in options.items()}
        opts = self.opts = resolve(options)
        fmt = net.input
        self.view = dense_view(net)  # convolutions and poolings as dense layers, with their windows
        self.signed = fmt.signed
        self.q = max(fmt.qmax, -fmt.qmin)  # largest count of one input column
        enc = opts["encoding"]
        bias0 = None
        if enc == "binary":
            self.thr = int(opts["threshold"] or (self.q + 1) // 2)
            if net.layers[0].activation_kind is not activations.STEP or len(net.layers) < 2:
                raise LimitError("encoding=binary needs a step first layer (its spike stands for the code "
                                 f"{self.q}: [W x + b > 0] becomes [W s + ceil(b / {self.q}) > 0])")
            bias0 = -((-np.asarray(self.view.net.layers[0].bias, np.int64)) // self.q)
            in_max = 1
        else:
            self.thr = None
            in_max = self.q
        self.mapping: Mapping = map_network(self.view.net, in_max, signed_split=self.signed, step=opts["step"],
                                            relu=opts["relu"], layer0_bias=bias0, windows=self.view.windows,
                                            progress=progress)
        validate(self.mapping.model, self.mapping.host_ports)
        self.emulator = Emulator(self.mapping.model, EmulatorConfig(count_merges=True))
        encoding_exact = {"rate": True, "binary": self.q == 1 and self.thr == 1, "stochastic": self.q == 1}[enc]
        self.vote = opts["decoding"] == "vote"
        self.exact = encoding_exact and not self.vote and all(p.exact for p in self.mapping.layers)
        self.port = {cid: k for k, cid in enumerate(self.mapping.model.ids.tolist())}
        self.relu = {p.index: p for p in self.mapping.layers if p.scheme == "count-relu"}
        self.report = self.build_report(encoding_exact)
        self.artifacts = {"ticks": self.mapping.ticks, "cores": len(self.mapping.model.cores),
                          "digest": self.digest()}
        n = int(opts["fidelity_samples"])
        if self.exact:
            self.report["fidelity"] = dict(value=1.0, inputs=0, source="by construction: the mapping is exact",
                                           against="hwq.quant.reference (the sim target's decisions)")
        elif n:
            rng = np.random.default_rng(int(opts["seed"]))
            x = rng.integers(fmt.qmin, fmt.qmax + 1, (n, net.n_features))
            x[0], x[-1] = fmt.qmax, fmt.qmin
            self.measure_fidelity(x, f"{n} random input codes (seed {int(opts['seed'])}, extremes included)")

    def digest(self) -> str:
        h = hashlib.sha256()
        for c in self.mapping.model.cores:
            h.update(np.packbits(c.crossbar).tobytes())
            h.update(c.neurons.weight.tobytes() + c.neurons.v0.tobytes() + c.neurons.alpha.tobytes())
        return h.hexdigest()[:16]

    # -- inputs ------------------------------------------------------------------------------
    def columns(self, x_q: np.ndarray) -> np.ndarray:
        """Counts per input column: ``x`` (signed: ``x+`` then ``x-``); binary: ``[x >= thr]``."""
        cols = np.concatenate([np.maximum(x_q, 0), np.maximum(-x_q, 0)], axis=1) if self.signed else x_q
        if self.thr is not None:
            cols = (cols >= self.thr).astype(np.int64)
        return cols

    def spikes_on(self, cols: np.ndarray, t: int, offset: int) -> np.ndarray:
        """Which columns spike at arrival tick ``t`` (1..in_max)."""
        if self.opts["encoding"] != "stochastic":
            return cols >= t  # rate code: count c -> ticks 1..c
        n = self.mapping.in_max
        f = offset + np.arange(len(cols))[:, None]
        u = prng.draws(int(self.opts["seed"]), f, t, INPUT_DRAW, 0)
        with np.errstate(over="ignore"):
            u = prng.mix(u ^ (np.arange(cols.shape[1], dtype=np.uint64) * prng.GOLDEN))
        return (u >> np.uint64(32)).astype(np.int64) * n < cols.astype(np.int64) << 32  # p = c / n

    def drive(self, x_q: np.ndarray, offset: int = 0) -> Drive:
        """The input code on every copy of every column, and the host's gate and bias spikes."""
        cols = self.columns(x_q)
        frames = len(x_q)
        drive = Drive(frames)
        per_core: dict[int, list] = {}
        for i, ports in enumerate(self.mapping.inputs):
            for cid, axon in ports:
                per_core.setdefault(self.port[cid], []).append((i, axon))
        idx = {c: np.array(pairs) for c, pairs in per_core.items()}
        for t in range(1, self.mapping.in_max + 1):
            on = self.spikes_on(cols, t, offset)
            if not on.any():
                continue
            for c, pairs in idx.items():
                active = np.zeros((frames, AXONS), bool)
                active[:, pairs[:, 1]] = on[:, pairs[:, 0]]
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
        if not np.issubdtype(x_q.dtype, np.number) or np.any(x_q != np.round(x_q)):
            raise DataError("input codes must be integers")
        refuse_outside_format(NAME, self.net.input, x_q)  # the rate code holds at most q spikes per column
        return x_q.astype(np.int64)

    # -- running -----------------------------------------------------------------------------
    def forward(self, x_q, progress=None) -> np.ndarray:
        """Scores (N, n_out); ``progress(n)`` is told each chunk of ``n`` inputs as it finishes
        (the emulator runs for minutes on a test set)."""
        x_q = self.check(x_q)
        out = np.zeros((len(x_q), self.net.layers[-1].n_out), np.int64)
        for s in range(0, len(x_q), CHUNK):
            out[s:s + CHUNK] = self.run_chunk(x_q[s:s + CHUNK], s)
            if progress is not None:
                progress(len(out[s:s + CHUNK]))
        return out

    def run_chunk(self, x_q: np.ndarray, offset: int) -> np.ndarray:
        result = self.emulator.run(self.mapping.ticks, self.drive(x_q, offset), frame_offset=offset)
        if result.stats["merged"]:
            raise TargetError(f"{result.stats['merged']} spikes merged at one (core, axon, tick); "
                              "the mapping relies on every one")
        if getattr(self, "tally", None) is not None:  # measure_fidelity's activity count
            self.tally["frames"] += len(x_q)
            for key in ("input_spikes", "spikes", "synaptic_events"):
                self.tally[key] += int(result.stats[key])
        scores = np.zeros((len(x_q), self.net.layers[-1].n_out), np.int64)
        for cid, j, u, sign in self.mapping.outputs:
            count = result.counts[self.port[cid], :, j]
            scores[:, u] += sign * ((count > 0) if self.vote else count)
        return scores

    def mapped_accs(self, x_q) -> list[np.ndarray]:
        """The accumulators the cores compute, in numpy: the reference's arithmetic on the
        encoded inputs (binary: ``thr``-binarized codes times ``q``; stochastic: the codes, the
        spike counts' expectation) with each ReLU as its mapped ``clip(floor((m acc + h) / a),
        0, A)``. Equal to ``reference.trace`` when the program is exact."""
        x_q = self.check(x_q)
        if self.thr is not None:
            cols = self.columns(x_q) * self.q
            n = self.net.n_features
            h = cols[:, :n] - cols[:, n:] if self.signed else cols
        else:
            h = x_q
        accs = []
        for li, layer in enumerate(self.net.layers):
            if isinstance(layer, QPool):  # on spikes: OR or a threshold count, as the reference pools
                h = reference.pool(layer, h)
                accs.append(h)
                continue
            acc = reference.accumulate(layer, h)
            accs.append(acc)
            if li in self.relu:
                p = self.relu[li].relu
                h = np.clip(np.floor_divide(p["m"] * acc + p["h"], p["a"]), 0, p["act_max"])
            else:
                h = reference.activate(layer, acc)
        return accs

    def trace(self, x_q) -> list[np.ndarray]:
        """Real pre-activations per layer, ``z = acc * acc_scale`` of the accumulators the cores
        compute (``mapped_accs``; the reference's when exact): straight through the step, the
        rate code and the rate-coded ReLU."""
        accs = self.mapped_accs(x_q)
        return [acc * layer.unit_scale for acc, layer in zip(accs, self.net.layers)]

    def decide(self, scores) -> np.ndarray:
        return reference.decide(scores, self.net.output)

    def fidelity(self, x_q, progress=None) -> float:
        """Share of inputs whose decision equals the reference's (= the ``sim`` target's)."""
        x_q = self.check(x_q)
        if len(x_q) == 0:
            return 1.0
        ref = reference.decide(reference.forward(self.net, x_q), self.net.output)
        return float(np.mean(self.decide(self.forward(x_q, progress)) == ref))

    def measure_fidelity(self, x_q, source: str = "given inputs", progress=None) -> float:
        """``fidelity(x_q)``, recorded in ``report["fidelity"]``; the emulator's spikes and
        synaptic events per frame on the same inputs in ``report["activity"]``."""
        self.tally = dict(frames=0, input_spikes=0, spikes=0, synaptic_events=0)
        try:
            value = self.fidelity(x_q, progress)
            tally = self.tally
        finally:
            self.tally = None
        self.report["fidelity"] = dict(value=value, inputs=int(len(x_q)), source=source,
                                       against="hwq.quant.reference (the sim target's decisions)")
        if tally["frames"]:
            per = {k: tally[k] / tally["frames"] for k in ("input_spikes", "spikes", "synaptic_events")}
            self.report["activity"] = dict(
                frames=tally["frames"], source=source, input_spikes_per_frame=per["input_spikes"],
                spikes_per_frame=per["spikes"], synaptic_events_per_frame=per["synaptic_events"],
                counted="by hwq's emulator: host spikes in, neuron spikes (every core), and synaptic events "
                        "(an active axon times the neurons its crossbar row connects); no energy estimate")
        return value

    # -- report ------------------------------------------------------------------------------
    def build_report(self, encoding_exact: bool) -> dict:
        m = self.mapping
        cores = m.model.cores
        axons = sum(int(c.crossbar.any(axis=1).sum()) for c in cores)
        neurons = sum(int(c.neurons.exists.sum()) for c in cores)
        layers = []
        per_layer: dict[int, list] = {}
        for _, li, ax, nn, cp in m.core_rows:
            per_layer.setdefault(li, []).append((ax, nn, cp))
        for p in m.layers:
            mine = per_layer.get(p.index, [])
            row = dict(layer=p.index, node=self.view.sources[p.index], scheme=p.scheme, exact=p.exact, groups=p.groups,
                       unit_blocks=p.blocks, neurons=sum(r[1] for r in mine), axons_used=sum(r[0] for r in mine),
                       splitters=sum(r[2] for r in mine),
                       max_axons_per_core=max((r[0] for r in mine), default=0),
                       max_neurons_per_core=max((r[1] for r in mine), default=0),
                       digit_table=list(p.table.values), digit_copies=list(p.table.copies),
                       axons_per_input=p.table.k, cores=len(p.cores), accumulator_cores=len(p.h_cores),
                       gate_axons=p.n_gate, gate_ticks=p.ramp, drain_ticks=p.drain,
                       bias_axons=int(sum(len(a) for _, a in p.bias_axons)))
            if p.tiling is not None:
                row["tiles"] = len(p.tiling.tiles)
                row["tile_shape"] = list(p.tiling.shape)
            if p.scheme == "count-step":
                row["accumulators"] = "ordered" if p.ordered else "gated"
            if p.scheme == "count-relu":
                row["relu"] = {k: v for k, v in p.relu.items() if k in (
                    "exact_units", "units", "max_deviation", "mismatch_share_of_acc_range", "act_max")}
            layers.append(row)
        enc = self.opts["encoding"]
        approx = []
        if not encoding_exact:
            approx.append({"binary": f"inputs binarized at code {self.thr} (a spike stands for {self.q})",
                           "stochastic": f"inputs as Bernoulli spikes, p = x / {self.q} per tick over {self.q} "
                                         f"ticks (seed {self.opts['seed']})"}[enc])
        if self.vote:
            approx.append(f"population vote: each of a unit's {m.layers[-1].groups} output emitter pair(s) votes "
                          "+1 (E+ spiked) or -1 (E- spiked) instead of counting spikes")
        for p in m.layers:
            if not p.exact:
                inexact = p.relu["units"] - p.relu["exact_units"]
                approx.append(f"layer {p.index} ReLU by the nearest rate ratio on {inexact} "
                              f"unit(s): max deviation {p.relu['max_deviation']} activation step(s), "
                              f"{p.relu['mismatch_share_of_acc_range']:.3g} of the accumulator range differs")
        return dict(target=NAME, cores=len(cores), axons=axons, neurons=neurons, duplicated_neurons=m.duplicated,
                    ticks_per_frame=m.ticks, chip_fraction=len(cores) / CHIP_CORES, encoding=enc,
                    input_columns=len(m.inputs) if not self.signed else f"{len(m.inputs)} (x+ and x-)",
                    decoding=("population vote: sum over the unit's output emitters of [E+ spiked] - [E- spiked]"
                              if self.vote else "spike counts E+ - E- per output unit"), exact=self.exact,
                    approximations=approx, layers=layers, options=dict(self.opts),
                    resources=dict(cores=len(cores), neurons=neurons, chips=-(-len(cores) // CHIP_CORES),
                                   chips_allowed=1),
                    core_table=[dict(core=cid, layer=li, axons=ax, neurons=nn, splitters=cp)
                                for cid, li, ax, nn, cp in m.core_rows])


ARTIFACTS = ("ticks", "cores", "digest")


def check_artifacts(stored: dict, program: TrueNorthProgram) -> None:
    """A ``.hwq`` file's truenorth artifacts must be exactly the ones the stored network and
    options map to (the mapping is recompiled on load): ``ticks`` and ``cores`` integers, the
    16-hex ``digest`` of the cores, nothing missing or extra. ``FileFormatError`` otherwise."""
    from hwq.errors import FileFormatError

    mine = {k: program.artifacts[k] for k in ARTIFACTS}
    same = set(stored) == set(ARTIFACTS) and all(
        type(stored[k]) is type(mine[k]) and stored[k] == mine[k] for k in ARTIFACTS)
    if not same:
        raise FileFormatError("the truenorth artifacts do not match the stored network",
                              hint="recompile the model with --target truenorth")


def export_model(program: TrueNorthProgram, path) -> None:
    """Write the mapped cores as an IBM-format model file (``hwq truenorth run`` reads it)."""
    from hwq.files.atomic import atomic_write_bytes

    atomic_write_bytes(path, dumps_model(program.mapping.model).encode())
