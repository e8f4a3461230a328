"""The compiled ``.hwq`` file: a quantized network, its target, and the target's artifacts.

HDF5 layout (version 3; see docs/file-formats.md)::

    (user block)      512 bytes: "hwq-sha256 <hex>\\n", the sha256 of every byte after it
    /                 attrs: format="hwq-compiled", version=3, hwq_version, target, created_by,
                             options (JSON: the target options it was compiled with)
    /network          QuantizedNetwork (generic dataclass encoding, hwq/files/h5io.py)
    /artifacts        target-specific arrays (datasets), scalars (attributes) and typed
                      records (groups: frozen dataclasses the target registered with
                      h5io.register, e.g. loihi's per-layer maps)
    /report           attrs: target report as JSON

Reading trusts nothing: the digest must match before HDF5 parses a byte (a damaged file is
refused), the file is opened by ``h5io.open_h5`` (no links or storage outside it), every
network field is checked against its type and ``QuantizedNetwork.validate``, and the target
checks its own artifacts on ``load``. Files without a digest (versions 1 and 2) are refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.errors import FileFormatError, HwqError
from hwq.files import h5io
from hwq.quant.qnet import QuantizedNetwork, short
from hwq.target.protocol import Program
from hwq.target.registry import get_target
from hwq.version import __version__

FORMAT, VERSION = "hwq-compiled", 3
READABLE = (3,)
PARTS = ("artifacts", "network", "report")


def save_program(path: str | Path, program: Program, command: str = "") -> None:
    with h5io.sealed_h5(path) as f:
        f.attrs.update(format=FORMAT, version=VERSION, hwq_version=__version__,
                       target=program.target, created_by=command,
                       options=json.dumps(program.options, sort_keys=True))
        h5io.write(f.create_group("network"), program.net)
        art = f.create_group("artifacts")
        for key, value in program.artifacts.items():
            if isinstance(value, np.ndarray):
                art.create_dataset(key, data=value)
            elif typed(value):  # a target's records: a group per dataclass (h5io)
                h5io.write_value(art, key, value)
            else:
                art.attrs[key] = value
        f.create_group("report").attrs["json"] = json.dumps(program.report, default=str)


def typed(value) -> bool:
    """A typed artifact: a frozen dataclass, or a tuple of them, that the target registered
    with ``h5io.register`` (the other artifacts are arrays and scalars)."""
    items = value if isinstance(value, tuple) and value else (value,)
    return all(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in items)


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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def not_compiled(path: str | Path) -> None:
    """A model that was never compiled (an ONNX or NIR file where a ``.hwq`` belongs) is
    refused with the command that compiles it."""
    path = Path(path)
    if path.suffix not in (".onnx", ".nir"):
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
    except OSError:
        return  # open_checked names what is wrong with the path
    if path.suffix == ".onnx" and head != HDF5_SIGNATURE:
        raise FileFormatError(f"{path}: an ONNX model, not a compiled .hwq file",
                              hint=f"compile it first: hwq compile {path} -o {path.with_suffix('.hwq')}")
    if path.suffix == ".nir":
        raise FileFormatError(f"{path}: a NIR export, not a compiled .hwq file",
                              hint="run the .hwq file it was exported from")


def read_stored(path: str | Path) -> StoredProgram:
    """The checked contents of a ``.hwq`` file; any damage or foreign content is one
    ``FileFormatError`` line naming the file (``load_program`` then lets the target check its
    artifacts)."""
    not_compiled(path)
    if not Path(path).exists():
        raise FileFormatError(f"{path}: no such file")
    if not h5io.check_seal(path):
        raise FileFormatError(f"{path}: no content digest, so damage to it cannot be detected ({FORMAT} files "
                              f"before version {VERSION} carried none)",
                              hint=f"recompile the model; this hwq reads version {VERSION}")
    with h5io.open_checked(path, FORMAT, READABLE) as f:
        return h5io.guarded(path, lambda: _read(path, f))


def _read(path, f) -> StoredProgram:
    if sorted(f) != sorted(PARTS) or not all(isinstance(f[k], h5io.h5py.Group) for k in PARTS):
        raise FileFormatError(f"{path}: a compiled model holds the groups {', '.join(PARTS)}, found {sorted(f)}")
    attrs = {k: h5io.plain(f.attrs.get(k, "")) for k in ("target", "created_by", "hwq_version")}
    for key, value in attrs.items():
        if not isinstance(value, str):
            raise FileFormatError(f"{path}: attribute {key!r} must be text")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", attrs["target"]):
        raise FileFormatError(f"{path}: {short(attrs['target'])} is not a target name")
    net = h5io.read(f["network"])
    if not isinstance(net, QuantizedNetwork):
        raise FileFormatError(f"{path}: /network holds a {type(net).__name__}, not a QuantizedNetwork")
    art = {}
    for key, item in f["artifacts"].items():
        if isinstance(item, h5io.h5py.Group):
            get_target(attrs["target"])  # imports the backend, which registers its record types
            art[key] = h5io.read(item)
        elif isinstance(item, h5io.h5py.Dataset):
            art[key] = item[()]
        else:
            raise FileFormatError(f"{path}: artifact {short(key)} is neither an array nor a record")
    for key, value in f["artifacts"].attrs.items():
        value = h5io.plain(value)
        if not isinstance(value, (int, float, str, bool)):
            raise FileFormatError(f"{path}: artifact {short(key)} must be a number or text, not {type(value).__name__}")
        art[key] = value
    options = _json(path, f.attrs.get("options", "{}"), "options")
    report = _json(path, f["report"].attrs.get("json", "{}"), "the target report")
    return StoredProgram(attrs["target"], net, art, options, report, attrs["created_by"], attrs["hwq_version"])


def _json(path, value, what: str) -> dict:
    value = h5io.plain(value)
    try:
        out = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise FileFormatError(f"{path}: {what} must be a JSON object")
    return out


def read_network(path: str | Path) -> tuple[str, QuantizedNetwork, dict]:
    stored = read_stored(path)
    return stored.target, stored.net, stored.artifacts


def load_program(path: str | Path, target: str | None = None, options: dict | None = None) -> Program:
    """Load a compiled program with its stored options (``options`` override them). Another
    ``target`` recompiles the stored network there with ``options``."""
    stored = read_stored(path)
    if target is None or target == stored.target:
        backend = get_target(stored.target)
        try:
            return backend.load(stored.net, stored.artifacts, **{**stored.options, **(options or {})})
        except HwqError as exc:
            if isinstance(exc, FileFormatError) and not exc.message.startswith(f"{path}:"):
                raise FileFormatError(f"{path}: {exc.message}", hint=exc.hint) from None
            raise
        except Exception as exc:  # a target's own check missed it: still the file's fault, one line
            raise FileFormatError(f"{path}: the stored {stored.target} program does not load "
                                  f"({type(exc).__name__}: {exc})") from None
    return get_target(target).compile(stored.net, **(options or {}))


def quantization_table(net: QuantizedNetwork) -> list[dict]:
    """The per-tensor quantization report as rows (``hwq info``, ``hwq compile --json``)."""
    return [{"tensor": r.tensor, "format": r.format, "max_abs_error": r.max_abs_error,
             "clipped": r.clipped, "on_grid": r.on_grid} for r in net.report]


def layer_rows(net: QuantizedNetwork) -> list[dict]:
    """One row per node of the integer network (``hwq info``): what it is, its input and output
    shapes, activation, weight codes, parameters (weights and biases) and multiply-accumulates
    per sample (a convolution: its weights times its window positions)."""
    rows = []
    for i, node in enumerate(net.layers):
        row = {"layer": i, "in_shape": list(node.in_shape), "out_shape": list(node.out_shape)}
        if hasattr(node, "weight"):
            win = node.window
            positions = 1 if win is None else win.positions
            row.update(kind="dense" if win is None else f"conv {win.describe()}",
                       activation=node.activation, act_bits=node.act_bits,
                       weight_codes=[int(node.weight.min()), int(node.weight.max())],
                       shape=list(node.weight.shape), params=int(node.weight.size + node.bias.size),
                       macs=int(node.weight.size) * positions)
        else:
            win = node.window.describe(groups=False)
            row.update(kind=f"{node.op}pool {win}" + (" (truncating)" if node.truncate else ""),
                       activation="", act_bits=None, weight_codes=None, shape=None, params=0, macs=0)
        rows.append(row)
    return rows


def file_info(path: str | Path) -> dict:
    stored = read_stored(path)
    net = stored.net
    return {
        "kind": "compiled model", "target": stored.target, "hwq_version": stored.hwq_version or __version__,
        "options": stored.options, "created_by": stored.created_by, "input": net.input.name,
        "output": net.output,
        "input_shape": list(net.input_shape) if net.input_shape else [net.n_features],
        "layers": layer_rows(net),
        "settings": vars(net.settings) if hasattr(net.settings, "__dict__") else str(net.settings),
        "quantization": quantization_table(net),
        "target_report": stored.report,
    }
