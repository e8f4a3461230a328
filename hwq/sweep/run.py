"""Running a sweep: plan the cells, hand the tasks to an executor (``hwq.sweep.executors``) and
every finished cell to the single writer (``hwq.sweep.store``)."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from hwq.errors import DataError, HwqError, InvalidModelError
from hwq.ir.graph import Activation
from hwq.onnx.importer import graph_from_model, read_model
from hwq.sweep.cell import data_info, dataset, run_task
from hwq.sweep.spec import VERSION, ModelRef, SweepSpec, all_keys, data_label, model_name, plan
from hwq.sweep.store import SweepStore, content_digest, read_sweep
from hwq.target.registry import resolve_target


class Interrupted(HwqError):
    """Ctrl-C during a sweep; the finished cells are kept and the next run resumes."""

    exit_code = 130



def model_ref(path: str | Path, taken: Iterable[str] = ()) -> ModelRef:
    """Read a given ONNX model once: its hash, name (``taken``: the names of models before it),
    input shape, classes, hidden activations (any number of layers) and QAT grid bits."""
    path = Path(path)
    model = read_model(path)
    graph = graph_from_model(model)
    graph.stages()  # a network hwq cannot run is refused here, in one line, before any file exists
    weights = [node for node in graph.nodes if hasattr(node, "weight")]
    if not weights:
        raise InvalidModelError(f"{path}: the model has no layer with weights")
    grids = [getattr(node, "grid", None) for node in weights]
    grid_bits = max(g.bits for g in grids) if all(g is not None for g in grids) else None
    acts = tuple(node.kind for node in graph.nodes if isinstance(node, Activation))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelRef(str(path.resolve()), digest, model_name(path, taken), tuple(graph.sample_shape),
                    int(graph.n_classes), acts, grid_bits)


def model_refs(paths: Iterable[str | Path]) -> tuple[ModelRef, ...]:
    """:func:`model_ref` of each file, named apart."""
    refs: list[ModelRef] = []
    for p in paths:
        refs.append(model_ref(p, [r.name for r in refs]))
    return tuple(refs)


def check_model_fits(model: ModelRef, label: str, ds) -> None:
    """A model whose input does not take the data's samples, or whose classes are not the data's,
    is refused in one line before any file is written."""
    shape, data_shape = tuple(model.input_shape), tuple(ds.sample_shape)
    images = [tuple(d for d in s if d != 1) for s in (shape, data_shape)]  # (1, 8, 8) and (8, 8) agree
    fits = int(np.prod(shape)) == ds.n_features and (min(map(len, images)) < 2 or images[0] == images[1])
    if not fits:
        raise DataError(f"{model.path} takes inputs of shape {'x'.join(map(str, shape))}, data set {label} has "
                        f"samples of shape {'x'.join(map(str, data_shape))}",
                        hint="give data the model was made for")
    if model.n_classes != ds.n_classes:
        raise DataError(f"{model.path} has {model.n_classes} classes, data set {label} has {ds.n_classes}")


# ------------------------------------------------------------------------- running


Progress = Callable[[int, int, object], None]  # (cells done, cells total, CellResult or None)


def run_sweep(spec: SweepSpec, path: str | Path, executor, *, command: str = "",
              overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Run (or resume) the sweep into ``path``; returns a summary dict.

    ``executor`` is an ``hwq.sweep.executors`` executor (local pool, Dask or serial). Finished
    cells are journaled beside the file (``PATH.cells/``) before they are appended to it, so
    an interrupted sweep (Ctrl-C, kill -9) resumes with the cells it has. ``stalled`` and
    ``refused`` in the summary list every such cell of the sweep, resumed ones too;
    ``journal_kept`` names files hwq did not write that kept the journal folder in place.
    """
    for target in spec.targets:  # unknown targets and bad options fail before any file exists
        resolve_target(target)
    tasks = plan(spec)
    keys = all_keys(tasks)
    data = {data_label(d): data_info(d, spec) for d in spec.data}
    for d in spec.data if spec.models else ():
        ds, _ = dataset(d, spec.data_seed, spec.attack.limit)
        for m in spec.models:
            check_model_fits(m, data_label(d), ds)
    store = SweepStore(Path(path))
    executor_name = f"{executor.name} x{executor.workers}"
    machines = getattr(executor, "machines", None)
    with store.session(spec, data, keys, command=command, overwrite=overwrite,
                       executor=executor_name, machines=machines) as session:
        todo = [t for t in tasks if not set(t.keys()) <= session.done]
        if progress:
            progress(len(session.done), len(keys), None)
        try:
            with remembered_interrupts() as interrupted:
                for cells in executor.imap(run_task, [(spec, t) for t in todo]):
                    for cell in cells:  # a task may finish several cells (targets): a report each
                        session.check_fingerprint(cell)
                        session.add(cell)
                        if progress:
                            progress(len(session.done), len(keys), cell)
                    if interrupted():
                        raise KeyboardInterrupt
                if interrupted():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted after {len(session.done)} of {len(keys)} cells",
                              hint="run the same command again to resume") from None
        session.finish()
    return {"output": str(path), "cells": len(keys), "ran": len(keys) - session.resumed,
            "resumed": session.resumed, "stalled": sorted(session.stalled),
            "refused": sorted(session.refused), "wall_s": session.elapsed(), "executor": executor_name,
            "journal_kept": session.left}


@contextlib.contextmanager
def remembered_interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered (``interrupted()``).

    CPython drops an exception raised inside a weakref callback or ``__del__`` ("Exception
    ignored in ..."): a Ctrl-C that landed in the garbage collector was lost and the sweep
    ran to the end with exit code 0 (seen about once in 20 tries). The sweep checks the flag
    after every cell. Outside the main thread signals cannot be handled: nothing changes."""
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)


def describe(path: str | Path) -> dict:
    """What ``hwq info`` prints for a sweep file."""
    sw = read_sweep(path)
    spec = sw.spec
    return {
        "kind": "sweep", "version": VERSION, "hwq_version": sw.attrs.get("hwq_version"),
        "command": sw.attrs.get("command"), "data": list(spec.data),
        "activations": (sorted({a for m in spec.models for a in m.activations}) if spec.models else
                        sorted({c.attrs["activation"] for c in sw.cells}) or list(spec.activations)),
        **({"models": [m.describe() for m in spec.models]} if spec.models else {}),
        "bits": list(spec.all_bits if spec.models else spec.bits), "seeds": list(spec.seeds),
        "targets": list(spec.targets),
        "epsilons": [float(sw.epsilons.min()), float(sw.epsilons.max()), int(sw.epsilons.size)],
        "cells": len(sw.cells), "planned": int(sw.attrs.get("n_planned", 0)),
        "complete": bool(sw.attrs.get("complete", False)),
        "stalled": [c.key for c in sw.cells if c.attrs["stalled"]],
        "refused": {c.key: c.attrs["refused"] for c in sw.cells if c.attrs.get("refused")},
        "content_sha256": content_digest(path),
        "machine": sw.attrs.get("machine", []),
    }
