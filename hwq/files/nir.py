"""The integer network as a NIR graph (``hwq export --format nir``), and back.

The graph is what NIR tools can run: ``Input -> Affine -> act -> ... -> Affine -> Output``
with the dequantized weights (``gain * W * weight_scale``) and biases (``acc_scale * bias``)
of each layer, in real units. Activations (NIR has no ReLU, sigmoid or +-1 primitive):

=========  ====================================================================================
step       ``Threshold(0)``: ``[z > 0]``, exactly hwq's ``[acc > 0]``
sign       ``Threshold(0)`` then ``Affine(2s I, -s)``: +-s (hwq gives +s at z = 0, Threshold 0 -> -s)
relu       ``IF(r=1, v_threshold=out_scale, v_reset=0)``: the rate-coded stand-in (approximate)
identity   nothing (a hidden layer without activation feeds the next Affine)
sigmoid    refused: no NIR primitive computes it
=========  ====================================================================================

Every ``Affine`` of layer ``i`` (node ``layer{i}``) carries ``metadata["hwq"]``: the integer
codes and every field of its ``QLayer`` (``weight``, ``bias`` int64; ``weight_scale``,
``in_scale``, ``gain``, ``activation``, ``act_bits``, ``out_scale``, ``in_max``, and
``requant_multiplier``/``requant_shift``/``lut`` where the layer has them). The graph's
``metadata["hwq"]`` holds ``format = "hwq-nir"``, ``version``, the layer count, the output
rule and the input format. ``read_network`` rebuilds the ``QuantizedNetwork`` from that
metadata and checks that the float nodes agree with the codes (docs/file-formats.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwq import ir
from hwq.errors import FileFormatError, HwqError, UsageError
from hwq.files.atomic import atomic_path
from hwq.ir import activations
from hwq.quant.qnet import InputFormat, QLayer, QuantizedNetwork, QuantSettings, Requant
from hwq.version import __version__

FORMAT, VERSION = "hwq-nir", 1
RTOL = 1e-12  # the float nodes are computed from the codes with the same float64 expression


def write_network(net: QuantizedNetwork, path: str | Path) -> None:
    """Write ``net`` as a NIR file (atomically)."""
    import nir

    graph = to_nir(net)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)


def to_nir(net: QuantizedNetwork):
    """The NIR graph of ``net`` (nodes, edges, metadata)."""
    import nir

    nodes = {"input": nir.Input(input_type={"input": np.array(net.input_shape)})}
    last = "input"

    def add(name, node):
        nonlocal last
        nodes[name] = node
        edges.append((last, name))
        last = name

    edges: list[tuple[str, str]] = []
    for i, layer in enumerate(net.layers):
        weight = layer.gain * layer.weight * layer.weight_scale[:, None]
        bias = layer.acc_scale * layer.bias
        add(f"layer{i}", nir.Affine(weight=weight, bias=bias, metadata={"hwq": layer_metadata(layer)}))
        n = layer.weight.shape[0]
        kind = layer.activation_kind
        if kind.binary:
            add(f"layer{i}.threshold", nir.Threshold(threshold=np.zeros(n)))
        if kind is activations.SIGN:
            s = next_in_scale(net, i)
            add(f"layer{i}.sign", nir.Affine(weight=2 * s * np.eye(n), bias=np.full(n, -s)))
        elif kind is activations.RELU:
            add(f"layer{i}.relu", nir.IF(r=np.ones(n), v_threshold=np.full(n, layer.out_scale),
                                          v_reset=np.zeros(n)))
        elif kind is activations.SIGMOID:
            raise UsageError(f"layer {i}: NIR has no sigmoid primitive, so this network cannot be exported to NIR",
                             hint="export --format onnx, or train with step/relu/sign")
    add("output", nir.Output(output_type={"output": np.array([net.layers[-1].weight.shape[0]])}))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"hwq": graph_metadata(net)})


def next_in_scale(net: QuantizedNetwork, i: int) -> float:
    """The real value of a +1 output code of layer ``i`` (the next layer's input scale)."""
    return float(net.layers[i + 1].in_scale) if i + 1 < len(net.layers) else 1.0


def layer_metadata(layer: QLayer) -> dict:
    meta = {"weight": layer.weight.copy(), "bias": layer.bias.copy(), "weight_scale": layer.weight_scale.copy(),
            "in_scale": float(layer.in_scale), "gain": float(layer.gain), "activation": layer.activation,
            "act_bits": int(layer.act_bits), "out_scale": float(layer.out_scale),
            "in_max": str(int(layer.in_max))}  # text: may exceed int64 on an identity hidden layer
    if layer.requant is not None:
        meta.update(requant_multiplier=layer.requant.multiplier.copy(), requant_shift=layer.requant.shift.copy())
    if layer.lut is not None:
        meta["lut"] = layer.lut.copy()
    return meta


def graph_metadata(net: QuantizedNetwork) -> dict:
    fmt = net.input
    meta = {"format": FORMAT, "version": VERSION, "hwq_version": __version__, "layers": len(net.layers),
            "output": net.output, "input_bits": int(fmt.bits), "input_signed": bool(fmt.signed),
            "input_inv_scale": float(fmt.inv_scale), "settings": json.dumps(vars(net.settings))}
    if fmt.bounds is not None:
        meta["input_bounds"] = np.array(fmt.bounds, dtype=np.float64)
    return meta


def read_network(path: str | Path) -> QuantizedNetwork:
    """The integer network of an hwq NIR file; anything missing, inconsistent or corrupt is one
    ``FileFormatError`` line."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    from hwq.files.h5io import open_h5

    try:
        open_h5(path).close()  # no links or storage outside the file (nir.read follows them)
        graph = nir.read(path)
    except Exception as exc:  # h5py, nir's own asserts and type checks
        raise FileFormatError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None
    try:
        net = from_nir(graph)
        net.validate()  # what quantize guarantees (hwq.quant.qnet), as for .hwq files
        return net
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {exc.message}") from None
    except (HwqError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise FileFormatError(f"{path}: corrupt hwq NIR file ({type(exc).__name__}: {exc})") from None


def from_nir(graph) -> QuantizedNetwork:
    meta = graph.metadata.get("hwq") if isinstance(graph.metadata, dict) else None
    if not meta or text(meta.get("format")) != FORMAT:
        raise FileFormatError("a NIR graph without hwq's integer metadata (not written by hwq export)")
    if int(meta["version"]) != VERSION:
        raise FileFormatError(f"hwq NIR version {int(meta['version'])} is not supported (reads {VERSION})")
    layers = tuple(read_layer(graph.nodes, i) for i in range(int(meta["layers"])))
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if a.weight.shape[0] != b.weight.shape[1]:
            raise FileFormatError(f"layer {i} has {a.weight.shape[0]} outputs, layer {i + 1} takes {b.weight.shape[1]}")
    bounds = meta.get("input_bounds")
    fmt = InputFormat(int(meta["input_bits"]), bool(meta["input_signed"]), float(meta["input_inv_scale"]),
                      None if bounds is None else tuple(float(v) for v in np.asarray(bounds)))
    settings = QuantSettings(**json.loads(text(meta["settings"])))
    output = text(meta["output"])
    if output not in ("argmax", "sign"):
        raise FileFormatError(f"unknown output rule {output!r}")
    nodes = []
    for layer in layers:
        nodes.append(ir.Affine(layer.real_weight, layer.bias * layer.in_scale * layer.weight_scale, layer.gain))
        if not layer.activation_kind.passes_accumulator:
            nodes.append(ir.Activation(layer.activation))
    float_graph = ir.Graph((fmt_features(layers),), tuple(nodes),
                           ir.Output("sigmoid" if output == "sign" else "identity"))
    return QuantizedNetwork(fmt, layers, output, settings, float_graph)


def fmt_features(layers) -> int:
    return int(layers[0].weight.shape[1])


def read_layer(nodes: dict, i: int) -> QLayer:
    import nir

    node = nodes.get(f"layer{i}")
    if not isinstance(node, nir.Affine) or "hwq" not in node.metadata:
        raise FileFormatError(f"node layer{i} is missing or not an Affine with hwq metadata")
    m = node.metadata["hwq"]
    requant = None
    if "requant_multiplier" in m:
        requant = Requant(integers(m, "requant_multiplier"), integers(m, "requant_shift"))
    layer = QLayer(integers(m, "weight"), integers(m, "bias"), np.asarray(m["weight_scale"], np.float64),
                   float(m["in_scale"]), float(m["gain"]), text(m["activation"]), int(m["act_bits"]), requant,
                   integers(m, "lut") if "lut" in m else None, float(m["out_scale"]), int(text(m["in_max"])))
    check_layer(node, layer, i)
    return layer


def check_layer(node, layer: QLayer, i: int) -> None:
    """The integer fields must fit together and agree with the Affine node's float weights."""
    n_out = layer.weight.shape[0] if layer.weight.ndim == 2 else -1
    if layer.weight.ndim != 2 or layer.bias.shape != (n_out,) or layer.weight_scale.shape != (n_out,):
        raise FileFormatError(f"layer {i}: weight {layer.weight.shape}, bias {layer.bias.shape} and "
                              f"weight_scale {layer.weight_scale.shape} do not fit")
    if layer.activation not in activations.KINDS:
        raise FileFormatError(f"layer {i}: unknown activation {layer.activation!r}")
    if layer.activation_kind.requantizes and layer.requant is None:
        raise FileFormatError(f"layer {i}: a {layer.activation} layer without its requantization")
    if layer.requant is not None and layer.requant.multiplier.shape != (n_out,):
        raise FileFormatError(f"layer {i}: requantization has {layer.requant.multiplier.shape} entries for {n_out}")
    weight = np.asarray(node.weight, np.float64)
    bias = np.asarray(node.bias, np.float64)
    if weight.shape != layer.weight.shape or bias.shape != layer.bias.shape:
        raise FileFormatError(f"layer {i}: the Affine node's shape {weight.shape} differs from the codes' "
                              f"{layer.weight.shape}")
    if not (np.allclose(weight, layer.gain * layer.real_weight, rtol=RTOL, atol=0)
            and np.allclose(bias, layer.acc_scale * layer.bias, rtol=RTOL, atol=0)):
        raise FileFormatError(f"layer {i}: the Affine node's weights or bias disagree with the integer codes "
                              "(edited or corrupt file)")


def integers(meta: dict, key: str) -> np.ndarray:
    a = np.asarray(meta[key])
    if a.dtype.kind not in "iu":
        raise FileFormatError(f"{key} should hold integers, found {a.dtype}")
    return a.astype(np.int64)


def text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return text(value[()])
    return str(value)


EXPORT_HELP = ("the network as a NIR graph (dequantized Affine weights, Threshold/IF activations) with the "
               "integer codes, scales and formats as metadata (docs/file-formats.md)")


def describe(path: str | Path) -> dict:
    """What ``hwq info`` shows for an hwq NIR file (read and checked as ``read_network``)."""
    net = read_network(path)
    return {"kind": "nir export", "input": net.input.name, "output": net.output,
            "layers": [{"shape": list(layer.weight.shape), "activation": layer.activation,
                        "act_bits": layer.act_bits} for layer in net.layers],
            "settings": vars(net.settings) if hasattr(net.settings, "__dict__") else str(net.settings)}
