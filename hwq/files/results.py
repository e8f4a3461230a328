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
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hwq.attack import AttackResult
from hwq.errors import FileFormatError, UsageError
from hwq.files import h5io
from hwq.version import __version__

FORMAT, VERSION = "hwq-attack", 2
READABLE = (1, 2)
ARRAYS = ("epsilons", "accuracy", "correct", "predictions", "clean_correct", "zero_gradient", "labels")
OPTIONAL = ("queries", "nonfinite_gradient")
MEMBER_ARRAYS = ("accuracy", "correct", "predictions", "queries")
RUN_FORMAT, RUN_VERSION = "hwq-run", 1
RUN_ARRAYS = ("scores", "predictions", "labels", "correct")


def check_replaceable(path: str | Path, kind: str, versions: tuple[int, ...]) -> None:
    """An existing ``path`` may be replaced only by a file of its own kind: a sweep, a run file,
    a compiled model or any file hwq did not write under the name is refused in one line (it
    used to be overwritten)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    what = {FORMAT: "attack results", RUN_FORMAT: "run"}.get(kind, kind)
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"{path} exists and is not a file; it is not replaced by {what}",
                         hint="choose another -o")
    try:
        h5io.open_checked(path, kind, versions).close()
    except FileFormatError as exc:
        raise UsageError(f"{path} exists and is not a {what} file ({exc.message.removeprefix(f'{path}: ')}); "
                         "it is not replaced", hint="choose another -o, or remove that file first") from None


def write_attack(path: str | Path, result: AttackResult, meta: dict) -> None:
    check_replaceable(path, FORMAT, READABLE)
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
        return check_attack(path, h5io.guarded(path, load))


def write_run(path: str | Path, scores: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
              meta: dict) -> None:
    """``hwq run -o RUN.h5``: the integer scores and decisions of every input."""
    check_replaceable(path, RUN_FORMAT, (RUN_VERSION,))
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
        return check_run(path, h5io.guarded(path, load))


def _bad(path, what: str) -> FileFormatError:
    return FileFormatError(f"{path}: {what}", hint="the file is damaged or was edited")


def _shape(path, name: str, a: np.ndarray, shape: tuple, kinds: str) -> None:
    if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind not in kinds:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise _bad(path, f"{name} is {got}, expected shape {shape}")


def _accuracy(path, name: str, accuracy: np.ndarray, correct: np.ndarray) -> None:
    if not np.all((accuracy >= 0) & (accuracy <= 1)):
        raise _bad(path, f"{name} holds {accuracy[~((accuracy >= 0) & (accuracy <= 1))][0]!r}, not a share in [0, 1]")
    if correct.shape[1] and not np.allclose(accuracy, correct.mean(axis=1), rtol=0, atol=1e-9):
        raise _bad(path, f"{name} disagrees with the per-input results it summarizes")


def check_attack(path, out: dict) -> dict:
    """Shapes, kinds and ranges of an attack results file, and its accuracies against the
    per-input results (one-line FileFormatError)."""
    for name in ARRAYS:
        if name not in out:
            raise _bad(path, f"no {name}")
    eps = out["epsilons"]
    _shape(path, "epsilons", eps, eps.shape[:1], "f")
    k, n = eps.shape[0], out["labels"].shape[0] if out["labels"].ndim == 1 else -1
    if k == 0 or not np.all(np.isfinite(eps)) or np.any(eps < 0):
        raise _bad(path, "its strengths are not finite numbers >= 0")
    _shape(path, "labels", out["labels"], (n,), "iu")
    for name, shape, kinds in (("accuracy", (k,), "f"), ("correct", (k, n), "b"), ("predictions", (k, n), "iu"),
                               ("clean_correct", (n,), "b"), ("zero_gradient", (n,), "b"),
                               ("queries", (k, n), "iu"), ("nonfinite_gradient", (n,), "b")):
        if name in out:
            _shape(path, name, out[name], shape, kinds)
    _accuracy(path, "accuracy", out["accuracy"], out["correct"])
    for attack, m in out["members"].items():
        for name, shape, kinds in (("accuracy", (k,), "f"), ("correct", (k, n), "b"), ("predictions", (k, n), "iu"),
                                   ("queries", (k, n), "iu")):
            if name in m:
                _shape(path, f"members/{attack}/{name}", m[name], shape, kinds)
        if "accuracy" in m and "correct" in m:
            _accuracy(path, f"members/{attack}/accuracy", m["accuracy"], m["correct"])
    return out


def check_run(path, out: dict) -> dict:
    """Shapes and kinds of a run file; ``correct`` must be ``predictions == labels``."""
    scores = out["scores"]
    n = out["labels"].shape[0] if out["labels"].ndim == 1 else -1
    _shape(path, "labels", out["labels"], (n,), "iu")
    _shape(path, "scores", scores, (n, scores.shape[1] if scores.ndim == 2 else -1), "iu")
    _shape(path, "predictions", out["predictions"], (n,), "iu")
    _shape(path, "correct", out["correct"], (n,), "b")
    if n and (out["predictions"].min() < 0 or out["predictions"].max() >= max(scores.shape[1], 2)):
        raise _bad(path, "a prediction is not a class of the scores")
    if not np.array_equal(out["correct"], out["predictions"] == out["labels"]):
        raise _bad(path, "correct disagrees with predictions and labels")
    return out


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
