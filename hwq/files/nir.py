"""The integer network as a NIR graph (``hwq export --format nir``), and back.

The graph is what NIR tools can run: ``Input -> Affine -> act -> ... -> Affine -> Output``
with the dequantized weights (``gain * W * weight_scale``) and biases (``acc_scale * bias``)
of each layer, in real units; a CNN's convolutions are ``Conv2d`` nodes, its pools
``SumPool2d``/``AvgPool2d``, and a ``Flatten`` precedes a dense layer that reads maps
(``hwq/files/nir_conv.py``, with what NIR cannot say: asymmetric pads, max pooling of graded
codes). Activations (NIR has no ReLU, sigmoid or +-1 primitive):

=========  ====================================================================================
step       ``Threshold(0)``: ``[z > 0]``, exactly hwq's ``[acc > 0]`` (then ``Scale(s)`` where the
           next node's ``in_scale`` s is not 1)
sign       ``Threshold(0)`` then ``Affine(2s I, -s)`` (a 1x1 ``Conv2d`` on maps): +-s (hwq gives +s
           at z = 0, Threshold 0 -> -s)
relu       ``IF(r=1, v_threshold=out_scale, v_reset=0)``: the rate-coded stand-in (approximate)
identity   nothing (a hidden layer without activation feeds the next Affine)
sigmoid    refused: no NIR primitive computes it
=========  ====================================================================================

Every ``Affine``/``Conv2d`` of layer ``i`` (node ``layer{i}``) carries ``metadata["hwq"]``: the
integer codes and every field of its ``QLayer`` (``weight`` (the 2-D code matrix), ``bias``
int64; ``weight_scale``, ``in_scale``, ``gain``, ``activation``, ``act_bits``, ``out_scale``,
``in_max``, ``requant_multiplier``/``requant_shift``/``lut`` where the layer has them, and a
convolution's window: ``in_shape``, ``kernel``, ``stride``, ``pads``, ``dilation``, ``groups``);
a pool node carries its ``QPool`` (``op``, the window, ``truncate``, scales, requantization).
The graph's ``metadata["hwq"]`` holds ``format = "hwq-nir"``, ``version``, the layer count, the
output rule, the input format and ``input_shape``. ``read_network`` rebuilds the
``QuantizedNetwork`` from that metadata and checks that every float node and edge is the one
``to_nir`` makes of the codes (docs/file-formats.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwq import ir
from hwq.errors import FileFormatError, HwqError, UsageError
from hwq.files import nir_conv
from hwq.files.atomic import atomic_path
from hwq.ir import activations
from hwq.quant.qnet import InputFormat, QLayer, QPool, QuantizedNetwork, QuantSettings, Requant
from hwq.version import __version__

FORMAT, VERSION = "hwq-nir", 1
RTOL = 1e-12  # the float nodes are computed from the codes with the same float64 expression


def write_network(net: QuantizedNetwork, path: str | Path) -> None:
    """Write ``net`` as a NIR file (atomically)."""
    import nir

    graph = to_nir(net)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)


def to_nir(net: QuantizedNetwork, type_check: bool = True):
    """The NIR graph of ``net`` (nodes, edges, metadata); what NIR cannot say is one ``UsageError``
    line (sigmoid, max pooling of graded codes, asymmetric pads: ``hwq/files/nir_conv.py``)."""
    import nir

    nodes = {"input": nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    last = "input"

    def add(name, node):
        nonlocal last
        nodes[name] = node
        edges.append((last, name))
        last = name

    shape = tuple(int(d) for d in net.input_shape)
    binary = None  # the binary kind whose 0/1 Threshold outputs still await their real values
    for i, layer in enumerate(net.layers):
        if isinstance(layer, QPool):
            for suffix, node in nir_conv.pool_nodes(layer, i, binary is not None,
                                                    {"hwq": nir_conv.pool_metadata(layer)}):
                add(f"layer{i}{suffix}", node)
        else:
            add_layer(add, layer, i, shape)
            if layer.activation_kind.binary:
                binary = layer.activation_kind
        shape = layer.out_shape
        following = net.layers[i + 1] if i + 1 < len(net.layers) else None
        if binary is not None and not (isinstance(following, QPool) and following.op == "max"):
            s = next_in_scale(net, i)
            if binary is activations.SIGN:
                add(f"layer{i}.sign", nir_conv.sign_node(shape, s))
            elif s != 1.0:
                add(f"layer{i}.scale", nir.Scale(scale=np.full(shape, s)))
            binary = None
    add("output", nir.Output(output_type={"output": np.array(shape)}))
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"hwq": graph_metadata(net)}, type_check=type_check)
    except ValueError as exc:  # NIR's type inference; the checks above should leave none
        raise UsageError(f"NIR's type check rejects the graph ({' '.join(str(exc).split())})") from None


def add_layer(add, layer: QLayer, i: int, shape: tuple[int, ...]) -> None:
    """Layer ``i``'s linear node (``Affine``, after a ``Flatten`` where it reads maps, or
    ``Conv2d``) and its activation nodes (module docstring)."""
    import nir

    meta = {"hwq": layer_metadata(layer)}
    if layer.window is not None:
        add(f"layer{i}", nir_conv.conv_node(layer, i, meta))
    else:
        if len(shape) > 1:
            add(f"layer{i}.flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0))
        weight = layer.gain * layer.weight * layer.weight_scale[:, None]
        add(f"layer{i}", nir.Affine(weight=weight, bias=layer.acc_scale * layer.bias, metadata=meta))
    kind, out = layer.activation_kind, layer.out_shape
    if kind.binary:
        add(f"layer{i}.threshold", nir.Threshold(threshold=np.zeros(out)))
    elif kind is activations.RELU:
        add(f"layer{i}.relu", nir.IF(r=np.ones(out), v_threshold=np.full(out, layer.out_scale),
                                      v_reset=np.zeros(out)))
    elif kind.requantizes:  # sigmoid, clip(l,h) (ReLU6, Hardtanh): no NIR primitive
        raise UsageError(f"layer {i}: NIR has no {kind.family} primitive, so this network cannot be exported to NIR",
                         hint="export --format onnx, or train with step/relu/sign")


def next_in_scale(net: QuantizedNetwork, i: int) -> float:
    """The real value of a +1 output code of node ``i`` (the next node's input scale)."""
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
    if layer.window is not None:
        meta.update(nir_conv.window_metadata(layer.window))
    return meta


def graph_metadata(net: QuantizedNetwork) -> dict:
    fmt = net.input
    meta = {"format": FORMAT, "version": VERSION, "hwq_version": __version__, "layers": len(net.layers),
            "output": net.output, "input_bits": int(fmt.bits), "input_signed": bool(fmt.signed),
            "input_inv_scale": float(fmt.inv_scale), "settings": json.dumps(vars(net.settings)),
            "input_shape": np.array(net.input_shape, dtype=np.int64)}
    if fmt.bounds is not None:
        meta["input_bounds"] = np.array(fmt.bounds, dtype=np.float64)
    return meta


def read_network(path: str | Path) -> QuantizedNetwork:
    """The integer network of an hwq NIR file; anything missing, inconsistent or corrupt is one
    ``FileFormatError`` line. NIR's own type check runs last (``check_nodes`` compares every float
    node with the graph ``to_nir`` makes of the codes, which type-checks), so that an edited node
    is named."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    from hwq.files.h5io import open_h5

    try:
        open_h5(path).close()  # no links or storage outside the file (nir.read follows them)
        graph = nir.read(path, type_check=False)
    except Exception as exc:  # h5py, nir's own asserts
        raise FileFormatError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None
    try:
        return from_nir(graph)
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {exc.message}") from None
    except (HwqError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise FileFormatError(f"{path}: corrupt hwq NIR file ({type(exc).__name__}: {exc})") from None


def from_nir(graph) -> QuantizedNetwork:
    """The validated ``QuantizedNetwork`` of the graph's metadata, after checking that the float
    nodes are exactly those the codes give (``check_nodes``)."""
    meta = graph.metadata.get("hwq") if isinstance(graph.metadata, dict) else None
    if not meta or text(meta.get("format")) != FORMAT:
        raise FileFormatError("a NIR graph without hwq's integer metadata (not written by hwq export)")
    if int(meta["version"]) != VERSION:
        raise FileFormatError(f"hwq NIR version {int(meta['version'])} is not supported (reads {VERSION})")
    layers = tuple(read_node(graph.nodes, i) for i in range(int(meta["layers"])))
    bounds = meta.get("input_bounds")
    fmt = InputFormat(int(meta["input_bits"]), bool(meta["input_signed"]), float(meta["input_inv_scale"]),
                      None if bounds is None else tuple(float(v) for v in np.asarray(bounds)))
    settings = QuantSettings(**json.loads(text(meta["settings"])))
    output = text(meta["output"])
    if output not in ("argmax", "sign"):
        raise FileFormatError(f"unknown output rule {output!r}")
    shape = None if "input_shape" not in meta else tuple(int(v) for v in integers(meta, "input_shape"))
    dense = all(isinstance(n, QLayer) and n.window is None for n in layers)
    float_graph = dense_float_graph(layers, output) if dense and (shape is None or len(shape) == 1) else None
    net = QuantizedNetwork(fmt, layers, output, settings, float_graph, input_shape=shape)
    net.validate()  # what quantize guarantees (hwq.quant.qnet), as for .hwq files
    check_nodes(graph, net)
    return net


def dense_float_graph(layers, output: str):
    """The float model of a dense network, from its codes (a CNN's is not rebuilt: None)."""
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if a.weight.shape[0] != b.weight.shape[1]:
            raise FileFormatError(f"layer {i} has {a.weight.shape[0]} outputs, layer {i + 1} takes {b.weight.shape[1]}")
    nodes = []
    for layer in layers:
        nodes.append(ir.Affine(layer.real_weight, layer.bias * layer.in_scale * layer.weight_scale, layer.gain))
        if not layer.activation_kind.passes_accumulator:
            nodes.append(ir.Activation(layer.activation))
    return ir.Graph((int(layers[0].weight.shape[1]),), tuple(nodes),
                    ir.Output("sigmoid" if output == "sign" else "identity"))


def read_node(nodes: dict, i: int) -> QLayer | QPool:
    """Node ``i`` from the metadata of NIR node ``layer{i}`` (an ``Affine``, ``Conv2d``,
    ``SumPool2d`` or ``AvgPool2d``)."""
    import nir

    node = nodes.get(f"layer{i}")
    kinds = (nir.Affine, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)
    if not isinstance(node, kinds) or "hwq" not in node.metadata:
        raise FileFormatError(f"node layer{i} is missing or not an Affine, Conv2d or pool with hwq metadata")
    m = node.metadata["hwq"]
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        return nir_conv.read_pool(m, integers, text)
    requant = None
    if "requant_multiplier" in m:
        requant = Requant(integers(m, "requant_multiplier"), integers(m, "requant_shift"))
    window = nir_conv.read_window(m) if isinstance(node, nir.Conv2d) else None
    layer = QLayer(integers(m, "weight"), integers(m, "bias"), np.asarray(m["weight_scale"], np.float64),
                   float(m["in_scale"]), float(m["gain"]), text(m["activation"]), int(m["act_bits"]), requant,
                   integers(m, "lut") if "lut" in m else None, float(m["out_scale"]), int(text(m["in_max"])),
                   window)
    check_layer(layer, i)
    return layer


def check_layer(layer: QLayer, i: int) -> None:
    """The integer fields must fit together (before ``QuantizedNetwork.validate`` names the rest)."""
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


def check_nodes(graph, net: QuantizedNetwork) -> None:
    """Every float node, edge and parameter of ``graph`` must be those ``to_nir(net)`` writes
    (to ``RTOL``: the same float64 expressions of the codes); else one line naming the layer."""
    want = to_nir(net)
    missing, extra = sorted(set(want.nodes) - set(graph.nodes)), sorted(set(graph.nodes) - set(want.nodes))
    if missing or extra:
        name = (missing or extra)[0]
        what = "missing" if missing else "not one the integer codes give"
        raise FileFormatError(f"{where(name)}: node {name} is {what} (edited or corrupt file)")
    if sorted(map(tuple, graph.edges)) != sorted(want.edges):
        raise FileFormatError("the NIR graph's edges differ from those the integer codes give (edited or corrupt file)")
    for name, expected in want.nodes.items():
        node = graph.nodes[name]
        if type(node) is not type(expected):
            raise FileFormatError(f"{where(name)}: node {name} is a {type(node).__name__}, the integer codes give a "
                                  f"{type(expected).__name__} (edited or corrupt file)")
        for field in parameters(expected):
            if not same(getattr(node, field), getattr(expected, field)):
                raise FileFormatError(f"{where(name)}: the {type(node).__name__} node's {field} disagrees with the "
                                      "integer codes (edited or corrupt file)")


def where(name: str) -> str:
    """``layer 3`` for the NIR nodes of layer 3 (``layer3``, ``layer3.threshold``, ...)."""
    return f"layer {name[5:].split('.')[0]}" if name.startswith("layer") else f"node {name}"


def parameters(node) -> list[str]:
    """The fields of a NIR node that say what it computes (its types are inferred from them,
    except a ``Flatten``'s, which is its parameter)."""
    import dataclasses

    import nir

    skip = {"metadata", "output_type"} | (set() if isinstance(node, nir.Flatten) else {"input_type"})
    return [f.name for f in dataclasses.fields(node) if f.name not in skip]


def same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        return bool(np.allclose(a, b, rtol=RTOL, atol=0))
    return bool(np.all(a == b))


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
            "layers": [describe_node(node) for node in net.layers],
            "settings": vars(net.settings) if hasattr(net.settings, "__dict__") else str(net.settings)}


def describe_node(node: QLayer | QPool) -> dict:
    if isinstance(node, QPool):
        return {"pool": node.op, "window": node.window.describe(), "out_shape": list(node.out_shape)}
    row = {"shape": list(node.weight.shape), "activation": node.activation, "act_bits": node.act_bits}
    if node.window is not None:
        row.update(window=node.window.describe(), out_shape=list(node.out_shape))
    return row
