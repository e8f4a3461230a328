"""Read and write TrueNorth model files in the layout IBM's CPE tools write ([D]).

Layout (shared/specs/truenorth.md section 2; real files in tests/data/truenorth)::

    { "model": {"coreCount": ..., "crossbarSize": 256, "useCrossbarPrototypes": true, ...},
      "crossbarTypes": [ {"name": P, "crossbar": {"rows": [{"type": "S0".."S3",
                                                           "synapses": "32 hex bytes"}, ...]}} ],
      "neuronTypes": [ {"name": "N%08X", "sigma0".."sigma3", "s0".."s3", "b0".."b3",
                        "sigma_lambda", "lambda", "c_lambda", "epsilon", "alpha", "beta", "TM",
                        "gamma", "kappa", "sigma_VR", "VR", "V"} ],
      "core": {"id": .., "rngSeed": .., "timeScaleExponent": ..,
               "neurons": {"dendrites", "types", "destCores", "destAxons", "destDelays"},
               "crossbar": {"name": P} },      # or inline {"rows": [...]}
      "core": { ... }, ... }                   # one repeated "core" key per core

Facts the reader follows: a neuron's ``types`` entry ``k >= 1`` names the neuronTypes entry
``N%08X`` with hex value ``k`` (not its list position); 0 means no neuron. Synapse bytes are
MSB first, neuron 0 first. ``dendrites`` (semantics unknown) is read and ignored.
A core that names a crossbar prototype the file does not define is an error, unless
``missing_crossbars="empty"`` (what NeMo's reader does silently: an all-zero crossbar of S0
rows); such cores are listed in ``model.metadata["missing_crossbars"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwq.errors import FileFormatError, UsageError

from .compact import compress, expand
from .core import (
    AXONS,
    LEAK_MAX,
    MAX_DELAY,
    MAX_TM,
    MAX_VR,
    NEURONS,
    THRESHOLD_BITS,
    TYPES,
    WEIGHT_MAX,
    Core,
    Model,
    Neurons,
)
from .jsonc import loads, one

NEURON_FIELDS = ["sigma0", "sigma1", "sigma2", "sigma3", "s0", "s1", "s2", "s3", "b0", "b1", "b2", "b3",
                 "sigma_lambda", "lambda", "c_lambda", "epsilon", "alpha", "beta", "TM", "gamma",
                 "kappa", "sigma_VR", "VR", "V"]
V_LIMIT = 2**19  # |V| < 2^19: the 20-bit potential (docs/truenorth.md)


def read_model(path, missing_crossbars: str = "error") -> Model:
    """A :class:`Model` from an IBM-format model file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read model file {path}: {exc}") from None
    return parse_model(text, str(path), missing_crossbars)


def parse_model(text: str, what: str = "model", missing_crossbars: str = "error") -> Model:
    if missing_crossbars not in ("error", "empty"):
        raise UsageError(f"missing_crossbars must be 'error' or 'empty', got {missing_crossbars!r}")
    doc = loads(text, what)
    if not isinstance(doc, dict) or "core" not in doc:
        raise FileFormatError(f"{what}: not a TrueNorth model file (no 'core' entry)")
    model = one(doc, "model", what, {})
    size = one(model, "crossbarSize", f"{what}: model", AXONS) if model else AXONS
    if size != AXONS:
        raise FileFormatError(f"{what}: crossbarSize {size} is not supported", hint="TrueNorth cores are 256x256")
    crossbars = {}
    for k, proto in enumerate(one(doc, "crossbarTypes", what, [])):
        name = one(proto, "name", f"{what}: crossbarTypes[{k}]")
        crossbars[name] = parse_rows(one(one(proto, "crossbar", f"{what}: crossbar {name}"), "rows",
                                         f"{what}: crossbar {name}"), f"{what}: crossbar {name}")
    types = {}
    for k, entry in enumerate(one(doc, "neuronTypes", what, [])):
        name = one(entry, "name", f"{what}: neuronTypes[{k}]")
        types[name] = parse_neuron_type(entry, f"{what}: neuron type {name}")
    missing: list[int] = []
    cores = [parse_core(c, types, crossbars, f"{what}: core #{k}", missing_crossbars, missing)
             for k, c in enumerate(doc["core"])]
    meta = {key: vals[-1] for key, vals in model.items()} if model else {}
    meta["missing_crossbars"] = missing
    return Model(tuple(cores), meta)


def parse_rows(rows, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Crossbar ``w[axon, neuron]`` and axon types from 256 typed hex rows."""
    if not isinstance(rows, list) or len(rows) != AXONS:
        raise FileFormatError(f"{where}: expected {AXONS} rows, got {len(rows) if isinstance(rows, list) else rows!r}")
    w = np.zeros((AXONS, NEURONS), bool)
    g = np.zeros(AXONS, np.int8)
    for i, row in enumerate(rows):
        kind = one(row, "type", f"{where} row {i}")
        if kind not in ("S0", "S1", "S2", "S3"):
            raise FileFormatError(f"{where} row {i}: axon type {kind!r} is not S0..S3")
        g[i] = int(kind[1])
        hexes = one(row, "synapses", f"{where} row {i}")
        try:
            data = bytes.fromhex(hexes)
        except (ValueError, TypeError):
            raise FileFormatError(f"{where} row {i}: synapses are not hex bytes") from None
        if len(data) != NEURONS // 8:
            raise FileFormatError(f"{where} row {i}: expected {NEURONS // 8} synapse bytes, got {len(data)}")
        w[i] = np.unpackbits(np.frombuffer(data, np.uint8))  # MSB first = neuron 0 first
    return w, g


def field_int(entry, key: str, where: str, lo: int, hi: int) -> int:
    v = one(entry, key, where)
    if isinstance(v, bool):
        v = int(v)
    if not isinstance(v, int) or not lo <= v <= hi:
        raise FileFormatError(f"{where}: '{key}' must be an integer in {lo}..{hi}, got {v!r}")
    return v


def field_sign(entry, key: str, where: str) -> int:
    v = one(entry, key, where)
    if v not in (-1, 1) or isinstance(v, bool):
        raise FileFormatError(f"{where}: '{key}' must be -1 or 1, got {v!r}")
    return v


def parse_neuron_type(entry, where: str) -> dict:
    """One neuron type as the :class:`Neurons` fields of a single neuron."""
    tmax = 2**THRESHOLD_BITS - 1
    weight = [field_sign(entry, f"sigma{g}", where) * field_int(entry, f"s{g}", where, 0, WEIGHT_MAX)
              for g in range(TYPES)]
    vr = field_int(entry, "VR", where, 0, MAX_VR)
    return {
        "weight": weight,
        "stochastic": [bool(field_int(entry, f"b{g}", where, 0, 1)) for g in range(TYPES)],
        "leak": field_sign(entry, "sigma_lambda", where) * field_int(entry, "lambda", where, 0, LEAK_MAX),
        "stochastic_leak": bool(field_int(entry, "c_lambda", where, 0, 1)),
        "leak_reversal": bool(field_int(entry, "epsilon", where, 0, 1)),
        "alpha": field_int(entry, "alpha", where, 0, tmax),
        "beta": field_int(entry, "beta", where, 0, tmax),
        "tm": field_int(entry, "TM", where, 0, MAX_TM),
        "gamma": field_int(entry, "gamma", where, 0, 2),
        "kappa": bool(field_int(entry, "kappa", where, 0, 1)),
        "reset": field_sign(entry, "sigma_VR", where) * (2**vr - 1),
        "v0": field_int(entry, "V", where, -V_LIMIT, V_LIMIT - 1),
    }


def parse_core(entry, types: dict, crossbars: dict, where: str, missing_crossbars: str,
               missing: list) -> Core:
    cid = field_int(entry, "id", where, 0, 2**31 - 1)
    where = f"{where.rsplit(':', 1)[0]}: core {cid}"
    neurons = one(entry, "neurons", where)
    kinds = expand(one(neurons, "types", where), f"{where} types", NEURONS)
    dest_core = expand(one(neurons, "destCores", where), f"{where} destCores", NEURONS)
    dest_axon = expand(one(neurons, "destAxons", where), f"{where} destAxons", NEURONS)
    delay = expand(one(neurons, "destDelays", where), f"{where} destDelays", NEURONS)
    table = Neurons.empty()
    cols = {name: np.array(getattr(table, name)) for name in Neurons.DTYPES}
    for j, k in enumerate(kinds):
        if k == 0:
            continue
        name = f"N{k:08X}"
        if k < 0 or name not in types:
            raise FileFormatError(f"{where}: neuron {j} has type {k}, but there is no neuron type {name}")
        for key, value in types[name].items():
            cols[key][j] = value
        cols["exists"][j] = True
        if dest_core[j] != -1 and dest_core[j] >= 0 and not 0 <= dest_axon[j] < AXONS:
            raise FileFormatError(f"{where}: neuron {j} targets axon {dest_axon[j]}, outside 0..{AXONS - 1}")
        if not 1 <= delay[j] <= MAX_DELAY:
            raise FileFormatError(f"{where}: neuron {j} has delay {delay[j]}, outside 1..{MAX_DELAY}")
    cols["dest_core"][:] = dest_core
    cols["dest_axon"][:] = dest_axon
    cols["dest_delay"][:] = delay
    w, g = core_crossbar(one(entry, "crossbar", where), crossbars, where, missing_crossbars, missing, cid)
    return Core(cid, w, g, Neurons(**cols), int(one(entry, "rngSeed", where, 0)),
                int(one(entry, "timeScaleExponent", where, 0)), one(entry, "metadata", where, {}))


def core_crossbar(spec, crossbars, where, missing_crossbars, missing, cid):
    if "rows" in spec:
        return parse_rows(one(spec, "rows", where), f"{where} crossbar")
    name = one(spec, "name", f"{where} crossbar")
    if name in crossbars:
        return crossbars[name]
    if missing_crossbars == "error":
        raise FileFormatError(f"{where}: crossbar prototype '{name}' is not defined in crossbarTypes",
                              hint="pass --missing-crossbars empty to read it as an empty crossbar, as NeMo does")
    missing.append(cid)
    return np.zeros((AXONS, NEURONS), bool), np.zeros(AXONS, np.int8)


# ----------------------------------------------------------------------------- writing

def neuron_type_fields(n: Neurons, j: int) -> tuple:
    """The model-file fields of neuron ``j`` (inverse of :func:`parse_neuron_type`)."""
    r = int(n.reset[j])
    vr = (abs(r) + 1).bit_length() - 1
    if 2**vr - 1 != abs(r):
        raise FileFormatError(f"reset potential {r} is not of the form +-(2^VR - 1)")
    w = [int(x) for x in n.weight[j]]
    lam = int(n.leak[j])
    return tuple([1 if x >= 0 else -1 for x in w] + [abs(x) for x in w]
                 + [bool(b) for b in n.stochastic[j]]
                 + [1 if lam >= 0 else -1, abs(lam), bool(n.stochastic_leak[j]), bool(n.leak_reversal[j]),
                    int(n.alpha[j]), int(n.beta[j]), int(n.tm[j]), int(n.gamma[j]), bool(n.kappa[j]),
                    -1 if r < 0 else 1, vr, int(n.v0[j])])


def dumps_model(model: Model) -> str:
    """The model as text in IBM's layout: one crossbar prototype per distinct crossbar, one
    neuron type per distinct parameter set (named ``N%08X``, numbered from 1)."""
    protos: dict[bytes, str] = {}
    ntypes: dict[tuple, int] = {}
    core_texts = []
    for core in model.cores:
        key = np.packbits(core.crossbar, axis=1).tobytes() + core.axon_type.tobytes()
        proto = protos.setdefault(key, f"coreProt{len(protos) + 1:07d}")
        kinds = [0] * NEURONS
        for j in np.flatnonzero(core.neurons.exists):
            kinds[j] = ntypes.setdefault(neuron_type_fields(core.neurons, j), len(ntypes) + 1)
        core_texts.append(core_text(core, kinds, proto))
    proto_texts = []
    for key, name in protos.items():
        packed = np.frombuffer(key[: AXONS * NEURONS // 8], np.uint8).reshape(AXONS, NEURONS // 8)
        g = np.frombuffer(key[AXONS * NEURONS // 8:], np.int8)
        rows = ",\n".join(f'\t\t\t\t {{"type":"S{g[i]}","synapses":"{" ".join(f"{b:02X}" for b in packed[i])}"}}'
                          for i in range(AXONS))
        proto_texts.append(f'\t\t{{\n\t\t\t"name":"{name}",\n\t\t\t"crossbar":{{\n\t\t\t/* Row parameters */\n'
                           f'\t\t\t"rows":[\n{rows}\n\t\t\t]\n\t\t}}\n\t}}')
    type_texts = []
    for values, k in ntypes.items():
        body = ",".join(f'"{f}":{json_value(v)}' for f, v in zip(NEURON_FIELDS, values))
        type_texts.append(f'\t\t{{"name":"N{k:08X}","class":"NeuronGeneral",{body}}}')
    head = (f'{{\n\t/* General model parameters */\n\t"model":{{\n\t\t"coreCount":{len(model.cores)},\n'
            '\t\t"neuronclass":"NeuronGeneral",\n\t\t"crossbarSize":256,\n\t\t"crossbarclass":"CrossbarBinary",\n'
            '\t\t"buildKey64":"hwq_truenorth_export",\n\t\t"networking":"INTRA",\n\t\t"useCrossbarPrototypes":true\n\t},\n')
    return (head + '\t/* Crossbar type library */\n\t"crossbarTypes":[\n' + ",\n".join(proto_texts) + "\n\t],\n"
            + '\t/* Neuron type library */\n\t"neuronTypes":[\n' + ",\n".join(type_texts) + "\n\t],\n"
            + ",\n".join(core_texts) + "\n}\n")


def json_value(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(int(v))


def compact_json(values) -> str:
    return "[" + ",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in compress(values)) + "]"


def core_text(core: Core, kinds: list[int], proto: str) -> str:
    n = core.neurons
    return (f'\t/* Core parameters */\n\t"core":{{\n\t\t"id":{core.id},\n'
            f'\t\t"timeScaleExponent":{core.time_scale_exponent},\n'
            f'\t\t"rngSeed":{core.rng_seed},\n\t\t/* Core neuron connectivity parameters */\n\t\t"neurons":{{\n'
            f'\t\t\t"dendrites":["0:255"],\n\t\t\t"types":{compact_json(kinds)},\n'
            f'\t\t\t"destCores":{compact_json(n.dest_core)},\n\t\t\t"destAxons":{compact_json(n.dest_axon)},\n'
            f'\t\t\t"destDelays":{compact_json(n.dest_delay)}\n\t\t}},\n'
            f'\t\t/* Core crossbar parameters */\n\t\t"crossbar":{{\n\t\t\t"name":"{proto}"\n\t\t}}\n\t}}')
