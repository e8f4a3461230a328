"""NIR export (hwq/files/nir.py): nir.read loads the file; the integer network rebuilt from it
scores exactly as hwq.quant.reference does on the original; corrupt files are refused."""

from __future__ import annotations

import json

import h5py
import nir
import numpy as np
import pytest
from factories import codes, random_net

from hwq import ir
from hwq.errors import FileFormatError, UsageError
from hwq.files import nir as hnir
from hwq.quant import reference
from hwq.quant.qnet import QuantSettings
from hwq.quant.quantize import quantize

RNG = np.random.default_rng(12)


def float_mlp(rng, sizes, acts, n_out=3):
    nodes, n_in = [], sizes[0]
    for n, act in zip([*sizes[1:], n_out], [*acts, None]):
        nodes.append(ir.Affine(rng.normal(0, 1, (n, n_in)), rng.normal(0, 0.3, n), gain=1.0))
        if act:
            nodes.append(ir.Activation(act))
        n_in = n
    return ir.Graph((sizes[0],), tuple(nodes), ir.Output("sigmoid" if n_out == 1 else "identity"))


def quantized(acts, bits=4, signed=False, n_out=3, per_channel=False, act_bits=8):
    graph = float_mlp(RNG, [9, 7, 6][: len(acts) + 1], acts, n_out)
    x = RNG.uniform(-1 if signed else 0, 1, (200, 9))
    bounds = (-1.0, 1.0) if signed else (0.0, 1.0)
    return quantize(graph, QuantSettings(bits, per_channel=per_channel, act_bits=act_bits), x, bounds)


NETS = {
    "step": lambda: quantized(["step"]),
    "relu": lambda: quantized(["relu"], act_bits=4),
    "sign": lambda: quantized(["sign"]),
    "relu-step-signed": lambda: quantized(["relu", "step"], bits=3, signed=True),
    "identity-hidden": lambda: quantized(["identity"], bits=6),
    "per-channel-binary-out": lambda: quantized(["relu"], bits=2, per_channel=True, n_out=1),
    "random-step": lambda: random_net(RNG, 10, [8], ["step"], top=7),
}


def independent_forward(graph, x_q):
    """Integer scores from nir.read's graph and its metadata alone (not hwq's reader): the
    integer semantics of docs/integer-semantics.md written out again."""
    meta = graph.metadata["hwq"]
    h = np.asarray(x_q, np.int64)
    for i in range(int(meta["layers"])):
        m = graph.nodes[f"layer{i}"].metadata["hwq"]
        acc = h @ np.asarray(m["weight"], np.int64).T + np.asarray(m["bias"], np.int64)
        act = m["activation"]
        if act == "step":
            h = (acc > 0).astype(np.int64)
        elif act == "sign":
            h = np.where(acc >= 0, 1, -1)
        elif act == "relu":
            mult, shift = np.asarray(m["requant_multiplier"]), np.asarray(m["requant_shift"])
            z = (acc * mult + np.where(shift > 0, 1 << np.maximum(shift - 1, 0), 0)) >> shift
            h = np.clip(z, 0, 2 ** int(m["act_bits"]) - 1)
        else:
            h = acc
    return h


@pytest.mark.parametrize("name", sorted(NETS))
def test_round_trip_scores_identical(tmp_path, name):
    net = NETS[name]()
    path = tmp_path / "m.nir"
    hnir.write_network(net, path)
    graph = nir.read(path)  # NIR's own reader, with its type checks
    assert isinstance(graph.nodes["layer0"], nir.Affine) and isinstance(graph.nodes["input"], nir.Input)
    back = hnir.read_network(path)
    x_q = codes(RNG, net, 500)
    expected = reference.forward(net, x_q)
    np.testing.assert_array_equal(reference.forward(back, x_q), expected)
    np.testing.assert_array_equal(independent_forward(graph, x_q), expected)
    assert back.input == net.input and back.output == net.output and back.settings == net.settings
    for a, b in zip(net.layers, back.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.weight_scale, b.weight_scale)
        assert (a.activation, a.act_bits, a.in_max, a.out_scale) == (b.activation, b.act_bits, b.in_max, b.out_scale)


def nir_float_forward(graph, x):
    """One time step of the NIR graph in real units (Affine, Threshold; a chain)."""
    nxt = dict(graph.edges)
    name, h = nxt["input"], x
    while name != "output":
        node = graph.nodes[name]
        if isinstance(node, nir.Affine):
            h = h @ node.weight.T + node.bias
        elif isinstance(node, nir.Threshold):
            h = (h > node.threshold).astype(float)
        else:
            raise AssertionError(type(node))
        name = nxt[name]
    return h


@pytest.mark.parametrize("name", ["step", "sign", "random-step"])
def test_float_nodes_compute_the_network(tmp_path, name):
    """The dequantized graph itself (what NIR tools run) decides like the integer model on
    dequantized input codes, up to float rounding at exact ties of the accumulator."""
    net = NETS[name]()
    hnir.write_network(net, tmp_path / "m.nir")
    graph = nir.read(tmp_path / "m.nir")
    x_q = codes(RNG, net, 500)
    scores = nir_float_forward(graph, x_q / net.input.inv_scale)
    accs = reference.trace(net, x_q)
    ties = np.any(np.concatenate([a == 0 for a in accs[:-1]], axis=1), axis=1)
    decided = reference.decide(scores, net.output)
    np.testing.assert_array_equal(decided[~ties], reference.decide(accs[-1], net.output)[~ties])
    unit = net.layers[-1].acc_scale
    np.testing.assert_allclose(scores[~ties], accs[-1][~ties] * unit, rtol=1e-9, atol=1e-9 * np.abs(unit).max())


def test_relu_is_an_if_node(tmp_path):
    net = NETS["relu"]()
    hnir.write_network(net, tmp_path / "m.nir")
    node = nir.read(tmp_path / "m.nir").nodes["layer0.relu"]
    assert isinstance(node, nir.IF)
    np.testing.assert_allclose(node.v_threshold, net.layers[0].out_scale)


def corrupt(path, key, change):
    with h5py.File(path, "r+") as f:
        ds = f[key]
        value = ds[()]
        ds[...] = change(value)


@pytest.mark.parametrize("key,change,message", [
    ("node/nodes/layer0/metadata/hwq/weight", lambda w: w + (np.arange(w.size).reshape(w.shape) == 3), "disagree"),
    ("node/nodes/layer1/bias", lambda b: b * 1.5 + 1, "disagree"),
    ("node/nodes/layer0/metadata/hwq/bias", lambda b: b - 1, "disagree"),
])
def test_corrupt_file_is_refused(tmp_path, key, change, message):
    net = NETS["relu-step-signed"]()
    path = tmp_path / "m.nir"
    hnir.write_network(net, path)
    corrupt(path, key, change)
    with pytest.raises(FileFormatError, match=message):
        hnir.read_network(path)


def test_truncated_and_foreign_files(tmp_path):
    net = NETS["step"]()
    path = tmp_path / "m.nir"
    hnir.write_network(net, path)
    cut = tmp_path / "cut.nir"
    cut.write_bytes(path.read_bytes()[:600])
    with pytest.raises(FileFormatError, match="not a readable NIR file"):
        hnir.read_network(cut)
    plain = tmp_path / "plain.nir"
    nir.write(plain, nir.NIRGraph.from_list(nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2))))
    with pytest.raises(FileFormatError, match="without hwq's integer metadata"):
        hnir.read_network(plain)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/layer1/metadata/hwq/weight"]
    with pytest.raises(FileFormatError, match="corrupt hwq NIR file"):
        hnir.read_network(path)


def test_sigmoid_is_refused_in_one_line(tmp_path):
    net = quantized(["sigmoid"])
    with pytest.raises(UsageError, match="no sigmoid primitive"):
        hnir.write_network(net, tmp_path / "m.nir")
    assert not (tmp_path / "m.nir").exists()


def test_cli_export_nir(tmp_path, capsys):
    from hwq.cli import main
    from hwq.files import program as hwqfile
    from hwq.target.protocol import ReferenceProgram

    net = NETS["relu-step-signed"]()
    model = tmp_path / "m.hwq"
    hwqfile.save_program(model, ReferenceProgram(net, target="sim"))
    out = tmp_path / "m.nir"
    with pytest.raises(SystemExit) as info:
        main(["export", str(model), "--format", "nir", "-o", str(out), "--json"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["format"] == "nir"
    x_q = codes(RNG, net, 300)
    np.testing.assert_array_equal(reference.forward(hnir.read_network(out), x_q), reference.forward(net, x_q))
