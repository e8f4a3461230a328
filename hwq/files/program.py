"""The compiled ``.hwq`` file: a quantized network, its target, and the target's artifacts.

HDF5 layout (version 2; see docs/file-formats.md)::

    /                 attrs: format="hwq-compiled", version=2, hwq_version, target, created_by,
                             options (JSON: the target options it was compiled with; v2)
    /network          QuantizedNetwork (generic dataclass encoding, hwq/h5io.py)
    /artifacts        target-specific arrays (datasets) and scalars (attributes)
    /report           attrs: target report as JSON
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.files import h5io
from hwq.quant.qnet import QuantizedNetwork
from hwq.target.protocol import Program
from hwq.target.registry import get_target
from hwq.version import __version__

FORMAT, VERSION = "hwq-compiled", 2
READABLE = (1, 2)  # version 1 files have no options (the target defaults)


def save_program(path: str | Path, program: Program, command: str = "") -> None:
    with h5io.atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, version=VERSION, hwq_version=__version__,
                       target=program.target, created_by=command,
                       options=json.dumps(getattr(program, "options", {}), sort_keys=True))
        h5io.write(f.create_group("network"), program.net)
        art = f.create_group("artifacts")
        for key, value in program.artifacts.items():
            if isinstance(value, np.ndarray):
                art.create_dataset(key, data=value)
            else:
                art.attrs[key] = value
        f.create_group("report").attrs["json"] = json.dumps(program.report, default=str)


@dataclass(frozen=True)
class StoredProgram:
    """What a ``.hwq`` file holds, before a target turns it back into a program."""

    target: str
    net: QuantizedNetwork
    artifacts: dict
    options: dict
    report: dict
    created_by: str
    hwq_version: str


def read_stored(path: str | Path) -> StoredProgram:
    with h5io.open_checked(path, FORMAT, READABLE) as f:
        def load():
            net = h5io.read(f["network"])
            art = {k: v[()] for k, v in f["artifacts"].items()}
            art.update({k: h5io.plain(v) for k, v in f["artifacts"].attrs.items()})
            return StoredProgram(str(f.attrs["target"]), net, art, json.loads(f.attrs.get("options", "{}")),
                                 json.loads(f["report"].attrs.get("json", "{}")),
                                 str(f.attrs.get("created_by", "")), str(f.attrs.get("hwq_version", "")))
        return h5io.guarded(path, load)


def read_network(path: str | Path) -> tuple[str, QuantizedNetwork, dict]:
    stored = read_stored(path)
    return stored.target, stored.net, stored.artifacts


def load_program(path: str | Path, target: str | None = None, options: dict | None = None) -> Program:
    """Load a compiled program with its stored options (``options`` override them). Another
    ``target`` recompiles the stored network there with ``options``."""
    stored = read_stored(path)
    if target is None or target == stored.target:
        return get_target(stored.target).load(stored.net, stored.artifacts, **{**stored.options, **(options or {})})
    return get_target(target).compile(stored.net, **(options or {}))


def quantization_table(net: QuantizedNetwork) -> list[dict]:
    """The per-tensor quantization report as rows (``hwq info``, ``hwq compile --json``)."""
    return [{"tensor": r.tensor, "format": r.format, "max_abs_error": r.max_abs_error,
             "clipped": r.clipped, "on_grid": r.on_grid} for r in net.report]


def file_info(path: str | Path) -> dict:
    stored = read_stored(path)
    net = stored.net
    return {
        "kind": "compiled model", "target": stored.target, "hwq_version": stored.hwq_version or __version__,
        "options": stored.options, "created_by": stored.created_by, "input": net.input.name,
        "output": net.output,
        "layers": [
            {"shape": list(layer.weight.shape), "activation": layer.activation,
             "act_bits": layer.act_bits, "weight_codes": [int(layer.weight.min()), int(layer.weight.max())]}
            for layer in net.layers
        ],
        "settings": vars(net.settings) if hasattr(net.settings, "__dict__") else str(net.settings),
        "quantization": quantization_table(net),
        "target_report": stored.report,
    }
