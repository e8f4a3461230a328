"""The truenorth mapping: scores equal hwq's integer reference bit for bit; refusals are clear;
the exported model file runs to the same spikes."""

from __future__ import annotations

import numpy as np
import pytest
from hwq_targets.truenorth import TrueNorthTarget, export_model, read_model
from hwq_targets.truenorth.emulator import Emulator
from test_loihi import random_net

from hwq.errors import LimitError
from hwq.quant import reference

TN = TrueNorthTarget()


@pytest.mark.parametrize("seed,n_in,hidden,top,bits", [(0, 20, [12], 1, 2), (1, 300, [40], 1, 1),
                                                       (2, 30, [10, 8], 3, 2), (3, 150, [140], 2, 1)])
def test_scores_equal_the_reference(seed, n_in, hidden, top, bits):
    rng = np.random.default_rng(seed)
    net = random_net(rng, n_in, hidden, ["step"] * len(hidden), top, input_bits=bits)
    program = TN.compile(net)
    x = rng.integers(0, 2**bits, (64, n_in))
    assert np.array_equal(program.forward(x), reference.forward(net, x))
    assert program.report["exact"] and program.report["cores"] == len(program.mapping.model.cores)


def test_large_fan_in_uses_several_groups():
    rng = np.random.default_rng(4)
    net = random_net(rng, 784, [100], ["step"], 1, input_bits=1, out=10)
    program = TN.compile(net)
    assert program.report["layers"][0]["groups"] >= 7
    x = rng.integers(0, 2, (16, 784))
    assert np.array_equal(program.forward(x), reference.forward(net, x))


def test_a_wrong_gate_breaks_exactness():
    """The check can fail: drop the last emitter gate and the scores change."""
    rng = np.random.default_rng(0)
    net = random_net(rng, 20, [12], ["step"], 1, input_bits=2)
    program = TN.compile(net)
    x = rng.integers(0, 4, (32, 20))
    program.mapping.gates.pop()
    assert not np.array_equal(program.forward(x), reference.forward(net, x))


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_refuses_non_step_hidden_layers(act):
    rng = np.random.default_rng(0)
    net = random_net(rng, 8, [6], [act], 1)
    with pytest.raises(LimitError, match="step hidden layers"):
        TN.compile(net)


def test_refuses_wide_weights():
    rng = np.random.default_rng(0)
    net = random_net(rng, 8, [6], ["step"], 7)
    with pytest.raises(LimitError, match="3 axon types"):
        TN.compile(net)


def test_export_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    net = random_net(rng, 20, [12], ["step"], 1, input_bits=2)
    program = TN.compile(net)
    export_model(program, tmp_path / "net.json")
    again = read_model(tmp_path / "net.json")
    x = rng.integers(0, 4, (8, 20))
    a = Emulator(program.mapping.model).run(program.mapping.ticks, program.drive(x)).counts
    b = Emulator(again).run(program.mapping.ticks, program.drive(x)).counts
    assert np.array_equal(a, b) and a.sum() > 0
