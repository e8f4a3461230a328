"""lava-dl netx export (targets/loihi/netx.py): the file has the layout netx's reader expects
(read here as lava-dl's ``NetDict`` reads it), and the network it describes, run with netx's
weight encoding (``optimize_weight_bits``, copied from lava-dl ``netx/utils.py``) and Lava's
fixed-point Dense and LIFReset arithmetic (``clip_weights``/``truncate_weights`` of
``lava/utils/weightutils.py``, ``reset_interval = 1``), gives the emulator's scores. CNN files
are read as lava-dl ``Network._create``/``create_conv`` reads them (input, conv, flatten, dense)
and their convolutions run as Lava's ``conv_scipy`` (``lava/proc/conv/utils.py``) computes them.

lava-dl itself (it imports PyTorch, which .venv-lava lacks) runs the files where
``HWQ_LAVA_DL_PYTHON`` names a Python 3.10 with lava-nc 0.10.0 and lava-dl 0.6.0
(``python -m venv D && D/bin/pip install lava-nc==0.10.0 lava-dl==0.6.0``, about 4 GB with
PyTorch's CUDA wheels): ``hdf5.Network(net_config=...)`` on Lava's fixed-point CPU models gives
the emulator's scores (``test_lava_dl_runs_the_files``); skipped without it."""

from __future__ import annotations

import os
import subprocess

import h5py
import numpy as np
import pytest
from factories import codes, onnx_net, random_cnn, random_net
from hwq_targets.loihi import LoihiTarget
from scipy import signal

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


def signed_clamp(x, bits):
    """Lava ``lava/proc/conv/utils.py`` ``signed_clamp``: the Conv output wraps modulo 2^bits."""
    base = 1 << bits
    return (x + base // 2) % base - base // 2


def lava_conv(input_, weight, stride, padding, dilation, groups):
    """Lava ``lava/proc/conv/utils.py`` ``conv_scipy`` (0.10.0 hard-codes TORCH_IS_AVAILABLE =
    False), line for line: input (x, y, c), weight (C_out, x, y, C_in / groups), stride, padding,
    dilation (x, y); a true convolution (``signal.convolve2d``) of the zero-padded input."""
    kernel_size = weight.shape[1:3]
    x_out = (input_.shape[0] + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    y_out = (input_.shape[1] + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    output = np.zeros((x_out, y_out, weight.shape[0]))
    dilated = np.zeros([weight.shape[0], dilation[0] * (kernel_size[0] - 1) + 1,
                        dilation[1] * (kernel_size[1] - 1) + 1, weight.shape[-1]])
    dilated[:, ::dilation[0], ::dilation[1], :] = weight
    padded = np.pad(input_, ((padding[0], padding[0]), (padding[1], padding[1]), (0, 0)), mode="constant")
    k_grp, c_grp = output.shape[2] // groups, input_.shape[2] // groups
    for g in range(groups):
        for k in range(k_grp):
            for c in range(c_grp):
                temp = signal.convolve2d(padded[:, :, c + g * c_grp], dilated[k + g * k_grp, :, :, c], mode="valid")
                output[:, :, k + g * k_grp] += temp[::stride[0], ::stride[1]]
    return signed_clamp(output.astype(np.int64), 24)  # PyConvModelFixed.clamp_precision


def read_conv(g, flip=True):
    """lava-dl ``netx/hdf5.py`` ``Network.create_conv``: shape, weight, stride, padding,
    dilation read reversed (``expand``: x[::-1]) into Lava's (x, y, ...) order; the kernel flipped
    (``weight[:, :, ::-1, ::-1]``, unless ``flip=False``: a wrong reader) and transposed
    ``(0, 3, 2, 1)`` to Lava's (C_out, W, H, C_in / groups)."""
    def expand(x):
        return np.array([x, x]) if np.isscalar(x) else x[::-1]

    shape = tuple(netdict(g, "shape")[::-1])
    weight = netdict(g, "weight")
    if flip:
        weight = weight[:, :, ::-1, ::-1]
    weight = weight.reshape(weight.shape[:4]).transpose((0, 3, 2, 1))
    return (shape, weight, expand(netdict(g, "stride")), expand(netdict(g, "padding")),
            expand(netdict(g, "dilation")), int(netdict(g, "groups")))


def lif(a, g, shape):
    """Lava's LIFReset (reset_interval = 1) on the synaptic input ``a`` of neurons ``shape``:
    ``u = a << 6``, ``v = u + bias << 6`` (netx: ``bias_exp = 6``; a per-channel bias broadcast
    over the positions as ``AbstractBlock._neuron`` does), spike iff ``v > vth << 6``."""
    neuron = g["neuron"]
    assert netdict(neuron, "type") == "CUBA"
    du, dv = int(netdict(neuron, "iDecay")) - 1, int(netdict(neuron, "vDecay"))
    assert (du, dv) == (4095, 0)
    bias = netdict(g, "bias")
    if len(shape) > 1 and list(bias.shape) != list(shape):
        assert shape[-1] == bias.shape[0]  # channel-wise
        full = np.zeros(shape, np.int64)
        full[:, :] = bias
        bias = full
    u = a << 6  # u = 0 after the reset, du does not matter
    v = np.clip(u + (bias << 6), -(2**23 - 1), 2**23 - 1)
    vth = int(netdict(neuron, "vThMant")) << 6
    return v, (v > vth).astype(np.int64)


def run_netx(path, x_q, flip=True):
    """The netx network of ``path`` on Lava's arithmetic, one sample per step with
    LIFReset(reset_interval=1), built as lava-dl ``Network._create`` builds it (``input``: the
    input shape only; ``conv``; ``flatten``: the next dense reads ``transpose([2, 1, 0])`` of
    the (x, y, c) output, flattened; ``dense``); returns the output layer's ``v >> 6`` in hwq's
    C-order. hwq's codes (C-order (c, y, x)) enter a CNN as (x, y, c)."""
    with h5py.File(path, "r") as f:
        layers = f["layer"]
        h = np.asarray(x_q, np.int64)
        in_shape, flatten_next = None, False
        for i in range(len(layers)):
            g = layers[str(i)]
            kind = netdict(g, "type")
            if kind == "input":
                assert "neuron" not in g
                in_shape = tuple(netdict(g, "shape")[::-1])  # (x, y, c)
                w, hh, c = in_shape
                h = h.reshape(len(h), c, hh, w).transpose(0, 3, 2, 1)
            elif kind == "flatten":
                flatten_next = True
            elif kind == "conv":
                assert h.ndim == 4 and not flatten_next
                shape, weight, stride, padding, dilation, groups = read_conv(g, flip)
                a = np.stack([lava_conv(s, weight, stride, padding, dilation, groups) for s in h])
                assert a.shape[1:] == shape  # Conv block: synapse output shape == layer shape
                v, h = lif(a, g, shape)
            else:
                assert kind == "dense"
                if h.ndim == 4:
                    assert flatten_next
                    h = h.transpose(0, 3, 2, 1).reshape(len(h), -1)
                    flatten_next = False
                weight = netdict(g, "weight")
                shape = (int(np.prod(netdict(g, "shape"))),)
                if weight.ndim == 1:
                    weight = weight.reshape(shape[0], -1)
                w, bits, exp, mode = optimize_weight_bits(weight)
                w = lava_dense(w, bits, mode)
                a = h @ w.T
                a = a << exp if exp > 0 else a >> -exp
                v, h = lif(a, g, shape)
        if v.ndim == 4:
            v = v.transpose(0, 3, 2, 1).reshape(len(v), -1)
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


# ---------------------------------------------------------------- convolutional networks
CNNS = {  # random_cnn options: conv 3x3 -> step -> pool 2x2 -> conv 3x3 -> step -> dense scores
    "lenet-max": dict(in_shape=(1, 8, 8), pool="max"),
    "lenet-avg-of-spikes": dict(in_shape=(1, 9, 9), pool="avg", pads=0, input_bits=4),
    "signed-strided": dict(in_shape=(2, 9, 9), pool="max", stride=2, signed=True),
    "groups": dict(in_shape=(2, 8, 8), pool=None, channels=(4, 6), groups=2),
    "one-bit-input": dict(in_shape=(3, 6, 6), pool="max", input_bits=1),
}


def step_cnn(name, seed=0):
    return LoihiTarget().compile(random_cnn(np.random.default_rng(seed), act="step", **CNNS[name]))


def export(program, tmp_path, name="cnn.net"):
    from hwq_targets.loihi.netx import write_netx

    path = tmp_path / name
    write_netx(program, path)
    return path


@pytest.mark.parametrize("name", sorted(CNNS))
def test_netx_cnn_gives_the_emulator_scores(tmp_path, name):
    """A step CNN (convolutions, poolings as depthwise ones kernels, a dense head) read back as
    netx reads it and run on Lava's Conv/Dense/LIFReset arithmetic gives the loihi emulator's
    scores bit for bit."""
    program = step_cnn(name, seed=len(name))
    assert all(lm.shift == 0 for lm in program.mapping.layers)
    path = export(program, tmp_path)
    x_q = codes(RNG, program.net, 60)
    want = program.forward(x_q)
    np.testing.assert_array_equal(run_netx(path, x_q), want)
    assert len(np.unique(want, axis=0)) > 1  # the scores (the spikes below them) vary with the input


def test_cnn_layout_as_netx_reads_it(tmp_path):
    """The lenet file: input, conv, conv (the max pooling), conv, flatten, dense; the fields and
    dtypes lava-dl's exporter writes (slayer ``AbstractConv.export_hdf5``)."""
    program = step_cnn("lenet-max")
    net = program.net
    path = export(program, tmp_path)
    with h5py.File(path, "r") as f:
        kinds = [netdict(f["layer"][str(i)], "type") for i in range(len(f["layer"]))]
        assert kinds == ["input", "conv", "conv", "conv", "flatten", "dense"]
        assert list(f["layer/0/shape"][()]) == list(net.input_shape) and set(f["layer/0"]) == {"type", "shape"}
        conv, pool = f["layer/1"], f["layer/2"]
        assert set(conv) == {"type", "shape", "weight", "bias", "neuron", "inChannels", "outChannels",
                             "kernelSize", "stride", "padding", "dilation", "groups"}
        assert conv["weight"].shape == (4, 1, 3, 3) and list(conv["shape"][()]) == [4, 8, 8]
        assert list(conv["padding"][()]) == [1, 1] and list(conv["stride"][()]) == [1, 1]
        np.testing.assert_array_equal(conv["weight"][()].reshape(4, -1), net.layers[0].weight)
        assert conv["bias"].shape == (4,) and int(conv["groups"][()]) == 1
        assert pool["weight"].shape == (4, 1, 2, 2) and (pool["weight"][()] == 1).all()
        assert int(pool["groups"][()]) == 4 and list(pool["stride"][()]) == [2, 2]
        assert list(f["layer/4/shape"][()]) == [6 * 4 * 4, 1, 1]
        assert f["layer/5/weight"].shape == net.layers[-1].weight.shape
        meta = f["hwq"].attrs
        assert int(meta["version"]) == 2 and list(meta["input_shape"]) == [8, 8, 1]


def test_a_transposed_kernel_or_unflipped_reader_disagrees(tmp_path, monkeypatch):
    """The comparison can fail: kernels written with their spatial axes transposed (out, in, kW,
    kH) instead of PyTorch's (out, in, kH, kW), or read without netx's flip, give other scores."""
    import hwq_targets.loihi.netx as netx

    program = step_cnn("lenet-avg-of-spikes", seed=3)
    x_q = codes(RNG, program.net, 60)
    want = program.forward(x_q)
    path = export(program, tmp_path, "good.net")
    np.testing.assert_array_equal(run_netx(path, x_q), want)
    assert not np.array_equal(run_netx(path, x_q, flip=False), want)

    right = netx.conv_fields

    def transposed(lm, weight, i):
        fields = right(lm, weight, i)
        fields["weight"] = fields["weight"].transpose(0, 1, 3, 2).copy()  # (out, in, kW, kH)
        return fields

    monkeypatch.setattr(netx, "conv_fields", transposed)
    bad = export(program, tmp_path, "bad.net")
    assert not np.array_equal(run_netx(bad, x_q), want)


def cnn_refusals():
    rng = np.random.default_rng(7)
    target = LoihiTarget()
    asym = random_cnn(rng, in_shape=(1, 8, 8), act="step", pool=None, channels=(3,))
    win = asym.layers[0].window
    import dataclasses

    from hwq.ir.window import Window
    from hwq.quant.qnet import QPool, Requant

    wide = dataclasses.replace(win, pads=(0, 1, 2, 0))
    layer0 = dataclasses.replace(asym.layers[0], window=wide)
    head = asym.layers[1]
    n_in = 3 * wide.positions
    head = dataclasses.replace(head, weight=np.resize(head.weight, (head.weight.shape[0], n_in)))
    asym = dataclasses.replace(asym, layers=(layer0, head))
    step = random_cnn(rng, in_shape=(1, 8, 8), act="step", pool=None, channels=(3,))
    c0 = step.layers[0]
    shape = c0.out_shape
    sumpool = QPool("avg", Window(shape, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), shape[0]),
                    Requant(np.ones(3, np.int64), np.zeros(3, np.int64)), True, 1.0, 1.0)
    n_in = int(np.prod(sumpool.out_shape))
    head = dataclasses.replace(step.layers[1], weight=np.resize(step.layers[1].weight, (3, n_in)))
    summed = dataclasses.replace(step, layers=(c0, sumpool, head))
    relu = random_cnn(rng, in_shape=(1, 8, 8), act="relu", pool=None, channels=(3,))
    relu = dataclasses.replace(relu, layers=(dataclasses.replace(relu.layers[0], weight_scale=np.full(3, 0.01)),
                                             relu.layers[1]))
    return {
        "asymmetric padding": (target.compile(asym), "padding .* is asymmetric"),
        "sum pooling (a relay)": (target.compile(summed), "truncating average pooling maps to a SigmaDelta relay"),
        "relu": (target.compile(relu), "ReLU layers cannot be written as netx"),
    }


def test_cnn_refusals_are_one_line(tmp_path):
    from hwq_targets.loihi.netx import write_netx

    for what, (program, message) in cnn_refusals().items():
        with pytest.raises(TargetError, match=message) as info:
            write_netx(program, tmp_path / "r.net")
        assert "\n" not in str(info.value), what
    assert not list(tmp_path.glob("*.net"))


# ---------------------------------------------------------------- lava-dl itself
LAVA_DL = os.environ.get("HWQ_LAVA_DL_PYTHON")
LAVA_DL_RUN = """
import sys
import numpy as np
from lava.lib.dl.netx import hdf5
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.io.source import RingBuffer
from lava.proc.monitor.process import Monitor

path, codes, bits, out = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
shape = None if sys.argv[5] == "-" else (int(sys.argv[5]),)
net = hdf5.Network(net_config=path, input_message_bits=bits, reset_interval=1, input_shape=shape)
x = codes.astype(np.int64)
if len(net.inp.shape) == 3:
    w, h, c = net.inp.shape
    x = x.reshape(len(x), c, h, w).transpose(0, 3, 2, 1)  # hwq's (c, y, x) as Lava's (x, y, c)
steps = len(x) + len(net.layers)
source = RingBuffer(data=np.ascontiguousarray(np.moveaxis(x, 0, -1).astype(np.int32)))
source.s_out.connect(net.inp)
neuron = net.layers[-1].neuron
monitor = Monitor()
monitor.probe(neuron.v, steps)
try:
    source.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    v = np.asarray(monitor.get_data()[neuron.name]["v"]).reshape(steps, *neuron.v.shape).astype(np.int64)
finally:
    source.stop()
if v.ndim == 4:
    v = v.transpose(0, 3, 2, 1)
np.save(out, v.reshape(steps, -1)[len(net.layers):] >> 6)  # sample k's scores at step k + layers
"""


def lava_dl_scores(path, program, x_q, tmp_path):
    """The scores lava-dl's ``hdf5.Network`` computes from the file (Lava CPU fixed point)."""
    script, xs, out = tmp_path / "run.py", tmp_path / "x.npy", tmp_path / "out.npy"
    script.write_text(LAVA_DL_RUN)
    np.save(xs, x_q)
    cnn = any(lm.window is not None for lm in program.mapping.layers)
    args = [LAVA_DL, str(script), str(path), str(xs), str(program.mapping.layers[0].in_bits), str(out),
            "-" if cnn else str(program.net.n_features)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(out)


@pytest.mark.skipif(not LAVA_DL, reason="HWQ_LAVA_DL_PYTHON (a Python with lava-dl 0.6.0) not set")
def test_lava_dl_runs_the_files(tmp_path, monkeypatch):
    """lava-dl's own reader builds the network from hwq's files and Lava runs it: the scores of a
    step LeNet (conv, max pooling as a depthwise ones conv, conv, flatten, dense) and of an MLP
    equal the emulator's; the file with transposed kernels gives other scores in lava-dl too."""
    import hwq_targets.loihi.netx as netx

    for program in (step_cnn("lenet-max", seed=len("lenet-max")), step_program(0)):
        x_q = codes(RNG, program.net, 30)
        path = export(program, tmp_path, "m.net")
        np.testing.assert_array_equal(lava_dl_scores(path, program, x_q, tmp_path), program.forward(x_q))
    right = netx.conv_fields

    def transposed(lm, weight, i):
        fields = right(lm, weight, i)
        fields["weight"] = fields["weight"].transpose(0, 1, 3, 2).copy()
        return fields

    monkeypatch.setattr(netx, "conv_fields", transposed)
    program = step_cnn("lenet-max", seed=len("lenet-max"))
    x_q = codes(RNG, program.net, 30)
    bad = export(program, tmp_path, "bad.net")
    assert not np.array_equal(lava_dl_scores(bad, program, x_q, tmp_path), program.forward(x_q))
