"""One suite that every registered target must pass (``hwq.target.protocol``).

For each target found through the ``hwq.targets`` entry points: compile a set of small
integer networks (a target may refuse one with a precise ``HwqError``, but must map at least
one), then check the program's contract: attributes and JSON-able report/options, forward and
decide shapes and dtypes, the empty batch, a ``.hwq`` save/load round trip, the decisions
against the numpy reference wherever the program claims ``exact``, the optional ``trace``,
bad input and options validation. The checks are plain functions so that a deliberately
wrong program can be shown to fail them (the last tests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import make_layer, make_net, onnx_net

from hwq.errors import DataError, HwqError, UsageError
from hwq.files.program import load_program, save_program
from hwq.quant import reference
from hwq.target.protocol import Program, Traceable
from hwq.target.registry import available_targets, get_target, parse_options

TARGETS = available_targets()


def networks():
    """Small quantized networks (from ONNX graphs, as users make them) covering the
    activations, weight widths and output rules targets support."""
    rng = np.random.default_rng(7)
    return {
        "step-ternary": onnx_net(rng, "step", 2)[0],
        "step-4bit": onnx_net(rng, "step", 4, n_in=10, hidden=8)[0],
        "relu-4bit": onnx_net(rng, "Relu", 4)[0],
        "sigmoid-8bit": onnx_net(rng, "Sigmoid", 8)[0],
        "step-binary-out": onnx_net(rng, "step", 2, out=1)[0],
        "relu-wide-784": onnx_net(rng, "Relu", 2, n_in=784, hidden=16, out=10)[0],
    }


NETS = networks()


def input_codes(net, n=64, seed=0):
    fmt = net.input
    rng = np.random.default_rng(seed)
    x = rng.integers(fmt.qmin, fmt.qmax + 1, (n, net.n_features))
    x[0], x[1] = fmt.qmin, fmt.qmax  # the format's edges
    return x


def compiled(target: str):
    """(name, program) for every network the target maps; refusals must be precise errors."""
    out, refused = [], {}
    for name, net in NETS.items():
        try:
            out.append((name, get_target(target).compile(net)))
        except HwqError as exc:
            assert exc.line().strip(), f"{target} refused {name} without a message"
            refused[name] = exc.line()
    assert out, f"{target} maps none of the conformance networks: {refused}"
    return out


@pytest.fixture(scope="module", params=TARGETS)
def programs(request):
    return request.param, compiled(request.param)


# ------------------------------------------------------------------ the checks


def check_attributes(program, target: str, net) -> None:
    assert isinstance(program, Program)
    assert program.target == target and program.net is net
    assert isinstance(program.exact, bool)
    json.dumps(program.report)
    json.dumps(program.options)
    assert isinstance(program.artifacts, dict)


def check_shapes(program, x_q) -> tuple[np.ndarray, np.ndarray]:
    scores = program.forward(x_q)
    assert scores.dtype == np.int64 and scores.ndim == 2 and scores.shape[0] == len(x_q)
    dec = program.decide(scores)
    assert dec.dtype == np.int64 and dec.shape == (len(x_q),)
    assert dec.min() >= 0 and dec.max() < program.net.n_classes
    return scores, dec


def check_exact(program, x_q) -> None:
    """Decisions equal the numpy reference's on every input (only for ``exact`` programs)."""
    want = reference.decide(reference.forward(program.net, x_q), program.net.output)
    got = program.decide(program.forward(x_q))
    diff = np.flatnonzero(got != want)
    assert diff.size == 0, f"{program.target}: {diff.size} decisions differ from the reference, first {diff[:5]}"


def check_trace(program, x_q) -> None:
    zs = program.trace(x_q)
    assert len(zs) == len(program.net.layers)
    for z, layer in zip(zs, program.net.layers):
        assert z.shape == (len(x_q), layer.weight.shape[0]) and np.all(np.isfinite(z))


# ------------------------------------------------------------------ the suite


def test_programs_keep_the_contract(programs):
    target, progs = programs
    for name, program in progs:
        x_q = input_codes(program.net)
        check_attributes(program, target, NETS[name])
        check_shapes(program, x_q)
        empty = program.forward(x_q[:0])
        assert empty.shape[0] == 0 and empty.dtype == np.int64


def test_exact_programs_decide_like_the_reference(programs):
    target, progs = programs
    for _, program in progs:
        if program.exact:
            check_exact(program, input_codes(program.net, n=96, seed=1))


def test_traceable_programs_trace_every_layer(programs):
    target, progs = programs
    for _, program in progs:
        if isinstance(program, Traceable):
            check_trace(program, input_codes(program.net, n=16))


def test_hwq_file_round_trip(programs, tmp_path):
    target, progs = programs
    for name, program in progs:
        path = tmp_path / f"{name}.hwq"
        save_program(path, program)
        loaded = load_program(path)
        assert loaded.target == target and loaded.options == program.options
        x_q = input_codes(program.net, n=32, seed=2)
        assert np.array_equal(loaded.forward(x_q), program.forward(x_q))


def test_wrong_input_shape_is_a_data_error(programs):
    target, progs = programs
    _, program = progs[0]
    with pytest.raises(DataError):
        program.forward(np.zeros((3, program.net.n_features + 1), np.int64))


def test_options_are_declared_and_validated(programs):
    target, progs = programs
    tgt = get_target(target)
    for opt in getattr(tgt, "options", ()):
        assert opt.name and opt.help
        if opt.choices:
            with pytest.raises(UsageError):
                parse_options(target, [f"{opt.name}=no-such-choice"])
    with pytest.raises(UsageError):
        parse_options(target, ["no_such_option=1"])
    with pytest.raises(UsageError):
        tgt.compile(progs[0][1].net, no_such_option=1)


# ------------------------------------------------------------- the checks can fail


class WrongDecisions:
    """A program that is right except that it breaks argmax ties toward the highest index."""

    def __init__(self, program):
        self.inner, self.net, self.target, self.exact = program, program.net, program.target, True

    def forward(self, x_q):
        return self.inner.forward(x_q)

    def decide(self, scores):
        return (scores.shape[1] - 1 - np.argmax(scores[:, ::-1], axis=1)).astype(np.int64)


def test_the_exactness_check_catches_a_wrong_tie_rule():
    net = make_net([make_layer([[1, -1, 2], [0, 3, -2]], [0, 0], "identity")])
    sim = get_target("sim").compile(net)
    x_q = np.array([[0, 0, 0], [1, 1, 0], [3, 1, 0]])  # scores tie on the first rows
    check_exact(sim, x_q)
    with pytest.raises(AssertionError, match="decisions differ"):
        check_exact(WrongDecisions(sim), x_q)


def test_the_shape_check_catches_a_wrong_dtype():
    sim = get_target("sim").compile(NETS["step-ternary"])

    class Float(WrongDecisions):
        def forward(self, x_q):
            return self.inner.forward(x_q).astype(np.float64)

        def decide(self, scores):
            return self.inner.decide(scores)

    with pytest.raises(AssertionError):
        check_shapes(Float(sim), input_codes(sim.net, n=4))
