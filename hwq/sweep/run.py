"""Running a sweep: plan the cells, hand the tasks to an executor (``hwq.sweep.executors``) and
every finished cell to the single writer (``hwq.sweep.store``)."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from hwq.errors import DataError, HwqError, UsageError
from hwq.ir.activations import HIDDEN_ACTIVATIONS
from hwq.onnx.importer import graph_from_model, read_model
from hwq.sweep.cell import data_info, run_task
from hwq.sweep.spec import VERSION, ModelRef, SweepSpec, all_keys, data_label, plan
from hwq.sweep.store import SweepStore, content_digest, read_sweep
from hwq.target.registry import resolve_target


class Interrupted(HwqError):
    """Ctrl-C during a sweep; the finished cells are kept and the next run resumes."""

    exit_code = 130



def model_ref(path: str | Path) -> ModelRef:
    """Read a given ONNX model once: its hash and its hidden activation."""
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
    for m in spec.models:
        for label, info in data.items():
            if info["n_features"] != m.n_features:
                raise DataError(f"{m.path} expects {m.n_features} input features, data set "
                                f"{label} has {info['n_features']}")
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
                    for cell in cells:
                        session.check_fingerprint(cell)
                        session.add(cell)
                    if progress:
                        progress(len(session.done), len(keys), cells[-1] if cells else None)
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
        "activations": sorted({c.attrs["activation"] for c in sw.cells}) or list(spec.activations),
        "bits": list(spec.bits), "seeds": list(spec.seeds), "targets": list(spec.targets),
        "epsilons": [float(sw.epsilons.min()), float(sw.epsilons.max()), int(sw.epsilons.size)],
        "cells": len(sw.cells), "planned": int(sw.attrs.get("n_planned", 0)),
        "complete": bool(sw.attrs.get("complete", False)),
        "stalled": [c.key for c in sw.cells if c.attrs["stalled"]],
        "refused": {c.key: c.attrs["refused"] for c in sw.cells if c.attrs.get("refused")},
        "content_sha256": content_digest(path),
        "machine": sw.attrs.get("machine", []),
    }
