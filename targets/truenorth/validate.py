"""A stand-alone check that a configuration fits the chip (shared/specs/truenorth.md section 5).

``validate(model, host_ports=())`` raises :class:`hwq.errors.LimitError` naming every
violation (the first few) of:

* more than 256 axons or 256 neurons in a core (crossbar shape), more than 4096 cores per chip
  (``max_cores``), axon types outside 0..3;
* a neuron's four weights outside -255..255, its leak outside -255..255, ``alpha``/``beta``
  outside 0..2^18 - 1, ``TM``/``VR`` outside 0..18, a reset potential that is not
  ``+-(2^VR - 1)``, an initial potential outside the ``v_bits`` range;
* a neuron without exactly one destination: ``destCore = -1`` (unused) on an existing neuron
  (when ``require_destination``), a destination core that is not in the model, a destination
  axon outside 0..255, a delay outside 1..15;
* two sources reaching one (core, axon): the mapper relies on every spike, and two sources on
  one axon could meet at one tick and merge into one spike (section 4). ``host_ports`` lists
  the ``(core id, axon)`` pairs the host drives; each must not also be a neuron's destination,
  and no two neurons may share one.

The checks duck-type: any object with ``cores`` whose items have ``id``, ``crossbar``,
``axon_type`` and ``neurons`` (the fields of :class:`core.Neurons`) is checked, so configurations
built outside :class:`core.Core` (which already refuses wrong shapes) are checked too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from hwq.errors import LimitError

from .core import AXONS, CHIP_CORES, LEAK_MAX, MAX_DELAY, MAX_TM, MAX_VR, NEURONS, THRESHOLD_BITS, TYPES, WEIGHT_MAX

SHOWN = 5


def problems(model, host_ports=(), *, max_cores: int = CHIP_CORES, v_bits: int = 20,
             require_destination: bool = True) -> list[str]:
    """Every violation, as one line each (empty: the chip can hold ``model``)."""
    out: list[str] = []
    cores = list(model.cores)
    if len(cores) > max_cores:
        out.append(f"{len(cores)} cores, more than the {max_cores} of a chip")
    ids = {int(c.id) for c in cores}
    vlo, vhi = -(2 ** (v_bits - 1)), 2 ** (v_bits - 1) - 1
    tmax = 2**THRESHOLD_BITS - 1
    sources: Counter = Counter((int(c), int(a)) for c, a in host_ports)
    host = set(sources)
    for core in cores:
        where = f"core {core.id}"
        xbar = np.asarray(core.crossbar)
        if xbar.ndim != 2 or xbar.shape[0] > AXONS or xbar.shape[1] > NEURONS:
            out.append(f"{where}: crossbar {xbar.shape}, more than {AXONS} axons x {NEURONS} neurons")
            continue
        types = np.asarray(core.axon_type)
        if types.shape != (xbar.shape[0],) or np.any((types < 0) | (types >= TYPES)):
            out.append(f"{where}: axon types must be one of 0..{TYPES - 1} per axon")
        n = core.neurons
        exists = np.asarray(n.exists, bool)
        if len(exists) > NEURONS:
            out.append(f"{where}: {len(exists)} neurons, more than {NEURONS}")
            continue
        idx = np.flatnonzero(exists)

        def bad(name, values, lo, hi, what=None, idx=idx, where=where):
            v = np.asarray(values)[idx]
            wrong = (v < lo) | (v > hi)
            if v.ndim > 1:
                wrong = wrong.any(axis=1)
            if wrong.any():
                j = int(idx[np.flatnonzero(wrong)[0]])
                out.append(f"{where}: {int(wrong.sum())} neuron(s) with {what or name} outside {lo}..{hi} "
                           f"(first: neuron {j}, {np.asarray(values)[j].tolist()})")

        bad("weight", n.weight, -WEIGHT_MAX, WEIGHT_MAX, "a weight")
        bad("leak", n.leak, -LEAK_MAX, LEAK_MAX)
        bad("alpha", n.alpha, 0, tmax)
        bad("beta", n.beta, 0, tmax)
        bad("tm", n.tm, 0, MAX_TM, "TM")
        bad("v0", n.v0, vlo, vhi, "initial potential")
        bad("delay", n.dest_delay, 1, MAX_DELAY)
        r = np.abs(np.asarray(n.reset, np.int64)[idx])
        vr = np.log2(r + 1)
        if np.any((vr != np.round(vr)) | (vr > MAX_VR)):
            out.append(f"{where}: a reset potential is not +-(2^VR - 1) with VR in 0..{MAX_VR}")
        dc = np.asarray(n.dest_core, np.int64)[idx]
        da = np.asarray(n.dest_axon, np.int64)[idx]
        if require_destination and np.any(dc == -1):
            j = int(idx[np.flatnonzero(dc == -1)[0]])
            out.append(f"{where}: {int((dc == -1).sum())} neuron(s) without a destination (first: neuron {j})")
        on_chip = dc >= 0
        absent = [int(c) for c in np.unique(dc[on_chip]) if int(c) not in ids]
        if absent:
            out.append(f"{where}: neurons target core(s) {absent[:SHOWN]} that the model does not have")
        if np.any(on_chip & ((da < 0) | (da >= AXONS))):
            out.append(f"{where}: a destination axon outside 0..{AXONS - 1}")
        for c, a in zip(dc[on_chip].tolist(), da[on_chip].tolist()):
            sources[(c, a)] += 1
    shared = [(key, k) for key, k in sources.items() if k > 1]
    if shared:
        (c, a), k = shared[0]
        kind = "the host and a neuron" if (c, a) in host else f"{k} neurons"
        out.append(f"{len(shared)} (core, axon) pair(s) reached by two or more sources; spikes meeting there "
                   f"at one tick would merge (first: core {c} axon {a}, {kind})")
    return out


def validate(model, host_ports=(), **kwargs) -> None:
    """Raise :class:`LimitError` unless the chip can hold ``model`` (see :func:`problems`)."""
    found = problems(model, host_ports, **kwargs)
    if found:
        more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        raise LimitError("the configuration does not fit TrueNorth: " + "; ".join(found[:SHOWN]) + more)
