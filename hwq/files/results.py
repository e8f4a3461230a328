"""Attack results files (HDF5, version 1; schema in docs/file-formats.md).

Layout::

    /              attrs: format="hwq-attack", version=1, hwq_version, command, model, target,
                          backend, gradient, norm, bits, scheme, data, data_fingerprint,
                          seed, quantization (JSON), created (ISO time)
    /epsilons      (K,)   float64
    /accuracy      (K,)   float64   accuracy of the integer model at each epsilon
    /correct       (K, N) bool      per input and epsilon
    /predictions   (K, N) int64
    /clean_correct (N,)   bool
    /zero_gradient (N,)   bool
    /labels        (N,)   int64
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hwq import __version__, h5io
from hwq.attack import AttackResult

FORMAT, VERSION = "hwq-attack", 1
ARRAYS = ("epsilons", "accuracy", "correct", "predictions", "clean_correct", "zero_gradient", "labels")


def write_attack(path: str | Path, result: AttackResult, meta: dict) -> None:
    with h5io.atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, version=VERSION, hwq_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       norm=result.norm, gradient=result.gradient, target=result.target)
        for key, value in meta.items():
            f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        for name in ARRAYS:
            f.create_dataset(name, data=np.asarray(getattr(result, name)), compression="gzip")


def read_attack(path: str | Path) -> dict:
    with h5io.open_checked(path, FORMAT, (VERSION,)) as f:
        def load():
            out = {name: f[name][()] for name in ARRAYS}
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
        "gradient": result.gradient,
        "norm": result.norm,
    }
