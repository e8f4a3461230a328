"""The model hash: SHA-256 of what a device must compute, the same in every Python and numpy.

It covers the target's name, the integer network as the reference defines it (input format,
per layer the weight and bias codes, activation, activation bits, requantization and LUT,
the output rule) and the target's artifacts (its mapping). Floats that only serve gradients
or reports (weight scales, the float graph) are left out.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _feed(h, value) -> None:
    if isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value):
            _feed(h, str(key))
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[%d" % len(value))
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).ndim:
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            arr = arr.astype("<i8")
        elif arr.dtype.kind == "f":
            arr = arr.astype("<f8")
        else:
            arr = arr.astype(str).astype("<U")
        h.update(f"a{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    else:
        _feed_scalar(h, value.item() if isinstance(value, (np.ndarray, np.generic)) else value)


def _feed_scalar(h, value) -> None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool) or value is None:
        h.update(f"s{value!r}".encode())
    elif isinstance(value, (int, float)):
        h.update(f"n{float(value).hex() if isinstance(value, float) else value}".encode())
    else:
        h.update(f"t{len(str(value))}:{value}".encode())


def window_fields(win) -> list[int]:
    return [*win.in_shape, *win.kernel, *win.stride, *win.pads, *win.dilation, win.groups]


def network_fields(net) -> dict:
    fmt = net.input
    layers = []
    for layer in net.layers:
        rq = layer.requant
        rq = None if rq is None else [rq.multiplier, rq.shift]
        if not hasattr(layer, "weight"):  # a pooling
            layers.append({"pool": layer.op, "window": window_fields(layer.window), "requant": rq,
                           "truncate": bool(layer.truncate)})
            continue
        fields = {"weight": layer.weight, "bias": layer.bias, "activation": layer.activation,
                  "act_bits": int(layer.act_bits), "requant": rq, "lut": layer.lut}
        if layer.window is not None:  # a convolution (a dense layer's fields stay as they were)
            fields["window"] = window_fields(layer.window)
        layers.append(fields)
    return {"input": [int(fmt.bits), bool(fmt.signed), float(fmt.inv_scale)], "layers": layers,
            "output": net.output}


def digest(value) -> bytes:
    """SHA-256 of a nested structure of dicts, lists, arrays and scalars (canonical form)."""
    h = hashlib.sha256(b"hwq-model-v1")
    _feed(h, value)
    return h.digest()


def model_hash(program) -> bytes:
    """The 32-byte hash a device serving ``program`` reports (and every response echoes).
    A ``backend`` artifact is left out: it selects how the same mapping runs, not what."""
    artifacts = {k: v for k, v in dict(program.artifacts).items() if k != "backend"}
    return digest({"target": program.target, "network": network_fields(program.net),
                   "artifacts": artifacts})


def short(h: bytes) -> str:
    return h.hex()[:12]
