"""Sweeps: a grid of data x hidden activation x weight bits x seed x target, one cell each; or,
with given ONNX models, a grid of data x model x weight bits x (attack) seed x target x attack.

Pipeline of one cell (``hwq.sweep.cell``): train with the paper's QAT recipe (or take a given
ONNX model) -> ONNX in memory -> ``graph_from_model`` -> ``quantize`` (QAT weights kept
exactly) -> ``compile(target)`` -> the attack (FGSM, PGD, Square or a worst-case suite) over
the epsilon list, judged on the integer model.

Given models (the model axis, :class:`ModelRef`): a file whose weights all sit on QAT grids
keeps them (its cells' bits are its grids' bits), a float file is quantized post-training at
every one of the spec's ``bits``; the seed axis is then the attack's seed (attacks without one
take a single seed).

This module holds the pure part: the :class:`SweepSpec` (everything that determines the
numbers), the plan (which cells, which per-cell seeds) and :func:`run_sweep`, which hands the
tasks to an executor (``hwq.sweep.executors``) and gives every finished cell to the single writer
(``hwq.sweep.store``). The file schema is in docs/sweeps.md.

Determinism: a cell's training seed is derived from its key (data, activation, bits, seed),
never from execution order, and every cell runs single-threaded BLAS, so the numbers do not
depend on the executor or the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path

import numpy as np

from hwq.attack import ATTACK_PARAMETERS
from hwq.attack.gradients import GRADIENT_OPTIONS, GradientOptions, check_gradient_name, check_option
from hwq.errors import FileFormatError, HwqError, UsageError
from hwq.ir.activations import HIDDEN_ACTIVATIONS
from hwq.params import declared
from hwq.quant.schemes import check_bits, get_scheme
from hwq.ranges import check_epsilons, check_norm
from hwq.sweep.device import check_device
from hwq.train import TrainConfig, auto_training, check_train_param

FORMAT, VERSION = "hwq-sweep", 1


class CellFailed(HwqError):
    """A cell raised an hwq error (bad data, unsupported model...); the sweep stops there."""

    def __reduce__(self):  # keep the exit code across process boundaries
        return _cell_failed, (self.message, self.exit_code)


def _cell_failed(message: str, exit_code: int) -> CellFailed:
    exc = CellFailed(message)
    exc.exit_code = exit_code
    return exc


# ----------------------------------------------------------------------------- the spec


def _train_resolved(self, data_name: str, n_train: int) -> dict:
    """The settings one data set trains with (the computed defaults, ``hwq.train.auto_training``,
    filled in where a setting is None)."""
    auto = auto_training(data_name, n_train)
    return {k: auto[k] if v is None and k in auto else v for k, v in asdict(self).items()}


def _train_check(self):
    for name, value in asdict(self).items():
        if value is not None:  # None: the computed default
            check_train_param(name, value)


# The QAT recipe (hwq.train): TrainConfig's declared fields that a sweep sets (its axes are
# activation, bits and seed; the scheme is QuantOptions'); those with a computed default
# (epochs, patience, gain) are None here, "by data set", and resolved per data set.
TrainSettings = make_dataclass(
    "TrainSettings",
    [(p.name, p.type | None if p.declared.auto else p.type, field(default=None if p.declared.auto else p.default))
     for p in declared(TrainConfig) if p.declared.sweep],
    namespace={"resolved": _train_resolved, "__post_init__": _train_check,
               "__doc__": "The QAT recipe of every cell: hwq.train.TrainConfig's sweep fields (generated); "
                          "None: the computed default (epochs/patience by training-set size, gain by data)."},
    frozen=True, module=__name__)


@dataclass(frozen=True)
class QuantOptions:
    """Quantizer settings (hwq.quantize). 16-bit activations and inputs make the study
    weights-only, like the paper's."""

    scheme: str = "uniform"
    act_bits: int = 16
    input_bits: int = 16
    per_channel: bool = False


def _attack_params(self) -> dict:
    """The optional parameters that are set (what the spec's JSON records)."""
    return {k: getattr(self, k) for k in OPTIONAL_ATTACK_FIELDS if getattr(self, k) is not None}


def _attack_method(self):
    from hwq.attack import make_suite

    params = {k: v for k, v in self.params().items() if k not in ("diagnostics", *_GRADIENT)}
    return make_suite(self.name, norm=self.norm, **params)


def _gradient_options(self) -> dict:
    """The gradient source's options (``gradient_source``'s keywords: temperature, ste)."""
    return {name: getattr(self, name) for name in _GRADIENT}


def _attack_check(self):
    for p in ATTACK_PARAMETERS.values():
        p.parameter.check(getattr(self, p.name))


# The attack of every cell: ``name`` is one attack of ``hwq.attack.ATTACKS`` or a comma-separated
# suite (``fgsm,pgd,square``: the cell's ``accuracy`` is then the per-input worst case, each
# attack's under ``attacks/<name>/``). The attack parameters are generated from the attack
# dataclasses' declared fields (hwq.attack.ATTACK_PARAMETERS): ``norm`` (every attack's, same
# default) always recorded, the others None (the attack's default) and left out of the spec's
# JSON when unset (so older sweep files resume).
_OPTIONAL = [p for p in ATTACK_PARAMETERS.values() if p.shared_default is None]
# the gradient source's options (hwq.attack.gradients.GradientOptions: --temperature, --ste), None: default
_GRADIENT = tuple(p.name for p in GRADIENT_OPTIONS)
_GRADIENT_HINTS = typing.get_type_hints(GradientOptions)
AttackSettings = make_dataclass(
    "AttackSettings",
    [("epsilons", tuple[float, ...], field(default=tuple(np.round(np.arange(101) * 0.005, 12).tolist()))),
     ("gradient", str, field(default="surrogate")),
     *[(p.name, p.type, field(default=p.shared_default)) for p in ATTACK_PARAMETERS.values()
       if p.shared_default is not None],
     ("limit", int | None, field(default=None)),  # first N test inputs only
     ("name", str, field(default="fgsm")),  # hwq.attack.ATTACKS, or a suite a,b,c
     *[(p.name, p.type | None, field(default=None)) for p in _OPTIONAL],
     ("diagnostics", bool | None, field(default=None)),  # None: run the unbounded-strength check
     *[(p.name, _GRADIENT_HINTS[p.field], field(default=None)) for p in GRADIENT_OPTIONS]],
    namespace={"params": _attack_params, "method": _attack_method, "__post_init__": _attack_check,
               "gradient_options": _gradient_options,
               "__doc__": "The attack of every cell (hwq.sweep.spec): epsilons, gradient source, name (an attack "
                          "or a suite a,b,c) and the attack parameters generated from the attack dataclasses."},
    frozen=True, module=__name__)

OPTIONAL_ATTACK_FIELDS = (*(p.name for p in _OPTIONAL), "diagnostics", *_GRADIENT)


@dataclass(frozen=True)
class ModelRef:
    """A given ONNX model (the model axis): its file, content hash, name in cell keys, input
    shape and number of classes, the hidden activation kinds in graph order (any depth), and
    ``grid_bits``: the bits its QAT weight grids use (every weight node on a grid: the cells
    keep them; the widest where they differ, as ``hwq.quantize`` records them), or None for a
    float model (quantized post-training at each of the sweep's bits)."""

    path: str
    sha256: str
    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    activations: tuple[str, ...] = ()
    grid_bits: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "activations", tuple(self.activations))
        if not MODEL_NAME.fullmatch(self.name):
            raise UsageError(f"sweep model name '{self.name}' is not a cell key part",
                             hint="letters, digits and _ . - + (no '__')")

    @property
    def quantization(self) -> str:
        """``qat`` (the file's grids are kept) or ``ptq`` (quantized post-training)."""
        return "ptq" if self.grid_bits is None else "qat"

    def describe(self) -> dict:
        """What a sweep file records of the model (root ``models``, each cell's attributes)."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "input_shape": list(self.input_shape),
                "n_classes": self.n_classes, "activations": list(self.activations), "grid_bits": self.grid_bits,
                "quantization": self.quantization}

    def cell_attrs(self) -> dict:
        """What each of the model's cells records of it: ``model_path``, ``model_sha256``,
        ``input_shape``, ``hidden_activations``, ``quantization`` (``qat``: the file's grids
        kept; ``ptq``) and ``grid_bits`` (QAT only)."""
        out = {"model_path": self.path, "model_sha256": self.sha256, "input_shape": list(self.input_shape),
               "hidden_activations": list(self.activations), "quantization": self.quantization}
        if self.grid_bits is not None:
            out["grid_bits"] = self.grid_bits
        return out


MODEL_NAME = re.compile(r"(?!.*__)[A-Za-z0-9_.+-]+")


def model_name(path: str | Path, taken: Iterable[str] = ()) -> str:
    """A model's name in cell keys: its file stem made key-safe (``-2``, ``-3``... where two
    files share a stem)."""
    base = re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(path).stem)).strip("_.") or "model"
    name, n, taken = base, 1, set(taken)
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


@dataclass(frozen=True)
class SweepSpec:
    """Everything that determines a sweep's numbers (not how it is executed)."""

    data: tuple[str, ...]
    activations: tuple[str, ...] = HIDDEN_ACTIVATIONS
    bits: tuple[int, ...] = tuple(range(1, 11))
    seeds: tuple[int, ...] | None = None  # None: 0..4 (trained cells), 0 (given models: the attack's seed)
    targets: tuple[str, ...] = ("sim",)
    models: tuple[ModelRef, ...] = ()
    data_seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    quant: QuantOptions = field(default_factory=QuantOptions)
    attack: AttackSettings = field(default_factory=AttackSettings)
    device: str | None = None  # judge every cell on a device (hwq/sweep/device.py)

    def __post_init__(self):
        if self.seeds is None:
            object.__setattr__(self, "seeds", (0,) if self.models else tuple(range(5)))
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
        check_gradient_name(self.attack.gradient)
        object.__setattr__(self, "attack", replace(
            self.attack, **{name: check_option(name, getattr(self.attack, name)) for name in _GRADIENT}))
        check_norm(self.attack.norm)
        self.attack.method()  # unknown attacks and bad parameters fail here
        if self.attack.limit is not None and self.attack.limit < 1:
            raise UsageError(f"--limit must be a positive integer, got {self.attack.limit}")
        for target in self.targets:
            check_target_spec(target)
        check_device(self.device)
        labels = [data_label(d) for d in self.data]
        if len(set(labels)) != len(labels):
            raise UsageError(f"two data sets share a name: {labels}")
        self._check_models()

    def _check_models(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            return
        for key, what in (("name", "name"), ("sha256", "contents")):
            seen: dict[str, str] = {}
            for m in self.models:
                if getattr(m, key) in seen:
                    raise UsageError(f"models {seen[getattr(m, key)]} and {m.path} have the same {what}",
                                     hint="give each model once (and files with different names)")
                seen[getattr(m, key)] = m.path
        if len(self.seeds) > 1 and not attack_takes_seed(self.attack):
            raise UsageError(f"--seeds {','.join(map(str, self.seeds))}: in a sweep of given models the seed is "
                             f"the attack's, and {self.attack.name} has none (every seed would repeat the "
                             "same cells)", hint="give one seed, or an attack with random starts or windows")

    def model_bits(self, model: ModelRef) -> tuple[int, ...]:
        """The bits a model's cells use: its QAT grids' bits, or every one of ``bits`` (PTQ)."""
        return self.bits if model.grid_bits is None else (model.grid_bits,)

    @property
    def all_bits(self) -> tuple[int, ...]:
        """Every bit width a cell of the sweep uses, ascending."""
        if not self.models:
            return tuple(sorted(self.bits))
        return tuple(sorted({b for m in self.models for b in self.model_bits(m)}))

    @property
    def attack_token(self) -> str:
        """The attack's part of a model cell's key: ``fgsm``, ``fgsm+pgd+square``."""
        return re.sub(r"[^A-Za-z0-9_.+-]", "", self.attack.name.replace(",", "+"))

    def cell_attack(self, seed: int):
        """The attack settings of a model cell with attack seed ``seed`` (the spec's
        ``--attack-seed``, default 0, plus the cell's seed)."""
        if not attack_takes_seed(self.attack):
            return self.attack
        return replace(self.attack, seed=(self.attack.seed or 0) + int(seed))

    @property
    def epsilons(self) -> np.ndarray:
        return np.asarray(self.attack.epsilons, dtype=np.float64)

    def to_json(self) -> str:
        d = asdict(self)
        for k in OPTIONAL_ATTACK_FIELDS:
            if d["attack"][k] is None:
                del d["attack"][k]
        if d["device"] is None:  # sweeps without a device keep the spec they always had
            del d["device"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        d = json.loads(text)
        lists = {k: tuple(d[k]) for k in ("data", "activations", "bits", "seeds", "targets")}
        return cls(**lists, models=tuple(_model_from_json(m) for m in d["models"]),
                   data_seed=d["data_seed"], train=TrainSettings(**d["train"]),
                   quant=QuantOptions(**d["quant"]),
                   attack=AttackSettings(**{**d["attack"],
                                            "epsilons": tuple(d["attack"]["epsilons"])}),
                   device=d.get("device"))


def _model_from_json(m: dict) -> ModelRef:
    if not isinstance(m, dict) or "name" not in m:  # hwq before the model axis: one hidden layer, index = seed
        raise FileFormatError("the sweep's models were recorded by an older hwq (before the model axis)",
                              hint="run the sweep again (with --overwrite) to rebuild it")
    try:
        return ModelRef(**m)
    except TypeError as exc:
        raise FileFormatError(f"a model of the sweep is not one hwq records ({exc})") from None


def attack_takes_seed(attack) -> bool:
    """Whether the attack (or a member of the suite) draws random numbers from a seed."""
    method = attack.method()
    return any(getattr(m, "seed", None) is not None for m in getattr(method, "attacks", (method,)))


def data_label(spec: str) -> str:
    """A short, file-safe name for a data spec: built-in names as they are, ``mnist:DIR`` ->
    ``mnist``, a file -> its stem."""
    if spec.startswith("mnist:"):
        return "mnist"
    name = Path(spec).stem if spec.endswith(".npz") else spec
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


TARGET_SPEC = re.compile(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.,=+-]*)?")


def check_target_spec(target: str) -> str:
    """A sweep target: a name, or ``name:opt=value,...`` (``truenorth:relu=rate``) made of
    characters a cell key (HDF5 group and journal file name) can hold."""
    if not isinstance(target, str) or not TARGET_SPEC.fullmatch(target):
        raise UsageError(f"sweep target '{target}' is not NAME or NAME:OPTION=VALUE,...",
                         hint="letters, digits and _ . - + in names and values")
    return target


def split_targets(text: str, known: Iterable[str] = ()) -> tuple[str, ...]:
    """``"sim,truenorth:relu=rate,encoding=binary,loihi"`` -> ``("sim",
    "truenorth:relu=rate,encoding=binary", "loihi")``: after a target with options, an item
    without ``:`` that has ``=`` or is not a ``known`` target name continues its options."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if out and ":" in out[-1] and ":" not in part and ("=" in part or part not in known):
            out[-1] += "," + part
        else:
            out.append(part)
    return tuple(out)


def target_token(target: str) -> str:
    """The target's part of a cell key: the spec with ``:`` as ``@`` (file-name safe on every
    system; plain names are unchanged)."""
    return target.replace(":", "@")


# ------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Task:
    """One trained (or given) network, attacked on each of ``targets``: one cell per target.
    With a given ``model`` the seed is the attack's and ``attack`` (the spec's attack token)
    is part of the keys."""

    data: str
    activation: str
    bits: int
    seed: int
    targets: tuple[str, ...]
    model: ModelRef | None = None  # a given ONNX model (the model axis)
    attack: str = ""

    @property
    def label(self) -> str:
        return data_label(self.data)

    @property
    def train_seed(self) -> int:
        return derive_seed(self.label, self.activation, self.bits, self.seed)

    def keys(self) -> list[str]:
        if self.model is not None:
            return [model_cell_key(self.label, self.model.name, self.bits, self.seed, t, self.attack)
                    for t in self.targets]
        return [cell_key(self.label, self.activation, self.bits, self.seed, t)
                for t in self.targets]

    def coordinates(self, target: str) -> dict:
        """The cell's coordinates as its attributes name them (what its key encodes)."""
        if self.model is not None:
            return {"data": self.label, "model": self.model.name, "bits": self.bits, "seed": self.seed,
                    "target": target, "attack_name": self.attack}
        return {"data": self.label, "activation": self.activation, "bits": self.bits, "seed": self.seed,
                "target": target}


def cell_key(label: str, activation: str, bits: int, seed: int, target: str) -> str:
    """The cell's name: its HDF5 group and its journal file (``spiral__relu__q04__s0__sim``,
    ``digits__relu__q02__s0__truenorth@relu=rate``)."""
    return f"{label}__{activation}__q{bits:02d}__s{seed}__{target_token(target)}"


def model_cell_key(label: str, model: str, bits: int, seed: int, target: str, attack: str) -> str:
    """A given model's cell: ``digits__lenet_w4__q04__s0__sim__fgsm`` (data, model, bits,
    attack seed, target, attack)."""
    return f"{label}__{model}__q{bits:02d}__s{seed}__{target_token(target)}__{attack}"


def derive_seed(*parts) -> int:
    """A 63-bit seed from the cell's coordinates (sha256), independent of execution order."""
    text = "hwq-sweep|" + "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def plan(spec: SweepSpec) -> list[Task]:
    """Every task of the grid, in a fixed order (data, activation, bits, seed).

    Model sweeps: one task per (data, model, bits, seed), in that order; a QAT model's bits are
    its grids', a float model's each of the spec's bits; the seed is the attack's.
    """
    if spec.models:
        token = spec.attack_token
        return [Task(d, "", b, s, spec.targets, m, token)
                for d in spec.data for m in spec.models for b in spec.model_bits(m) for s in spec.seeds]
    return [Task(d, a, b, s, spec.targets)
            for d in spec.data for a in spec.activations for b in spec.bits for s in spec.seeds]


def all_keys(tasks: Iterable[Task]) -> list[str]:
    return [k for t in tasks for k in t.keys()]
