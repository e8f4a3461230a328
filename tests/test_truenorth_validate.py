"""The stand-alone validator refuses every configuration the chip cannot hold, one rule at a time,
and accepts what the mapper builds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from factories import random_net
from hwq_targets.truenorth import TrueNorthTarget, problems, validate
from hwq_targets.truenorth.core import Core, Model, Neurons

from hwq.errors import LimitError


def good_core(cid=0, dest_core=1):
    n = Neurons.empty()
    exists = np.zeros(256, bool)
    exists[:2] = True
    dc = np.full(256, -1)
    dc[:2] = dest_core
    da = np.zeros(256, np.int64)
    da[:2] = [0, 1]
    return Core(cid, np.eye(256, dtype=bool), np.zeros(256), n.replace(exists=exists, dest_core=dc, dest_axon=da,
                                                                          alpha=np.ones(256)))


def model_with(**changes):
    c0 = good_core(0, 1)
    c1 = good_core(1, -32)
    n = c0.neurons
    fields = {k: np.array(getattr(n, k)) for k in changes}
    for k, (j, v) in changes.items():
        fields[k][j] = v
    return Model((Core(0, c0.crossbar, c0.axon_type, n.replace(**fields)), c1))


def test_a_good_model_passes():
    assert problems(model_with()) == []
    validate(model_with())


@pytest.mark.parametrize("field,value,message", [
    ("weight", (0, [0, 256, 0, 0]), "a weight outside"), ("leak", (1, -256), "leak outside"),
    ("alpha", (0, 2**18), "alpha outside"), ("beta", (0, -1), "beta outside"), ("dest_delay", (0, 16), "delay outside"),
    ("dest_delay", (1, 0), "delay outside"), ("v0", (0, 2**19), "initial potential"),
    ("dest_core", (0, -1), "without a destination"), ("dest_core", (0, 7), "does not have"),
    ("dest_axon", (1, 0), "two or more sources"), ("reset", (0, 5), "reset potential"), ("tm", (0, 19), "TM")])
def test_each_rule(field, value, message):
    with pytest.raises(LimitError, match=message):
        validate(model_with(**{field: value}))


def test_oversized_cores_and_host_collisions():
    c = good_core(0, -32)
    big = SimpleNamespace(id=0, crossbar=np.zeros((257, 256), bool), axon_type=np.zeros(257), neurons=c.neurons)
    assert "more than 256 axons" in problems(SimpleNamespace(cores=[big]))[0]
    many = SimpleNamespace(id=0, crossbar=np.zeros((256, 257), bool), axon_type=np.zeros(256), neurons=c.neurons)
    assert "more than 256 axons x 256 neurons" in problems(SimpleNamespace(cores=[many]))[0]
    assert any("host and a neuron" in p for p in problems(model_with(), host_ports=[(1, 0)]))
    assert problems(model_with(), host_ports=[(1, 5)]) == []
    assert "cores, more than" in problems(model_with(), max_cores=1)[0]


def test_the_mapper_builds_valid_configurations():
    rng = np.random.default_rng(0)
    net = random_net(rng, 300, [40, 20], ["step", "step"], 1, input_bits=2)
    program = TrueNorthTarget().compile(net, fidelity_samples=0)
    assert problems(program.mapping.model, program.mapping.host_ports) == []
    # and the check can fail: the host driving an axon a neuron already reaches
    n = next(c.neurons for c in program.mapping.model.cores if np.any(c.neurons.exists & (c.neurons.dest_core >= 0)))
    j = int(np.flatnonzero(n.exists & (n.dest_core >= 0))[0])
    clash = [(int(n.dest_core[j]), int(n.dest_axon[j]))]
    assert any("host and a neuron" in p for p in problems(program.mapping.model, program.mapping.host_ports + clash))
