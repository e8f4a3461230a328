"""truenorth output decoding: spike counts (exact) or population votes (approximate, named in
the report, fidelity measured), chosen by the ``decoding`` option."""

from __future__ import annotations

import numpy as np
import pytest
from factories import onnx_net, random_net
from hwq_targets.truenorth import TrueNorthTarget

from hwq import api
from hwq.errors import UsageError
from hwq.files.program import load_program, save_program
from hwq.quant import reference

TN = TrueNorthTarget()


def test_vote_with_one_group_is_the_sign_of_each_accumulator():
    """One input group per output unit: E+ spikes iff acc > 0, E- iff acc < 0, so the vote is
    sign(acc), where counting gives acc itself."""
    rng = np.random.default_rng(3)
    net = random_net(rng, 12, [10], ["step"], 2, input_bits=2)
    x = rng.integers(0, 4, (96, 12))
    acc = reference.forward(net, x)
    count = TN.compile(net, fidelity_samples=0)
    vote = TN.compile(net, decoding="vote", fidelity_samples=16)
    assert vote.report["layers"][-1]["groups"] == 1
    assert np.array_equal(count.forward(x), acc) and count.exact
    assert np.array_equal(vote.forward(x), np.sign(acc))
    assert not np.array_equal(vote.forward(x), acc)  # the decodings do differ here
    assert not vote.exact and "population vote" in vote.report["approximations"][0]
    assert vote.report["decoding"].startswith("population vote")
    assert vote.report["fidelity"]["inputs"] == 16 and 0 <= vote.report["fidelity"]["value"] <= 1


def test_vote_counts_one_per_group():
    rng = np.random.default_rng(4)
    net = random_net(rng, 10, [300], ["step"], 1, input_bits=1)  # output fan-in 300: several groups
    vote = TN.compile(net, decoding="vote", fidelity_samples=0)
    groups = vote.report["layers"][-1]["groups"]
    assert groups >= 2
    scores = vote.forward(rng.integers(0, 2, (32, 10)))
    assert np.abs(scores).max() <= groups and np.abs(scores).max() >= 1


def test_decoding_option_is_checked_and_stored(tmp_path):
    net = random_net(np.random.default_rng(5), 8, [6], ["step"], 1, input_bits=1)
    with pytest.raises(UsageError, match="decoding"):
        api.compile(net, "truenorth:decoding=majority")
    rng = np.random.default_rng(13)
    net, _ = onnx_net(rng, "Relu", 2, n_in=6, hidden=5)  # a real quantized network (float graph kept)
    program = api.compile(net, "truenorth:relu=rate,decoding=vote")
    save_program(tmp_path / "v.hwq", program)
    again = load_program(tmp_path / "v.hwq")
    assert again.options["decoding"] == "vote" and again.vote
    x = rng.integers(0, 256, (16, 6))
    assert np.array_equal(again.forward(x), program.forward(x))
