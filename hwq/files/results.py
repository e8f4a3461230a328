"""Attack results and run files (HDF5; schema in docs/file-formats.md).

Attack results, version 2 (version 1 files, which predate ``attack``/``attack_params``, are
still read: they were all FGSM with the ``norm`` they record)::

    /              attrs: format="hwq-attack", version=2, hwq_version, command, model, target,
                          options (JSON), attack, attack_params (JSON), gradient, norm, bits,
                          scheme, data, data_fingerprint, seed, quantization (JSON),
                          diagnostics (JSON), created (ISO time)
    /epsilons      (K,)   float64
    /accuracy      (K,)   float64   accuracy of the integer model at each epsilon
    /correct       (K, N) bool      per input and epsilon
    /predictions   (K, N) int64
    /clean_correct (N,)   bool
    /zero_gradient (N,)   bool
    /labels        (N,)   int64
    optional (iterative attacks and suites, readers of version 2 ignore what they lack):
    /queries       (K, N) int64     model queries per input and epsilon (score-based attacks)
    /nonfinite_gradient (N,) bool   a NaN/Inf gradient was seen
    /members/<attack>/{accuracy, correct, predictions[, queries]}  a suite's attacks; the
                   root arrays are then the per-input worst case (robust accuracy)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hwq.attack import AttackResult
from hwq.files import h5io
from hwq.version import __version__

FORMAT, VERSION = "hwq-attack", 2
READABLE = (1, 2)
ARRAYS = ("epsilons", "accuracy", "correct", "predictions", "clean_correct", "zero_gradient", "labels")
OPTIONAL = ("queries", "nonfinite_gradient")
MEMBER_ARRAYS = ("accuracy", "correct", "predictions", "queries")
RUN_FORMAT, RUN_VERSION = "hwq-run", 1
RUN_ARRAYS = ("scores", "predictions", "labels", "correct")


def write_attack(path: str | Path, result: AttackResult, meta: dict) -> None:
    with h5io.atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, version=VERSION, hwq_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       attack=result.attack, attack_params=json.dumps(result.params, sort_keys=True),
                       diagnostics=json.dumps(result.diagnostics, sort_keys=True, default=str),
                       norm=result.norm, gradient=result.gradient, target=result.target)
        for key, value in meta.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        for name in ARRAYS:
            f.create_dataset(name, data=np.asarray(getattr(result, name)), compression="gzip")
        for name in OPTIONAL:
            if getattr(result, name) is not None:
                f.create_dataset(name, data=np.asarray(getattr(result, name)), compression="gzip")
        for m in result.members:
            g = f.create_group(f"members/{m.attack}")
            g.attrs.update(attack_params=json.dumps(m.params, sort_keys=True), gradient=m.gradient)
            for name in MEMBER_ARRAYS:
                if getattr(m, name) is not None:
                    g.create_dataset(name, data=np.asarray(getattr(m, name)), compression="gzip")


def read_attack(path: str | Path) -> dict:
    with h5io.open_checked(path, FORMAT, READABLE) as f:
        def load():
            out = {name: f[name][()] for name in ARRAYS + OPTIONAL if name in f}
            out["members"] = {k: {n: g[n][()] for n in g} | {"attrs": {a: h5io.plain(v) for a, v in g.attrs.items()}}
                              for k, g in f["members"].items()} if "members" in f else {}
            out["attrs"] = {k: h5io.plain(v) for k, v in f.attrs.items()}
            if int(out["attrs"]["version"]) == 1:  # every version-1 file is FGSM
                out["attrs"].setdefault("attack", "fgsm")
                out["attrs"].setdefault("attack_params", json.dumps({"norm": out["attrs"].get("norm", "linf")}))
            return out
        return h5io.guarded(path, load)


def write_run(path: str | Path, scores: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
              meta: dict) -> None:
    """``hwq run -o RUN.h5``: the integer scores and decisions of every input."""
    with h5io.atomic_h5(path) as f:
        f.attrs.update(format=RUN_FORMAT, version=RUN_VERSION, hwq_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for key, value in meta.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        arrays = {"scores": np.asarray(scores, np.int64), "predictions": np.asarray(predictions, np.int64),
                  "labels": np.asarray(labels, np.int64), "correct": np.asarray(predictions) == np.asarray(labels)}
        for name in RUN_ARRAYS:
            f.create_dataset(name, data=arrays[name], compression="gzip")


def read_run(path: str | Path) -> dict:
    with h5io.open_checked(path, RUN_FORMAT, (RUN_VERSION,)) as f:
        def load():
            out = {name: f[name][()] for name in RUN_ARRAYS}
            out["attrs"] = {k: h5io.plain(v) for k, v in f.attrs.items()}
            return out
        return h5io.guarded(path, load)


def summary(result: AttackResult) -> dict:
    """The machine-readable summary printed by ``hwq attack --json``."""
    return {
        "eps": result.epsilons.tolist(),
        "accuracy": result.accuracy.tolist(),
        "clean_accuracy": result.clean_accuracy,
        "relative_accuracy": result.relative_accuracy.tolist(),
        "zero_gradient": int(result.zero_gradient.sum()),
        "n_inputs": int(result.labels.size),
        "target": result.target,
        "attack": result.attack,
        "attack_params": result.params,
        "gradient": result.gradient,
        "norm": result.norm,
        "diagnostics": result.diagnostics,
        "flags": result.diagnostics.get("flags", []),
        "robust_accuracy": result.accuracy.tolist(),
        "members": {m.attack: {"accuracy": m.accuracy.tolist(), "attack_params": m.params,
                               "gradient": m.gradient} for m in result.members},
        "queries": None if result.queries is None else {
            "total": int(result.queries.sum()), "mean_per_input": result.queries.mean(axis=1).tolist()},
    }
