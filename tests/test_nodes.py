"""The integer network as typed nodes (issue 18): each layer's activation kind carries its
integer half (the codes it passes on and their range), one walker says which codes every layer
receives, and the network knows its input shape (stored in ``.hwq``, derived for older files)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from builders import random_mlp

import hwq
from hwq import ir
from hwq.errors import FileFormatError, InvalidModelError
from hwq.files import h5io
from hwq.files import program as hwqfile
from hwq.ir import activations
from hwq.onnx.importer import graph_from_model
from hwq.quant.qnet import QLayer, walk


def python_codes(name: str, v: int, act_bits: int, lut) -> int:
    """One code by docs/integer-semantics.md section 3, in plain Python (``v`` the accumulator,
    or the requantized value for relu and sigmoid)."""
    if name == "identity":
        return v
    if name == "step":
        return 1 if v > 0 else 0
    if name == "sign":
        return 1 if v >= 0 else -1
    if name == "relu":
        return min(max(v, 0), 2**act_bits - 1)
    return int(lut[min(max(v, -2048), 2047) + 2048])


@pytest.mark.parametrize("name", sorted(activations.KINDS))
def test_each_kinds_codes_and_range_follow_the_formulas(name):
    rng = np.random.default_rng(3)
    lut = rng.integers(3, 200, 4096)
    kind = activations.kind(name)
    v = np.concatenate([rng.integers(-10**6, 10**6, 500), [-2049, -2048, -1, 0, 1, 2047, 2048, 255, 256]])
    got = kind.codes(v.astype(np.int64), 8, lut)
    assert got.dtype == np.int64
    assert got.tolist() == [python_codes(name, int(a), 8, lut) for a in v]
    lo, hi = kind.code_range(8, lut, 10**6)
    assert lo <= got.min() and got.max() <= hi
    assert (lo, hi) == {"identity": (-10**6, 10**6), "step": (0, 1), "sign": (-1, 1), "relu": (0, 255),
                        "sigmoid": (int(lut.min()), int(lut.max()))}[name]
    assert kind.binary == (name in ("step", "sign")) and kind.graded != kind.binary
    assert kind.requantizes == (name in ("relu", "sigmoid"))
    assert kind.takes_quantizer == (name in ("relu", "sigmoid", "sign"))  # the importer's QAT quantizers


def quantized(act: str, hidden: int = 12, out: int = 10):
    rng = np.random.default_rng(5)
    graph = graph_from_model(random_mlp(rng, 20, hidden, out, act, scale=0.5))
    x = rng.uniform(0, 1, (200, 20))
    return hwq.quantize(graph, 4, calibration=x, bounds=(0.0, 1.0))


def identity_net():
    rng = np.random.default_rng(8)
    nodes = tuple(ir.Affine(rng.normal(0, 0.5, (m, n)), rng.normal(0, 0.2, m))
                  for n, m in ((20, 9), (9, 7), (7, 3)))
    return hwq.quantize(ir.Graph((20,), nodes, ir.Output("softmax")), 6,
                        calibration=rng.uniform(0, 1, (100, 20)), bounds=(0.0, 1.0))


def python_ranges(net, lo, hi):
    """The codes each layer receives, by the rule written out in Python integers."""
    out = []
    for layer in net.layers:
        out.append((lo, hi))
        peak = max(abs(lo), abs(hi))
        if layer.activation == "identity":
            b = max(sum(abs(int(w)) for w in row) * peak + abs(int(bj))
                    for row, bj in zip(layer.weight.tolist(), layer.bias.tolist()))
            lo, hi = -b, b
        elif layer.activation == "step":
            lo, hi = 0, 1
        elif layer.activation == "sign":
            lo, hi = -1, 1
        elif layer.activation == "relu":
            lo, hi = 0, 2**layer.act_bits - 1
        else:
            lo, hi = int(layer.lut.min()), int(layer.lut.max())
    return out


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "step", "identity"])
def test_walk_gives_every_layer_its_shape_and_code_range(act):
    net = identity_net() if act == "identity" else quantized(act)
    steps = list(walk(net))
    assert [i for i, *_ in steps] == list(range(len(net.layers)))
    assert [layer for _, layer, *_ in steps] == list(net.layers)
    assert [r for *_, r in steps] == python_ranges(net, net.input.qmin, net.input.qmax)
    assert [s for _, _, s, _ in steps] == [net.input_shape] + [layer.out_shape for layer in net.layers[:-1]]
    wide = list(walk(net, -1000, 70000))  # a widened input range flows through identity layers
    assert [r for *_, r in wide] == python_ranges(net, -1000, 70000)


def test_the_input_shape_is_stored_read_back_and_derived_for_older_files(tmp_path):
    net = quantized("Relu")
    assert net.input_shape == (20,) and net.n_features == 20
    path = tmp_path / "m.hwq"
    hwq.save_program(path, hwq.compile(net, "sim"))
    with h5py.File(path, "r") as f:
        assert tuple(f["network"].attrs["input_shape"].tolist()) == (20,)
    assert hwqfile.load_program(path).net.input_shape == (20,)
    old = tmp_path / "old.hwq"
    shutil.copy(path, old)
    with h5py.File(old, "r+") as f:
        del f["network"].attrs["input_shape"]
    h5io.seal(old)
    assert hwqfile.load_program(old).net.input_shape == (20,)


@pytest.mark.parametrize("shape, match", [((4, 6), "holds 24 codes, layer 0 takes 20"),
                                          ((0, 20), "positive integers"), ((), "positive integers")])
def test_a_wrong_input_shape_is_refused_in_one_line(tmp_path, shape, match):
    path = tmp_path / "m.hwq"
    hwq.save_program(path, hwq.compile(quantized("Relu"), "sim"))
    with h5py.File(path, "r+") as f:
        f["network"].attrs["input_shape"] = np.asarray(shape, np.int64)
    h5io.seal(path)
    with pytest.raises(FileFormatError, match=match):
        hwqfile.load_program(path)


def test_a_dense_layer_has_no_window():
    layer = quantized("Relu").layers[0]
    assert layer.window is None and layer.in_shape == (20,) and layer.out_shape == (12,)
    fields = {f: getattr(layer, f) for f in layer.__dataclass_fields__}
    with pytest.raises(InvalidModelError, match="must be a Window"):
        QLayer(**{**fields, "window": (3, 3)}).validate()
