"""The compiled ``.hwq`` file: a quantized network, its target, and the target's artifacts.

HDF5 layout (version 1; see docs/file-formats.md)::

    /                 attrs: format="hwq-compiled", version=1, hwq_version, target, created_by
    /network          QuantizedNetwork (generic dataclass encoding, hwq/h5io.py)
    /artifacts        target-specific arrays (datasets) and scalars (attributes)
    /report           attrs: target report as JSON
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwq import __version__, h5io
from hwq.qnet import QuantizedNetwork
from hwq.targets import Program, get_target

FORMAT, VERSION = "hwq-compiled", 1


def save_program(path: str | Path, program: Program, command: str = "") -> None:
    with h5io.atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, version=VERSION, hwq_version=__version__,
                       target=program.target, created_by=command)
        h5io.write(f.create_group("network"), program.net)
        art = f.create_group("artifacts")
        for key, value in program.artifacts.items():
            if isinstance(value, np.ndarray):
                art.create_dataset(key, data=value)
            else:
                art.attrs[key] = value
        f.create_group("report").attrs["json"] = json.dumps(program.report, default=str)


def read_network(path: str | Path) -> tuple[str, QuantizedNetwork, dict]:
    with h5io.open_checked(path, FORMAT, (VERSION,)) as f:
        def load():
            net = h5io.read(f["network"])
            art = {k: v[()] for k, v in f["artifacts"].items()}
            art.update({k: h5io.plain(v) for k, v in f["artifacts"].attrs.items()})
            return str(f.attrs["target"]), net, art
        return h5io.guarded(path, load)


def load_program(path: str | Path, target: str | None = None) -> Program:
    """Load a compiled program; ``target`` recompiles the stored network for another target."""
    saved, net, artifacts = read_network(path)
    if target is None or target == saved:
        return get_target(saved).load(net, artifacts)
    return get_target(target).compile(net)


def file_info(path: str | Path) -> dict:
    saved, net, _ = read_network(path)
    with h5io.open_checked(path, FORMAT, (VERSION,)) as f:
        report = json.loads(f["report"].attrs.get("json", "{}"))
        created = f.attrs.get("created_by", "")
    return {
        "kind": "compiled model", "target": saved, "hwq_version": __version__,
        "created_by": created, "input": net.input.name, "output": net.output,
        "layers": [
            {"shape": list(layer.weight.shape), "activation": layer.activation,
             "act_bits": layer.act_bits, "weight_codes": [int(layer.weight.min()), int(layer.weight.max())]}
            for layer in net.layers
        ],
        "settings": vars(net.settings) if hasattr(net.settings, "__dict__") else str(net.settings),
        "target_report": report,
    }
