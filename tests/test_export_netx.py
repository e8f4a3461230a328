"""lava-dl netx export (targets/loihi/netx.py): the file has the layout netx's reader expects
(read here as lava-dl's ``NetDict`` reads it), and the network it describes, run with netx's
weight encoding (``optimize_weight_bits``, copied from lava-dl ``netx/utils.py``) and Lava's
fixed-point Dense and LIFReset arithmetic (``clip_weights``/``truncate_weights`` of
``lava/utils/weightutils.py``, ``reset_interval = 1``), gives the emulator's scores.

Not run here: lava-dl itself (it imports PyTorch, which the Lava environment lacks)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from factories import codes, onnx_net, random_net
from hwq_targets.loihi import LoihiTarget

from hwq.errors import TargetError

RNG = np.random.default_rng(31)


def optimize_weight_bits(weight):
    """lava-dl ``netx/utils.py`` (BSD-3-Clause, Intel), without its clipping warnings."""
    max_weight, min_weight = np.max(weight), np.min(weight)
    if max_weight < 0:
        mode, signed = "inhibitory", 0
    elif min_weight >= 0:
        mode, signed = "excitatory", 0
    else:
        mode, signed = "mixed", 1
    if mode == "mixed":
        scale = np.min([127 / max_weight, -128 / min_weight])
    elif mode == "inhibitory":
        scale = -256 / min_weight
    else:
        scale = 255 / max_weight
    scale_bits = np.floor(np.log2(scale)) + signed
    n = 8
    while n > 0 and np.sum(np.abs(weight / 2**n - np.round(weight / 2**n))) != 0:
        n -= 1
    n -= signed
    return np.left_shift(weight.astype(np.int32), int(scale_bits)).astype(int), int(8 - scale_bits - n), \
        int(-scale_bits), mode


def lava_dense(weight, num_weight_bits, mode):
    """Lava's Dense weight preparation: clip to the sign mode's 8-bit range, drop LSBs."""
    w = -weight if mode == "inhibitory" else weight.copy()
    mixed = int(mode == "mixed")
    w = np.clip(w, -(2**8) * mixed, 2**8 - 1)
    drop = 8 - num_weight_bits + mixed
    w = (w >> drop) << drop
    return -w if mode == "inhibitory" else w


def netdict(g, key):
    """lava-dl ``NetDict.__getitem__`` for the keys netx reads."""
    if key == "type":
        value = g[key]
        value = value[0] if len(value.shape) > 0 else value[()]
        return value.decode("ascii")
    if key in ("weight", "bias"):
        return g[key][()].astype(int).copy()
    return g[key][()]


def run_netx(path, x_q):
    """The netx network of ``path`` on Lava's arithmetic, one sample per step with
    LIFReset(reset_interval=1): ``u = a << 6``, ``v = u + bias << 6``, spike iff ``v > vth << 6``;
    returns the output layer's ``v >> 6``."""
    with h5py.File(path, "r") as f:
        layers = f["layer"]
        h = np.asarray(x_q, np.int64)
        for i in range(len(layers)):
            g = layers[str(i)]
            assert netdict(g, "type") == "dense"
            weight = netdict(g, "weight")
            shape = (int(np.prod(netdict(g, "shape"))),)
            if weight.ndim == 1:
                weight = weight.reshape(shape[0], -1)
            w, bits, exp, mode = optimize_weight_bits(weight)
            w = lava_dense(w, bits, mode)
            a = h @ w.T
            a = a << exp if exp > 0 else a >> -exp
            neuron = g["neuron"]
            assert netdict(neuron, "type") == "CUBA"
            du, dv = int(netdict(neuron, "iDecay")) - 1, int(netdict(neuron, "vDecay"))
            assert (du, dv) == (4095, 0)
            u = a << 6  # u = 0 after the reset, du does not matter
            v = np.clip(u + (netdict(g, "bias") << 6), -(2**23 - 1), 2**23 - 1)
            vth = int(netdict(neuron, "vThMant")) << 6
            h = (v > vth).astype(np.int64)
        return v >> 6


def step_program(seed=0, **kw):
    rng = np.random.default_rng(seed)
    net = random_net(rng, 12, [9], ["step"], top=7, **kw)
    return LoihiTarget().compile(net)


@pytest.mark.parametrize("seed", range(6))
def test_netx_network_gives_the_emulator_scores(tmp_path, seed):
    program = step_program(seed, signed=seed % 2 == 1)
    path = tmp_path / "m.net"
    from hwq_targets.loihi.netx import write_netx

    write_netx(program, path)
    x_q = codes(RNG, program.net, 400)
    np.testing.assert_array_equal(run_netx(path, x_q), program.forward(x_q))


def test_layout_as_netx_reads_it(tmp_path):
    from hwq_targets.loihi.netx import write_netx

    program = step_program(3)
    path = tmp_path / "m.net"
    write_netx(program, path)
    with h5py.File(path, "r") as f:
        assert sorted(f["layer"]) == [str(i) for i in range(len(program.net.layers))]
        for i, layer in enumerate(program.net.layers):
            g = f["layer"][str(i)]
            assert set(g) == {"type", "shape", "weight", "bias", "neuron"}
            assert g["type"].dtype.kind == "S" and g["shape"].dtype.kind == "i"
            assert g["weight"].dtype == np.int64 and g["weight"].shape == layer.weight.shape
            assert g["bias"].dtype == np.int64 and g["bias"].shape == (layer.weight.shape[0],)
            assert set(g["neuron"]) == {"type", "iDecay", "vDecay", "vThMant", "refDelay", "gradedSpike"}
            assert all(g["neuron"][k].shape == () for k in g["neuron"])
        meta = f["hwq"].attrs
        assert meta["format"] == "hwq-netx" and int(meta["reset_interval"]) == 1
        assert int(meta["input_message_bits"]) == program.mapping.layers[0].in_bits


def test_a_wrong_reader_disagrees(tmp_path):
    """The comparison can fail: reading the output voltage without the bias, or without the
    reset's zero current, changes the scores."""
    from hwq_targets.loihi.netx import write_netx

    program = step_program(1)
    path = tmp_path / "m.net"
    write_netx(program, path)
    with h5py.File(path, "r+") as f:
        f["layer/1/bias"][...] = f["layer/1/bias"][()] + 1
    x_q = codes(RNG, program.net, 200)
    assert not np.array_equal(run_netx(path, x_q), program.forward(x_q))


def relu_program():
    return LoihiTarget().compile(random_net(np.random.default_rng(2), 12, [9], ["relu"], top=7))


def test_refusals_are_one_line(tmp_path):
    from hwq_targets.loihi.netx import write_netx

    with pytest.raises(TargetError, match="ReLU layers cannot be written as netx") as info:
        write_netx(relu_program(), tmp_path / "r.net")
    assert "\n" not in str(info.value)
    wide = LoihiTarget().compile(random_net(np.random.default_rng(4), 200, [9], ["step"], top=127, input_bits=16))
    assert any(lm.shift > 0 for lm in wide.mapping.layers)
    with pytest.raises(TargetError, match="shifts the sums right"):
        write_netx(wide, tmp_path / "w.net")
    assert not list(tmp_path.glob("*.net"))


def test_cli_export_netx(tmp_path, capsys):
    from hwq.cli import main
    from hwq.files import program as hwqfile

    program = LoihiTarget().compile(onnx_net(np.random.default_rng(5), "step", 4)[0])  # has a float graph
    model = tmp_path / "m.hwq"
    hwqfile.save_program(model, program)
    with pytest.raises(SystemExit) as info:
        main(["export", str(model), "--format", "netx", "-o", str(tmp_path / "m.net")])
    assert info.value.code == 0, capsys.readouterr().err
    x_q = codes(RNG, program.net, 100)
    np.testing.assert_array_equal(run_netx(tmp_path / "m.net", x_q), program.forward(x_q))
    sim = tmp_path / "s.hwq"
    from hwq.target.protocol import ReferenceProgram

    hwqfile.save_program(sim, ReferenceProgram(program.net, target="sim"))
    with pytest.raises(SystemExit) as info:
        main(["export", str(sim), "--format", "netx", "-o", str(tmp_path / "s.net")])
    assert info.value.code == 2 and "unknown export format 'netx' for a sim program" in capsys.readouterr().err
