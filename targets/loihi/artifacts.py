"""A mapping as ``.hwq`` artifacts and back, so that ``LoihiTarget().load(net, artifacts)`` runs
exactly the parameters that compile chose.

Version 2 (written since hwq 0.9's CNN wave) stores the layer maps as typed records: the frozen
``LayerMap`` and ``SynapseSet`` dataclasses themselves, registered with the generic HDF5
encoding (``h5io.register``), so a ``.hwq`` file holds ``/artifacts/maps/0/sets/1/digits``
instead of hand-encoded keys; the limits, the adjustments, the forced shifts and the backend
stay scalars. Version 1 (flat keys ``l{i}.g{g}.digits``, ...) is still read, and is what the
Lava device's wire carries (``flat=True``: arrays and scalars only).

Reading trusts nothing (``from_artifacts``): every scalar must be an integer or text of the
right kind and every array an integer (``unit``: a finite positive float) array of the layer's
shape; the stored limits may be tighter than Loihi's registers, never wider
(``Limits.looser_than``); and the mapping must be one that compile could have produced
(``check_mapping``): the neuron models of the network's activations, digits that survive Lava's
8-bit clip and LSB drop unchanged in their sign mode, weight exponents, bias mantissas and
exponents and thresholds inside the limits, digit groups that add up to the network's
(rounded) weight codes, input ranges that chain from the input format, and sums that stay
exact in Lava's int32 arithmetic."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from hwq.errors import FileFormatError, LimitError
from hwq.files import h5io
from hwq.ir.window import Window
from hwq.quant.bounds import MAX_SHIFT
from hwq.quant.qnet import QPool, QuantizedNetwork, short

from .conv import WINDOW_FIELDS, window_array, window_from
from .limits import ADDED, LOIHI, Limits
from .mapping import NEURON_MODELS, LayerMap, LayerPlan, Mapping, int32_ok, next_input, pool_map
from .synapses import SynapseSet, lava_effective, round_weights, sign_mode

MODES = ("mixed", "excitatory", "inhibitory")
NEURONS = tuple(sorted(set(NEURON_MODELS.values())))  # Lava neuron models (flat key l{i}.kind in version 1)
MAX_WEIGHT_ROUND = 32  # mapping.fit_sets tries k = 0..32

VERSION = 2  # 2: layer maps as typed records; 1: flat keys (still read; the Lava wire's form)
FLAT_VERSION = 1

h5io.register(LayerMap, SynapseSet, Window)


def _layer(i: int, lm: LayerMap) -> dict:
    p = f"l{i}."
    out = {p + "kind": lm.neuron, p + "bias_mant": lm.bias_mant, p + "bias_exp": lm.bias_exp,
           p + "vth": int(lm.vth), p + "unit": lm.unit, p + "in_bits": int(lm.in_bits),
           p + "in_lo": int(lm.in_range[0]), p + "in_hi": int(lm.in_range[1]),
           p + "shift": int(lm.shift), p + "weight_round": int(lm.weight_round),
           p + "groups": len(lm.sets), p + "window": window_array(lm.window)}
    for g, s in enumerate(lm.sets):
        q = f"{p}g{g}."
        out.update({q + "digits": s.digits.astype(np.int16), q + "exp": int(s.exp),
                    q + "mode": s.mode, q + "scale": int(s.scale)})
    return out


def _compact(lm: LayerMap) -> LayerMap:
    """The record as stored: digits (8-bit synapse digits) in int16, the rest as mapped."""
    return replace(lm, sets=tuple(replace(s, digits=s.digits.astype(np.int16)) for s in lm.sets))


def to_artifacts(mapping: Mapping, limits: Limits, backend: str, flat: bool = False) -> dict:
    """The artifacts of a mapping: typed layer records (version 2), or ``flat`` arrays and
    scalars only (version 1, for the Lava device's wire)."""
    art = {"loihi_version": FLAT_VERSION if flat else VERSION, "backend": backend,
           "layers": len(mapping.layers), "limits_json": json.dumps(limits.as_dict()),
           "adjustments_json": json.dumps(list(mapping.adjustments)),
           "forced": np.array(mapping.forced, dtype=bool)}
    if flat:
        for i, lm in enumerate(mapping.layers):
            art.update(_layer(i, lm))
    else:
        art["maps"] = tuple(_compact(lm) for lm in mapping.layers)
    return art


def digit_shape(node) -> tuple[int, int]:
    """The compact digit matrix of a node: a layer's weight; a pooling's ones kernel (C, kh kw)."""
    if isinstance(node, QPool):
        return (node.window.channels, node.window.size)
    return tuple(node.weight.shape)


def _int(art: dict, key: str) -> int:
    value = art[key]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FileFormatError(f"loihi artifact {short(key)} must be an integer, got {short(value)}")
    return int(value)


def _text(art: dict, key: str, choices: tuple[str, ...]) -> str:
    value = art[key]
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if not isinstance(value, str) or value not in choices:
        raise FileFormatError(f"loihi artifact {short(key)} must be one of {', '.join(choices)}, got {short(value)}")
    return value


def _array(art: dict, key: str, shape: tuple[int, ...], kind: str = "iu") -> np.ndarray:
    value = art[key]
    if isinstance(value, np.ndarray) and value.dtype.kind in kind and value.shape != shape:
        raise FileFormatError(f"the loihi artifacts do not match the stored network ({key!r} has shape "
                              f"{value.shape}, the network needs {shape})")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kind:
        what = f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else short(value, 40)
        raise FileFormatError(f"loihi artifact {key!r} must be an {'integer' if kind == 'iu' else 'float'} "
                              f"array of shape {shape}, got {what}")
    if kind == "iu" and value.size and (int(value.max()) > 2**62 or int(value.min()) < -(2**62)):
        raise FileFormatError(f"loihi artifact {key!r} holds values beyond int64")
    return value.astype(np.int64 if kind == "iu" else np.float64)


def _read_window(art: dict, key: str):
    value = art.get(key, np.zeros(0, np.int64))  # files before convolutions: dense layers
    if (not isinstance(value, np.ndarray) or value.dtype.kind not in "iu" or value.ndim != 1
            or value.size not in (0, WINDOW_FIELDS)):
        raise FileFormatError(f"loihi artifact {key!r} must be {WINDOW_FIELDS} integers or none")
    win = window_from(value)
    if win is not None:
        win.validate()
    return win


def _read_layer(art: dict, i: int, shape: tuple[int, int]) -> LayerMap:
    """Layer ``i`` from the flat keys of version 1."""
    p = f"l{i}."
    sets = []
    groups = _int(art, p + "groups")
    if not 1 <= groups <= 8:  # at most 3 base-256 digits of a 16-bit code, each maybe split by sign
        raise FileFormatError(f"loihi layer {i}: {groups} synapse groups (1..8 expected)")
    for g in range(groups):
        q = f"{p}g{g}."
        sets.append(SynapseSet(_array(art, q + "digits", shape), _int(art, q + "exp"),
                               _text(art, q + "mode", MODES), _int(art, q + "scale")))
    n = (shape[0],)
    return LayerMap(_text(art, p + "kind", NEURONS), tuple(sets),
                    _array(art, p + "bias_mant", n), _array(art, p + "bias_exp", n), _int(art, p + "vth"),
                    _array(art, p + "unit", n, "f"), _int(art, p + "in_bits"),
                    (_int(art, p + "in_lo"), _int(art, p + "in_hi")), _int(art, p + "shift"),
                    _int(art, p + "weight_round"), _read_window(art, p + "window"))


def _check_record(lm, i: int, shape: tuple[int, int]) -> LayerMap:
    """Layer ``i`` from its typed record (version 2; field types were checked by ``h5io.read``):
    the same checks as the flat keys get, and the arrays in the dtypes the emulator computes in."""
    if not isinstance(lm, LayerMap):
        raise FileFormatError(f"loihi layer {i}: a {type(lm).__name__} record, not a LayerMap")
    if not 1 <= len(lm.sets) <= 8:
        raise FileFormatError(f"loihi layer {i}: {len(lm.sets)} synapse groups (1..8 expected)")
    p = f"maps/{i}."
    sets = []
    for g, s in enumerate(lm.sets):
        q = f"{p}sets/{g}."
        fields = {q + "digits": s.digits, q + "exp": s.exp, q + "mode": s.mode, q + "scale": s.scale}
        sets.append(SynapseSet(_array(fields, q + "digits", shape), _int(fields, q + "exp"),
                               _text(fields, q + "mode", MODES), _int(fields, q + "scale")))
    n = (shape[0],)
    fields = {p + "neuron": lm.neuron, p + "bias_mant": lm.bias_mant, p + "bias_exp": lm.bias_exp,
              p + "unit": lm.unit}
    if lm.window is not None:
        lm.window.validate()
    return LayerMap(_text(fields, p + "neuron", NEURONS), tuple(sets), _array(fields, p + "bias_mant", n),
                    _array(fields, p + "bias_exp", n), lm.vth, _array(fields, p + "unit", n, "f"), lm.in_bits,
                    lm.in_range, lm.shift, lm.weight_round, lm.window)


def _check_window(lm: LayerMap, i: int, shape: tuple[int, int]) -> None:
    win = lm.window
    if win is not None and (win.patch_len != shape[1] or shape[0] % win.groups):
        raise FileFormatError(f"loihi layer {i}: window {win.describe()} does not read patches of {shape[1]}")


def _read_limits(text) -> Limits:
    if not isinstance(text, str):
        raise FileFormatError("loihi artifact 'limits_json' must be text")
    raw = json.loads(text)
    fields = LOIHI.as_dict()
    if isinstance(raw, dict):  # tables stored before the axon and chip figures: Loihi's defaults
        raw = {**{k: fields[k] for k in ADDED if k not in raw}, **raw}
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise FileFormatError("loihi limits: the stored table does not have Loihi's fields")
    for key, value in raw.items():
        want = fields[key]
        ok = (isinstance(value, list) and len(value) == len(want) and all(type(v) is int for v in value)
              if isinstance(want, list) else type(value) is int)
        if not ok:
            raise FileFormatError(f"loihi limits: {short(key)} = {short(value)} is not "
                                  + ("two integers" if isinstance(want, list) else "an integer"))
    limits = Limits(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    looser = limits.looser_than(LOIHI)
    if looser:
        raise FileFormatError(f"loihi limits wider than Loihi's registers: {', '.join(looser)}",
                              hint="recompile the model with --target loihi")
    return limits


def from_artifacts(art: dict, net: QuantizedNetwork | None = None) -> tuple[Mapping, Limits, str]:
    """The stored mapping, its limits and backend, checked (``check_mapping`` against ``net``
    where given); ``FileFormatError`` naming the first problem."""
    from .program import BACKENDS

    version = art.get("loihi_version", -1)
    if not isinstance(version, (int, np.integer)) or int(version) not in (FLAT_VERSION, VERSION):
        raise FileFormatError("the file's loihi artifacts are missing or of another version",
                              hint="recompile the model with --target loihi")
    try:
        n_layers = _int(art, "layers")
        if net is not None and n_layers != len(net.layers):
            raise FileFormatError(f"the loihi artifacts map {n_layers} layers, the network has {len(net.layers)}")
        if not 1 <= n_layers <= 1024:
            raise FileFormatError(f"loihi artifacts with {n_layers} layers")
        if int(version) == FLAT_VERSION:
            stored = None
            shapes = ([digit_shape(node) for node in net.layers] if net is not None
                      else [tuple(np.shape(art[f"l{i}.g0.digits"])) for i in range(n_layers)])
        else:
            stored = art["maps"]
            if not isinstance(stored, tuple) or len(stored) != n_layers:
                raise FileFormatError(f"loihi artifact 'maps' must hold {n_layers} layer records")
            shapes = ([digit_shape(node) for node in net.layers] if net is not None
                      else [tuple(np.shape(lm.sets[0].digits)) if isinstance(lm, LayerMap) and lm.sets
                            else (0, 0) for lm in stored])
        layers = tuple(_read_layer(art, i, shapes[i]) if stored is None else _check_record(stored[i], i, shapes[i])
                       for i in range(n_layers))
        for i, lm in enumerate(layers):
            _check_window(lm, i, shapes[i])
        limits = _read_limits(art["limits_json"])
        adjustments = json.loads(art["adjustments_json"]) if isinstance(art["adjustments_json"], str) else None
        if not isinstance(adjustments, list) or not all(isinstance(a, dict) for a in adjustments):
            raise FileFormatError("loihi artifact 'adjustments_json' must be a JSON list of objects")
        forced = art["forced"]
        if not isinstance(forced, np.ndarray) or forced.dtype != bool or forced.shape != (n_layers,):
            raise FileFormatError(f"loihi artifact 'forced' must be {n_layers} booleans")
        mapping = Mapping(layers, tuple(adjustments), tuple(bool(f) for f in forced))
        backend = _text(art, "backend", BACKENDS)
    except FileFormatError as exc:
        raise FileFormatError(f"corrupt loihi artifacts: {exc.message}", hint=exc.hint) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"corrupt loihi artifacts: {type(exc).__name__}: {exc}") from None
    if net is not None:
        check_mapping(mapping, limits, net)
    return mapping, limits, backend


def same_layer(a: LayerMap, b: LayerMap) -> bool:
    """Whether two layer maps hold the same parameters."""
    scalars = ("neuron", "vth", "in_bits", "in_range", "shift", "weight_round", "window")
    return (all(getattr(a, k) == getattr(b, k) for k in scalars) and len(a.sets) == len(b.sets)
            and np.array_equal(a.bias_mant, b.bias_mant) and np.array_equal(a.bias_exp, b.bias_exp)
            and np.allclose(a.unit, b.unit, rtol=1e-12, atol=0)
            and all(np.array_equal(x.digits, y.digits) and (x.exp, x.mode, x.scale) == (y.exp, y.mode, y.scale)
                    for x, y in zip(a.sets, b.sets)))


def check_mapping(mapping: Mapping, limits: Limits, net: QuantizedNetwork) -> None:
    """Refuse (``FileFormatError``, naming the layer) a mapping that compile could not have
    produced for ``net`` under ``limits``: see the module docstring."""
    fmt = net.input
    expected_in = ((fmt.qmin, fmt.qmax), fmt.bits)
    quiet = SimpleNamespace(limits=limits, note=lambda *a, **k: None)
    e_lo, e_hi = limits.weight_exp
    in_unit, last = fmt.scale, len(net.layers) - 1
    for i, (lm, layer) in enumerate(zip(mapping.layers, net.layers)):
        def bad(what: str, i=i) -> FileFormatError:
            return FileFormatError(f"loihi artifacts, layer {i}: {what}",
                                   hint="recompile the model with --target loihi")

        if isinstance(layer, QPool):
            try:
                plan, want = pool_map(net, i, mapping.layers[i - 1] if i else None, (in_unit, *expected_in), limits)
            except LimitError as exc:
                raise bad(exc.message) from None
            if not same_layer(lm, want):
                raise bad("the pooling's synapses and neurons are not the ones its window maps to")
            in_unit, in_range, bits = next_input(lm, plan)
            expected_in = (in_range, bits)
            continue
        if lm.window != layer.window:
            raise bad("the synapse window is not the layer's convolution window")
        if lm.neuron != NEURON_MODELS.get(layer.activation):
            raise bad(f"neuron model {short(lm.neuron)} does not run a {layer.activation} layer")
        if not 0 <= lm.shift <= MAX_SHIFT or not 0 <= lm.weight_round <= MAX_WEIGHT_ROUND:
            raise bad(f"shift {lm.shift} or weight rounding {lm.weight_round} out of range")
        for g, s in enumerate(lm.sets):
            if np.abs(s.digits).max(initial=0) > 255 or not 0 <= s.scale <= 8 or (s.mode == "mixed" and s.scale < 1):
                raise bad(f"synapse group {g}: digits beyond 8 bits or stored scale {s.scale} out of range")
            if s.mode != sign_mode(s.digits) or not np.array_equal(lava_effective(s.lava_weights, s.mode),
                                                                   s.lava_weights):
                raise bad(f"synapse group {g}: {s.mode} digits that Loihi's 8-bit synapses would change")
            if not e_lo <= s.lava_weight_exp <= e_hi or s.exp + lm.shift < 0:
                raise bad(f"synapse group {g}: weight exponent {s.lava_weight_exp} outside {e_lo}..{e_hi}")
        want = round_weights(layer.weight, lm.weight_round) << lm.weight_round
        if not np.array_equal(lm.effective_codes(), want):
            raise bad("the synapse groups do not add up to the network's weight codes")
        if not np.all(np.isfinite(lm.unit)) or not np.all(lm.unit > 0):
            raise bad("unit values must be finite and > 0")
        if lm.neuron == "lif":
            mmax = 2 ** (limits.lif_bias_mant_bits - 1)
            b_lo, b_hi = limits.lif_bias_exp
            if not 0 <= lm.vth <= 2**limits.lif_vth_bits - 1:
                raise bad(f"threshold mantissa {lm.vth} beyond {limits.lif_vth_bits} bits")
        else:
            mmax = 2 ** (limits.sd_bias_bits - 1) - 1
            b_lo, b_hi = limits.sd_bias_exp
            if lm.vth != 0 or len(set(lm.bias_exp.tolist())) > 1:
                raise bad("a SigmaDelta layer has threshold 0 and one spike exponent")
        if np.abs(lm.bias_mant).max(initial=0) > mmax or lm.bias_exp.min() < b_lo or lm.bias_exp.max() > b_hi:
            raise bad(f"bias mantissas beyond {mmax} or bias exponents outside {b_lo}..{b_hi}")
        if (lm.in_range, lm.in_bits) != expected_in:
            raise bad(f"input range {lm.in_range} ({lm.in_bits} bits) is not what the layer before it "
                      f"sends: {expected_in[0]} ({expected_in[1]} bits)")
        if not int32_ok(lm):
            raise bad("its sums can overflow Lava's int32 arithmetic")
        plan = LayerPlan(layer, i, i == last, in_unit, lm.in_range, lm.in_bits, limits)
        offsets = plan.lif_bias if lm.neuron == "lif" else plan.sd_bias
        mant, exp, vth = offsets(lm.shift, lm.input_bounds())
        if not (np.array_equal(mant, lm.bias_mant) and np.array_equal(exp, lm.bias_exp) and vth == lm.vth):
            raise bad("the biases and threshold are not the ones the network's biases map to")
        in_unit, in_range, bits = next_input(lm, quiet)
        expected_in = (in_range, bits)
