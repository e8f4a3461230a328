"""Several sweep files of one grid, run with different seeds, read as one sweep.

``hwq sweep ... --seeds 0:1 -o a.h5`` and ``--seeds 2:4 -o b.h5`` (maybe on different
machines) hold the cells of one grid; :func:`merge_sweeps` reads them as the sweep over the
union of their seeds (sorted), so the report covers every seed. Files may differ in nothing
but their seeds: the spec (data, activations, bits, targets, strengths, models, training,
quantization, attack, device), the data sets (fingerprints and every attribute) and the hwq
version must be equal, and no seed may be in two files; anything else is refused in one line
naming the first differing field, before anything is written. A data set read from another
path (``mnist:DIR`` or ``FILE.npz`` on another machine) is the same data set when its name and
its fingerprint (a digest of every array) agree; the merged sweep names the first file's path
and each source keeps its own command line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from hwq.errors import UsageError
from hwq.sweep.spec import AttackSettings, QuantOptions, TrainSettings, data_label
from hwq.sweep.store import SweepFile, content_digest, read_sweep

ONLY_SEEDS = "only seeds may differ"

# spec fields in the order they are compared, with the names the sweep's options use
GRID = (("data", "data"), ("activations", "activations"), ("bits", "bits"),
        ("targets", "targets"), ("attack.epsilons", "eps"), ("models", "models"),
        ("device", "device"), ("data_seed", "data-seed"))
OPTION_NAMES = {"train.learning_rate": "lr", "attack.gradient": "grad", "attack.name": "attacks",
                "attack.seed": "attack-seed", "attack.random_start": "random-start",
                "quant.per_channel": "per-channel"}


def _ordered_fields() -> list[tuple[str, str]]:
    out = list(GRID)
    for section, cls in (("train", TrainSettings), ("quant", QuantOptions),
                         ("attack", AttackSettings)):
        for f in fields(cls):
            path = f"{section}.{f.name}"
            if path != "attack.epsilons":
                out.append((path, OPTION_NAMES.get(path, f.name.replace("_", "-"))))
    return out


def _get(spec: dict, path: str):
    value = spec
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _show(value) -> str:
    """A value as the sweep's options write it: integers as START:STOP where consecutive,
    strengths as START:STOP:STEP where evenly spaced, long lists shortened."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, (list, tuple)):
        return str(value)
    if value and all(isinstance(v, dict) for v in value):
        return ",".join(str(v.get("path", v)) for v in value)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if numbers and len(value) >= 3:
        step = np.diff(np.asarray(value, float))
        if step[0] > 0 and np.allclose(step, step[0], rtol=1e-9, atol=1e-12):
            if all(isinstance(v, int) for v in value) and step[0] == 1:
                return f"{value[0]}:{value[-1]}"
            return f"{value[0]:g}:{value[-1]:g}:{step[0]:g}"
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in value]
    if len(items) > 8:
        items = [*items[:3], "...", items[-1], f"({len(value)} values)"]
    return ",".join(items) or "none"


def first_difference(a: SweepFile, b: SweepFile) -> tuple[str, str, str] | None:
    """(field, value in a, value in b) of the first thing other than the seeds in which two
    sweep files differ, or None."""
    sa, sb = json.loads(a.spec.to_json()), json.loads(b.spec.to_json())
    for path, name in _ordered_fields():
        va, vb = _get(sa, path), _get(sb, path)
        if path == "data":  # mnist:DIR / FILE.npz at other paths: the fingerprints decide
            va, vb = [data_label(d) for d in va], [data_label(d) for d in vb]
        if va != vb:
            return name, _show(va), _show(vb)
    rest = sorted((set(sa) | set(sb)) - {p.split(".")[0] for p, _ in _ordered_fields()} - {"seeds"})
    for key in rest:  # spec fields added later: compared all the same
        if sa.get(key) != sb.get(key):
            return key, _show(sa.get(key)), _show(sb.get(key))
    for label in sorted(set(a.data) | set(b.data)):
        da, db = a.data.get(label, {}), b.data.get(label, {})
        if da.get("fingerprint") != db.get("fingerprint"):
            return (f"the fingerprint of data set {label}", str(da.get("fingerprint"))[:12],
                    str(db.get("fingerprint"))[:12])
        for key in sorted((set(da) | set(db)) - {"spec"}):  # "spec": the path it was read from
            if _plain(da.get(key)) != _plain(db.get(key)):
                return (f"{key} of data set {label}", _show(_plain(da.get(key))),
                        _show(_plain(db.get(key))))
    va, vb = a.attrs.get("hwq_version"), b.attrs.get("hwq_version")
    if va != vb:
        return "hwq version", str(va), str(vb)
    return None


def _machines(sweeps) -> list:
    """The machines of every file, each once (``hwq.sweep.machine``)."""
    out = []
    for sw in sweeps:
        machines = sw.attrs.get("machine")
        for m in machines if isinstance(machines, list) else []:
            if m not in out:
                out.append(m)
    return out


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _source(path: Path, sw: SweepFile, digest: str) -> dict:
    a = sw.attrs
    return {"path": str(path), "content_sha256": digest, "seeds": list(sw.spec.seeds),
            "cells": len(sw.cells), "planned": int(a.get("n_planned", len(sw.cells))),
            "complete": bool(a.get("complete", False)), "command": a.get("command", ""),
            "created": a.get("created", ""), "executor": a.get("executor", ""),
            "wall_s": float(a.get("wall_s", 0.0))}


def merge_sweeps(paths: Sequence[str | Path]) -> SweepFile:
    """Read sweep files of one grid that differ only in their seeds as one sweep over the
    union of their seeds (sorted): cells sorted by key, each cell's ``source`` its file,
    ``sources`` one dict per file (path, content_sha256, seeds, cells, planned, complete,
    command, created, executor, wall_s). One file is read as it is (``read_sweep``).

    Refused with a one-line :class:`UsageError`: files that differ in anything else (the
    first differing field and both values), a seed in two files, a file given twice. Sweeps
    of given models merge over their attack seeds (the models must be the same files).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("no sweep file given")
    if len(paths) == 1:
        return read_sweep(paths[0])
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            also = "" if str(seen[key]) == str(p) else f" (as {seen[key]})"
            raise UsageError(f"{p} is given twice{also}; each seed may come from one file only")
        seen[key] = p
    sweeps = [read_sweep(p) for p in paths]
    first, base = paths[0], sweeps[0]
    owner: dict[int, Path] = {}
    for path, sw in zip(paths, sweeps):
        diff = first_difference(base, sw)
        if diff is not None:
            name, old, new = diff
            raise UsageError(f"{path} differs from {first} in {name} ({old} vs {new}); "
                             f"{ONLY_SEEDS}")
        for seed in sw.spec.seeds:
            if seed in owner:
                raise UsageError(f"{path} repeats seed {seed} of {owner[seed]}; each seed may "
                                 "come from one file only")
            owner[seed] = path
    cells, keys = [], {}
    for path, sw in zip(paths, sweeps):
        for c in sw.cells:
            if c.key in keys:  # seeds are disjoint, so only a damaged file gets here
                raise UsageError(f"{path} repeats cell {c.key} of {keys[c.key]}; each cell may "
                                 "come from one file only")
            keys[c.key] = path
            cells.append(replace(c, source=path))
    cells.sort(key=lambda c: c.key)
    spec = replace(base.spec, seeds=tuple(sorted(owner)))
    sources = tuple(_source(p, sw, content_digest(p)) for p, sw in zip(paths, sweeps))
    attrs = {**base.attrs,
             "spec": spec.to_json(),
             "spec_sha256": hashlib.sha256(spec.to_json().encode()).hexdigest(),
             "seeds": np.asarray(spec.seeds, np.int64),
             "n_planned": sum(s["planned"] for s in sources),
             "n_cells": len(cells),
             "complete": all(s["complete"] for s in sources),
             "wall_s": sum(s["wall_s"] for s in sources),
             "created": min(s["created"] for s in sources),
             "command": "; ".join(dict.fromkeys(s["command"] for s in sources)),
             "executor": ", ".join(dict.fromkeys(s["executor"] for s in sources if s["executor"])),
             "machine": _machines(sweeps)}
    return SweepFile(first, attrs, spec, base.epsilons, base.data, cells, sources)
