"""A mapping as flat ``.hwq`` artifacts (arrays and scalars) and back, so that
``LoihiTarget().load(net, artifacts)`` runs exactly the parameters that compile chose."""

from __future__ import annotations

import json

import numpy as np

from hwq.errors import FileFormatError

from .limits import Limits
from .mapping import LayerMap, Mapping
from .synapses import SynapseSet

VERSION = 1


def _layer(i: int, lm: LayerMap) -> dict:
    p = f"l{i}."
    out = {p + "kind": lm.kind, p + "bias_mant": lm.bias_mant, p + "bias_exp": lm.bias_exp,
           p + "vth": int(lm.vth), p + "unit": lm.unit, p + "in_bits": int(lm.in_bits),
           p + "in_lo": int(lm.in_range[0]), p + "in_hi": int(lm.in_range[1]),
           p + "shift": int(lm.shift), p + "weight_round": int(lm.weight_round),
           p + "groups": len(lm.sets)}
    for g, s in enumerate(lm.sets):
        q = f"{p}g{g}."
        out.update({q + "digits": s.digits.astype(np.int16), q + "exp": int(s.exp),
                    q + "mode": s.mode, q + "scale": int(s.scale)})
    return out


def to_artifacts(mapping: Mapping, limits: Limits, backend: str) -> dict:
    art = {"loihi_version": VERSION, "backend": backend, "layers": len(mapping.layers),
           "limits_json": json.dumps(limits.as_dict()),
           "adjustments_json": json.dumps(list(mapping.adjustments)),
           "forced": np.array(mapping.forced, dtype=bool)}
    for i, lm in enumerate(mapping.layers):
        art.update(_layer(i, lm))
    return art


def _read_layer(art: dict, i: int) -> LayerMap:
    p = f"l{i}."
    sets = []
    for g in range(int(art[p + "groups"])):
        q = f"{p}g{g}."
        sets.append(SynapseSet(np.asarray(art[q + "digits"], dtype=np.int64), int(art[q + "exp"]),
                               str(art[q + "mode"]), int(art[q + "scale"])))
    return LayerMap(str(art[p + "kind"]), tuple(sets),
                    np.asarray(art[p + "bias_mant"], np.int64),
                    np.asarray(art[p + "bias_exp"], np.int64), int(art[p + "vth"]),
                    np.asarray(art[p + "unit"], np.float64), int(art[p + "in_bits"]),
                    (int(art[p + "in_lo"]), int(art[p + "in_hi"])), int(art[p + "shift"]),
                    int(art[p + "weight_round"]))


def from_artifacts(art: dict) -> tuple[Mapping, Limits, str]:
    if int(art.get("loihi_version", -1)) != VERSION:
        raise FileFormatError("the file's loihi artifacts are missing or of another version",
                              hint="recompile the model with --target loihi")
    try:
        layers = tuple(_read_layer(art, i) for i in range(int(art["layers"])))
        limits = json.loads(art["limits_json"])
        limits = Limits(**{k: tuple(v) if isinstance(v, list) else v for k, v in limits.items()})
        mapping = Mapping(layers, tuple(json.loads(art["adjustments_json"])),
                          tuple(bool(f) for f in np.asarray(art["forced"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"corrupt loihi artifacts: {exc}") from None
    return mapping, limits, str(art["backend"])
