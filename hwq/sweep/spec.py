"""Sweeps: a grid of data x hidden activation x weight bits x seed x target, one cell each.

Pipeline of one cell (``hwq.sweep_cell``): train with the paper's QAT recipe (or take a given
ONNX model) -> ONNX in memory -> ``graph_from_model`` -> ``quantize`` (QAT weights kept
exactly) -> ``compile(target)`` -> FGSM over the epsilon list, judged on the integer model.

This module holds the pure part: the :class:`SweepSpec` (everything that determines the
numbers), the plan (which cells, which per-cell seeds) and :func:`run_sweep`, which hands the
tasks to an executor (``hwq.sweep_exec``) and gives every finished cell to the single writer
(``hwq.sweep_store``). The file schema is in docs/sweeps.md.

Determinism: a cell's training seed is derived from its key (data, activation, bits, seed),
never from execution order, and every cell runs single-threaded BLAS, so the numbers do not
depend on the executor or the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from hwq.activations import HIDDEN_ACTIVATIONS
from hwq.epsilons import check_epsilons
from hwq.errors import DataError, HwqError, UsageError
from hwq.schemes import check_bits, get_scheme

FORMAT, VERSION = "hwq-sweep", 1
SMALL_DATA = 10_000  # training sets below this size get the small-data training defaults
AUTO_TRAINING = {"small": (500, 100), "large": (50, 10)}  # (epochs, patience)


class Interrupted(HwqError):
    """Ctrl-C during a sweep; the finished cells are kept and the next run resumes."""

    exit_code = 130


class CellFailed(HwqError):
    """A cell raised an hwq error (bad data, unsupported model...); the sweep stops there."""

    def __reduce__(self):  # keep the exit code across process boundaries
        return _cell_failed, (self.message, self.exit_code)


def _cell_failed(message: str, exit_code: int) -> CellFailed:
    exc = CellFailed(message)
    exc.exit_code = exit_code
    return exc


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class TrainSettings:
    """The QAT recipe (hwq.train). ``epochs``/``patience`` None: by training-set size
    (< 10,000 samples: 500 / 100, else 50 / 10); ``gain`` None: 10 for spirals, else 1."""

    hidden: int = 100
    epochs: int | None = None
    patience: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    init: str = "grid"
    gain: float | None = None
    val_fraction: float = 0.1

    def resolved(self, data_name: str, n_train: int) -> dict:
        """The settings one data set trains with (auto values filled in)."""
        epochs, patience = AUTO_TRAINING["small" if n_train < SMALL_DATA else "large"]
        out = asdict(self)
        out["epochs"] = self.epochs or epochs
        out["patience"] = self.patience or patience
        out["gain"] = self.gain or (10.0 if data_name.startswith("spiral") else 1.0)
        return out


@dataclass(frozen=True)
class QuantOptions:
    """Quantizer settings (hwq.quantize). 16-bit activations and inputs make the study
    weights-only, like the paper's."""

    scheme: str = "uniform"
    act_bits: int = 16
    input_bits: int = 16
    per_channel: bool = False


@dataclass(frozen=True)
class AttackSettings:
    epsilons: tuple[float, ...] = tuple(np.round(np.arange(101) * 0.005, 12).tolist())
    gradient: str = "surrogate"
    norm: str = "linf"
    limit: int | None = None  # first N test inputs only


@dataclass(frozen=True)
class ModelRef:
    """A given ONNX model (instead of training): its path, content hash, hidden activation
    and number of input features."""

    path: str
    sha256: str
    activation: str
    n_features: int


@dataclass(frozen=True)
class SweepSpec:
    """Everything that determines a sweep's numbers (not how it is executed)."""

    data: tuple[str, ...]
    activations: tuple[str, ...] = HIDDEN_ACTIVATIONS
    bits: tuple[int, ...] = tuple(range(1, 11))
    seeds: tuple[int, ...] = tuple(range(5))
    targets: tuple[str, ...] = ("sim",)
    models: tuple[ModelRef, ...] = ()
    data_seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    quant: QuantOptions = field(default_factory=QuantOptions)
    attack: AttackSettings = field(default_factory=AttackSettings)

    def __post_init__(self):
        for name in ("data", "activations", "bits", "seeds", "targets"):
            values = tuple(getattr(self, name))
            if not values:
                raise UsageError(f"the sweep needs at least one value for {name}")
            if len(set(values)) != len(values):
                raise UsageError(f"duplicate values in {name}: {list(values)}")
            object.__setattr__(self, name, values)
        for act in self.activations:
            if act not in HIDDEN_ACTIVATIONS:
                raise UsageError(f"unknown hidden activation '{act}'",
                                 hint="use " + ", ".join(HIDDEN_ACTIVATIONS))
        for bits in self.bits:
            check_bits(bits)
        for seed in self.seeds:
            if not isinstance(seed, (int, np.integer)) or seed < 0:
                raise UsageError(f"seeds must be non-negative integers, got {seed!r}")
        get_scheme(self.quant.scheme)
        if not (1 <= self.quant.act_bits <= 16 and 2 <= self.quant.input_bits <= 16):
            raise UsageError("--act-bits must be in 1..16 and --input-bits in 2..16")
        object.__setattr__(self, "attack", replace(
            self.attack, epsilons=tuple(check_epsilons(self.attack.epsilons).tolist())))
        if self.attack.gradient not in ("surrogate", "float"):
            raise UsageError(f"unknown gradient source '{self.attack.gradient}'",
                             hint="use surrogate or float")
        if self.attack.norm not in ("linf", "l2"):
            raise UsageError(f"unknown norm '{self.attack.norm}'", hint="use linf or l2")
        if self.attack.limit is not None and self.attack.limit < 1:
            raise UsageError(f"--limit must be a positive integer, got {self.attack.limit}")
        labels = [data_label(d) for d in self.data]
        if len(set(labels)) != len(labels):
            raise UsageError(f"two data sets share a name: {labels}")

    @property
    def epsilons(self) -> np.ndarray:
        return np.asarray(self.attack.epsilons, dtype=np.float64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        d = json.loads(text)
        lists = {k: tuple(d[k]) for k in ("data", "activations", "bits", "seeds", "targets")}
        return cls(**lists, models=tuple(ModelRef(**m) for m in d["models"]),
                   data_seed=d["data_seed"], train=TrainSettings(**d["train"]),
                   quant=QuantOptions(**d["quant"]),
                   attack=AttackSettings(**{**d["attack"],
                                            "epsilons": tuple(d["attack"]["epsilons"])}))


def data_label(spec: str) -> str:
    """A short, file-safe name for a data spec: built-in names as they are, ``mnist:DIR`` ->
    ``mnist``, a file -> its stem."""
    if spec.startswith("mnist:"):
        return "mnist"
    name = Path(spec).stem if spec.endswith(".npz") else spec
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``START:STOP`` (inclusive) or ``a,b,c``."""
    try:
        if ":" in text:
            start, stop = (int(p) for p in text.split(":"))
            if stop < start:
                raise ValueError
            return tuple(range(start, stop + 1))
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"malformed {what} '{text}'", hint="use START:STOP or a,b,c") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """A count (``5`` -> seeds 0..4) or explicit seeds (``0,3,7``, ``2:4``)."""
    if text.strip().isdigit():
        count = int(text)
        if count < 1:
            raise UsageError(f"--seeds must be at least 1, got {count}")
        return tuple(range(count))
    return parse_ints(text, "--seeds")


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


# ------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Task:
    """One trained (or given) network, attacked on each of ``targets``: one cell per target."""

    data: str
    activation: str
    bits: int
    seed: int
    targets: tuple[str, ...]
    model: str | None = None  # path of a given ONNX model (model sweeps)

    @property
    def label(self) -> str:
        return data_label(self.data)

    @property
    def train_seed(self) -> int:
        return derive_seed(self.label, self.activation, self.bits, self.seed)

    def keys(self) -> list[str]:
        return [cell_key(self.label, self.activation, self.bits, self.seed, t)
                for t in self.targets]


def cell_key(label: str, activation: str, bits: int, seed: int, target: str) -> str:
    """The cell's name: its HDF5 group and its journal file (``spiral__relu__q04__s0__sim``)."""
    return f"{label}__{activation}__q{bits:02d}__s{seed}__{target}"


def derive_seed(*parts) -> int:
    """A 63-bit seed from the cell's coordinates (sha256), independent of execution order."""
    text = "hwq-sweep|" + "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def plan(spec: SweepSpec) -> list[Task]:
    """Every task of the grid, in a fixed order (data, activation, bits, seed).

    Model sweeps: one task per (data, model, bits); the model's index plays the seed and its
    hidden activation (read from the graph) the activation.
    """
    if spec.models:
        return [Task(d, m.activation, b, i, spec.targets, m.path)
                for d in spec.data for i, m in enumerate(spec.models) for b in spec.bits]
    return [Task(d, a, b, s, spec.targets)
            for d in spec.data for a in spec.activations for b in spec.bits for s in spec.seeds]


def all_keys(tasks: Iterable[Task]) -> list[str]:
    return [k for t in tasks for k in t.keys()]


def model_ref(path: str | Path) -> ModelRef:
    """Read a given ONNX model once: its hash and its hidden activation."""
    from hwq.onnx_import import graph_from_model, read_model

    path = Path(path)
    model = read_model(path)
    graph = graph_from_model(model)
    acts = [act for _, act in graph.layers()[:-1]]
    if len(acts) != 1 or acts[0] not in HIDDEN_ACTIVATIONS:
        raise UsageError(f"{path}: a sweep model needs one hidden layer with step, sigmoid or "
                         f"relu, found {acts or 'none'}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelRef(str(path.resolve()), digest, acts[0], graph.n_features)


# ------------------------------------------------------------------------- running


Progress = Callable[[int, int, object], None]  # (cells done, cells total, CellResult or None)


def run_sweep(spec: SweepSpec, path: str | Path, executor, *, command: str = "",
              overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Run (or resume) the sweep into ``path``; returns a summary dict.

    ``executor`` is an ``hwq.sweep_exec`` executor (local pool, Dask or serial). Finished
    cells are journaled beside the file (``PATH.cells/``) before they are appended to it, so
    an interrupted sweep (Ctrl-C, kill -9) resumes with the cells it has.
    """
    from hwq.sweep_cell import data_info, run_task
    from hwq.sweep_store import SweepStore
    from hwq.targets import get_target

    for target in spec.targets:  # fail before any file is created
        get_target(target)
    tasks = plan(spec)
    keys = all_keys(tasks)
    data = {data_label(d): data_info(d, spec) for d in spec.data}
    for m in spec.models:
        for label, info in data.items():
            if info["n_features"] != m.n_features:
                raise DataError(f"{m.path} expects {m.n_features} input features, data set "
                                f"{label} has {info['n_features']}")
    store = SweepStore(Path(path))
    executor_name = f"{executor.name} x{executor.workers}"
    with store.session(spec, data, keys, command=command, overwrite=overwrite,
                       executor=executor_name) as session:
        todo = [t for t in tasks if not set(t.keys()) <= session.done]
        if progress:
            progress(len(session.done), len(keys), None)
        try:
            for cells in executor.imap(run_task, [(spec, t) for t in todo]):
                for cell in cells:
                    session.check_fingerprint(cell)
                    session.add(cell)
                if progress:
                    progress(len(session.done), len(keys), cells[-1] if cells else None)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted after {len(session.done)} of {len(keys)} cells",
                              hint="run the same command again to resume") from None
        session.finish()
    return {"output": str(path), "cells": len(keys), "ran": len(keys) - session.resumed,
            "resumed": session.resumed, "stalled": session.stalled,
            "wall_s": session.elapsed(), "executor": executor_name}


def describe(path: str | Path) -> dict:
    """What ``hwq info`` prints for a sweep file."""
    from hwq.sweep_store import content_digest, read_sweep

    sw = read_sweep(path)
    spec = sw.spec
    return {
        "kind": "sweep", "version": VERSION, "hwq_version": sw.attrs.get("hwq_version"),
        "command": sw.attrs.get("command"), "data": list(spec.data),
        "activations": sorted({c.attrs["activation"] for c in sw.cells}) or list(spec.activations),
        "bits": list(spec.bits), "seeds": list(spec.seeds), "targets": list(spec.targets),
        "epsilons": [float(sw.epsilons.min()), float(sw.epsilons.max()), int(sw.epsilons.size)],
        "cells": len(sw.cells), "planned": int(sw.attrs.get("n_planned", 0)),
        "complete": bool(sw.attrs.get("complete", False)),
        "stalled": [c.key for c in sw.cells if c.attrs["stalled"]],
        "content_sha256": content_digest(path),
    }
