"""One sweep task, as a worker runs it: train (or load) -> ONNX -> IR -> quantize -> compile
-> the attack, once per target. Pure apart from reading the data set (cached per process).

Every task runs with single-threaded BLAS (threadpoolctl), whatever the executor: float32
matrix products summed by one thread or by several differ in the last bit, which would make
the numbers depend on the number of workers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwq import api
from hwq.attack.gradients import gradient_source
from hwq.errors import DataError, HwqError, InvalidModelError, TargetError
from hwq.onnx.importer import graph_from_model, read_model
from hwq.quant import reference
from hwq.sweep.spec import CellFailed, ModelRef, SweepSpec, Task, data_label
from hwq.train import STALL_MARGIN

REFUSALS = (TargetError, InvalidModelError)  # LimitError is a TargetError: the cell is refused


@dataclass
class CellResult:
    """What a cell sends back to the writer: deterministic ``attrs`` and ``arrays``, and the
    volatile ``timing`` (seconds per phase, worker)."""

    key: str
    attrs: dict
    arrays: dict[str, np.ndarray]
    timing: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def dataset(spec: str, seed: int, limit: int | None):
    ds = api.load_dataset(spec, seed=seed).limit(limit)
    return ds, ds.fingerprint()


def chance(y: np.ndarray, n_classes: int) -> float:
    """Accuracy of always answering the most common label."""
    return float(np.bincount(y, minlength=n_classes).max() / max(len(y), 1))


def data_info(spec_str: str, spec: SweepSpec) -> dict:
    """The data group's attributes: what was loaded and how cells on it train."""
    ds, fingerprint = dataset(spec_str, spec.data_seed, spec.attack.limit)
    return {
        "spec": spec_str, "label": data_label(spec_str), "name": ds.name,
        "fingerprint": fingerprint, "n_features": ds.n_features, "n_classes": ds.n_classes,
        "n_train": len(ds.y_train), "n_test": len(ds.y_test),
        "chance": chance(ds.y_test, ds.n_classes),
        "bounds": list(ds.bounds) if ds.bounds is not None else None,
        "training": spec.train.resolved(ds.name, len(ds.y_train)),
    }


def _single_thread():
    from threadpoolctl import threadpool_limits

    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    return threadpool_limits(limits=1)


def run_task(job: tuple[SweepSpec, Task]) -> list[CellResult]:
    """Run one task; hwq errors come back as :class:`CellFailed` naming the cell."""
    spec, task = job
    try:
        with _single_thread():
            return _run(spec, task)
    except HwqError as exc:
        raise CellFailed(f"cell {task.keys()[0]}: {exc.line()}") from None


class _Clock:
    """Wall seconds per phase (``lap``); ``cpu_s``: CPU seconds of this process since start."""

    def __init__(self):
        self.times, self.last = {}, time.perf_counter()
        self.cpu0 = time.process_time()

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.last
        self.last = now


def _run(spec: SweepSpec, task: Task) -> list[CellResult]:
    clock = _Clock()
    ds, fingerprint = dataset(task.data, spec.data_seed, spec.attack.limit)
    clock.lap("load_s")
    if task.model is None:
        model, train_attrs, arrays = _train(spec, task, ds)
    else:
        model, train_attrs, arrays = _given_model(task.model)
    clock.lap("train_s")
    graph = graph_from_model(model)
    clock.lap("import_s")
    q = spec.quant
    net = api.quantize(graph, task.bits, calibration=api.calibration_rows(ds.x_train), bounds=ds.bounds,
                       scheme=q.scheme, per_channel=q.per_channel, act_bits=q.act_bits,
                       input_bits=q.input_bits)
    clock.lap("quantize_s")
    on_grid = all(r.on_grid for r in net.report if r.tensor.endswith(".weight"))
    if task.model is None:
        base = {"data": task.label, "activation": task.activation, "bits": task.bits,
                "seed": task.seed, "data_fingerprint": fingerprint, "weights_on_grid": on_grid,
                "chance": chance(ds.y_test, ds.n_classes), **train_attrs}
        attack = spec.attack
    else:  # the model axis: coordinates (data, model, bits, seed, target, attack) and the model's record
        attack = spec.cell_attack(task.seed)
        base = {**{k: v for k, v in task.coordinates("").items() if k != "target"}, **task.model.cell_attrs(),
                "data_fingerprint": fingerprint, "weights_on_grid": on_grid, "chance": chance(ds.y_test, ds.n_classes),
                **train_attrs}
        if attack.seed is not None:
            base["attack_seed"] = int(attack.seed)
    codes = reference.quantize_input(net.input, ds.x_test.reshape(len(ds.x_test), -1))
    ref_decisions = reference.decide(reference.forward(net, codes), net.output)
    out = []
    for target in task.targets:
        cell_clock = _Clock()
        try:
            program = api.compile(net, target)
        except REFUSALS as exc:  # the target cannot map this network: a refused cell
            attrs, acc = refused(exc.line(), spec, len(ds.y_test))
            cell_clock.lap("compile_s")
        else:
            cell_clock.lap("compile_s")
            attrs, acc = _attack(spec, program, ds, attack)
            attrs["fidelity"] = float(np.mean(program.decide(program.forward(codes)) == ref_decisions))
            cell_clock.lap("attack_s")
        attrs = {**base, "target": target, **attrs}
        if not attrs.get("refused"):
            attrs["at_chance"] = attrs["clean_accuracy"] <= attrs["chance"] + STALL_MARGIN
            attrs["stalled"] = bool(attrs["at_chance"] or attrs.get("train_stalled", False))
        first = not out  # the shared phases (load ... quantize) are charged to the first cell
        timing = {**(clock.times if first else {}), **cell_clock.times}
        timing["total_s"] = sum(timing.values())
        timing["cpu_s"] = (clock if first else cell_clock).cpu_s()
        timing["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        key = task.keys()[task.targets.index(target)]
        out.append(CellResult(key, attrs, {**arrays, **acc}, timing))
    return out


def refused(reason: str, spec: SweepSpec, n_test: int) -> tuple[dict, dict]:
    """A cell whose target refused the network (``LimitError``, ``TargetError``,
    ``InvalidModelError`` from compile): the one-line reason in ``refused``, NaN accuracies,
    never stalled, left out of every mean (docs/sweeps.md)."""
    attrs = {"refused": reason, "clean_accuracy": float("nan"), "n_test": n_test,
             "at_chance": False, "stalled": False}
    return attrs, {"accuracy": np.full(spec.epsilons.size, np.nan)}


def _train(spec: SweepSpec, task: Task, ds):
    from hwq.train import TrainConfig, mlp_to_onnx, predict_float, train_mlp

    t = spec.train.resolved(ds.name, len(ds.y_train))
    # the sweep's TrainSettings are TrainConfig's sweep fields; the cell's axes set the rest
    config = TrainConfig(**t, activation=task.activation, bits=task.bits, scheme=spec.quant.scheme,
                         seed=task.train_seed)
    mlp = train_mlp(ds.x_train, ds.y_train, ds.n_classes, config)
    model = mlp_to_onnx(mlp, n_in=ds.n_features, n_classes=ds.n_classes,
                        metadata={"dataset": task.data, "sweep_cell": task.keys()[0]})
    attrs = {"source": "qat", "train_seed": task.train_seed, "val_accuracy": mlp.val_accuracy,
             "train_accuracy": mlp.train_accuracy, "best_epoch": mlp.best_epoch,
             "epochs_run": int(len(mlp.history.get("loss", []))),
             "train_stalled": bool(mlp.stalled),
             "float_test_accuracy": float(np.mean(predict_float(mlp, ds.x_test) == ds.y_test))}
    arrays = {f"history/{k}": np.asarray(v, np.float64) for k, v in mlp.history.items()}
    return model, attrs, arrays


def _given_model(model: ModelRef):
    """The model file, checked against the hash the sweep recorded when it was planned."""
    data = Path(model.path).read_bytes() if Path(model.path).is_file() else b""
    if hashlib.sha256(data).hexdigest() != model.sha256:
        raise DataError(f"{model.path} is not the model the sweep was started with (sha256 {model.sha256[:12]})",
                        hint="every worker must see the same model files; pass --overwrite to start again")
    return read_model(model.path), {"source": model.path, "train_stalled": False}, {}


def _attack(spec: SweepSpec, program, ds, a=None):
    """The cell's attack (``a``: its settings, the spec's by default): ``accuracy``/``correct``
    (counts) of the attack, or of the per-input worst case of a suite with each attack's under
    ``attacks/<name>/``; the diagnostics as attributes (``diag_*``; docs/sweeps.md)."""
    a = spec.attack if a is None else a
    method = a.method()
    needs = any(m.needs_gradient for m in getattr(method, "attacks", (method,)))
    gradient = (gradient_source(a.gradient, program, calibration=api.calibration_rows(ds.x_train), bounds=ds.bounds,
                                **a.gradient_options()) if needs else None)
    device_attrs, device_arrays = {}, {}
    if spec.device is not None:  # judged on a device (hwq/sweep/device.py)
        from hwq.sweep.device import attack_on_device

        result, device_attrs, disagreement = attack_on_device(spec.device, program, ds, spec.epsilons, method,
                                                              gradient)
        device_arrays = {"device_disagreement": disagreement.astype(np.float64)}
    else:
        result = api.attack(program, ds.x_test, ds.y_test, spec.epsilons, method=method, gradient=gradient,
                            bounds=ds.bounds, diagnostics=a.diagnostics is not False,
                            remedy_kinds=("temperature",))  # the flags sweeps always recorded
    counts = result.correct.sum(axis=1).astype(np.int64)
    attrs = {"attack": result.attack, "clean_accuracy": result.clean_accuracy, "n_test": int(result.labels.size),
             "zero_gradient": int(result.zero_gradient.sum()), **diagnostic_attrs(result.diagnostics),
             **device_attrs}
    arrays = {"accuracy": result.accuracy.astype(np.float64), "correct": counts, **device_arrays}
    for m in result.members:
        arrays[f"attacks/{m.attack}/accuracy"] = m.accuracy.astype(np.float64)
        arrays[f"attacks/{m.attack}/correct"] = m.correct.sum(axis=1).astype(np.int64)
        if m.queries is not None:
            arrays[f"attacks/{m.attack}/queries_mean"] = m.queries.mean(axis=1)
    if result.queries is not None:
        arrays["queries_mean"] = result.queries.mean(axis=1)
    return attrs, arrays


def diagnostic_attrs(diag: dict) -> dict:
    """Flat cell attributes of ``hwq.attack.suite.diagnose``'s output."""
    out = {"diag_flags": list(diag.get("flags", [])),
           "nonfinite_gradient": int(diag.get("nonfinite_gradient", 0))}
    for name, check in diag.get("unbounded", {}).items():
        out[f"diag_unbounded_{name}"] = float(check["accuracy"])
    if "gradient_free_beats_gradient" in diag:
        out["diag_gradient_free_share"] = float(diag["gradient_free_beats_gradient"]["share"])
    if "pgd_weaker_than_fgsm" in diag:
        out["diag_pgd_weaker_eps"] = len(diag["pgd_weaker_than_fgsm"]["epsilons"])
        out["diag_pgd_weaker_gap"] = float(diag["pgd_weaker_than_fgsm"]["max_accuracy_gap"])
    return out
