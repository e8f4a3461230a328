"""One suite that every registered target must pass (``hwq.target.protocol``).

For each target found through the ``hwq.targets`` entry points: compile a set of small
integer networks (a target may refuse one with a precise ``HwqError``, but must map at least
one), then check the program's contract: attributes and JSON-able report/options, forward and
decide shapes and dtypes, the empty batch, a ``.hwq`` save/load round trip, the decisions
against the numpy reference wherever the program claims ``exact``, every optional capability the
program declares (``hwq.target.protocol.CAPABILITIES``: signature and behaviour), codes outside
the input format (computed exactly or refused in one line), bad input and options validation.
The checks are plain functions so that a deliberately wrong program can be shown to fail them
(the last tests).
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from factories import make_layer, make_net, onnx_net, random_cnn

from hwq.errors import DataError, HwqError, UsageError
from hwq.files.program import load_program, save_program
from hwq.quant import reference
from hwq.target.protocol import (
    CAPABILITIES,
    Accumulating,
    Export,
    Exporting,
    HasBitExactModel,
    MeasuresFidelity,
    OwnSurrogate,
    Program,
    ReferenceProgram,
    Traceable,
)
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
        "cnn-relu-maxpool": random_cnn(rng, (1, 8, 8), "relu", "max", channels=(4, 6)),
        "cnn-step-avgpool-strided": random_cnn(rng, (2, 9, 9), "step", "avg", channels=(4, 4), stride=2, groups=2),
        "cnn-step-maxpool": random_cnn(rng, (1, 8, 8), "step", "max", channels=(3, 4), pads=0),
    }


NETS = networks()
CNNS = [name for name in NETS if name.startswith("cnn-")]


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
        assert z.shape == (len(x_q), layer.n_out) and np.all(np.isfinite(z))


def outside_codes(net, n=96, seed=3):
    """Codes in the format with rows beyond its edges: a column or two just beyond, random
    columns up to three spans beyond either edge (where clipping changes decisions), and rows
    far beyond (where a state sized for the format wraps)."""
    fmt = net.input
    rng = np.random.default_rng(seed)
    x = input_codes(net, n, seed)
    span = fmt.qmax - fmt.qmin + 1
    x[2::8, 0], x[3::8, -1] = fmt.qmax + 1, fmt.qmin - 1
    beyond = rng.random(x.shape) < 0.4
    up = rng.integers(fmt.qmax + 1, fmt.qmax + 3 * span, x.shape)
    down = rng.integers(fmt.qmin - 3 * span, fmt.qmin, x.shape)
    rows = np.zeros(n, bool)
    rows[4::2] = True
    x = np.where(beyond & rows[:, None], np.where(rng.random(x.shape) < 0.5, up, down), x)
    x[5::8] = rng.integers(fmt.qmin - 64 * span, fmt.qmax + 64 * span, x[5::8].shape)
    return x


def check_outside_format(program, x_q) -> str:
    """The rule of docs/integer-semantics.md, section 1: codes outside the input format are
    computed as the reference computes them, or refused in one ``DataError`` line naming the
    format; never clipped or wrapped silently."""
    fmt = program.net.input
    try:
        got = program.decide(program.forward(x_q))
    except DataError as exc:
        line = exc.line()
        assert "\n" not in line and fmt.name in line, f"{program.target}: the refusal does not name the format: {line}"
        return "refused"
    assert program.exact, f"{program.target}: an inexact program computed codes outside the input format"
    want = reference.decide(reference.forward(program.net, x_q), program.net.output)
    diff = np.flatnonzero(got != want)
    assert diff.size == 0, (f"{program.target}: {diff.size} decisions on codes outside the input format differ "
                            f"from the reference, first rows {diff[:5]}")
    return "computed"


def protocol_methods(proto) -> list[str]:
    return sorted(n for n in proto.__protocol_attrs__ if callable(getattr(proto, n, None)))


def check_signature(program, proto) -> None:
    """Every parameter of the capability's methods is accepted under its name and kind (with a
    default where the Protocol has one); any extra parameter has a default."""
    empty = inspect.Parameter.empty
    for name in protocol_methods(proto):
        want = list(inspect.signature(getattr(proto, name)).parameters.values())[1:]  # without self
        got = inspect.signature(getattr(program, name)).parameters
        where = f"{program.target}: {type(program).__name__}.{name}"
        for p in want:
            assert p.name in got, f"{where} lacks the parameter '{p.name}' of {proto.__name__}.{name}"
            q = got[p.name]
            assert q.kind == p.kind, f"{where}: '{p.name}' is {q.kind.description}, not {p.kind.description}"
            assert p.default is empty or q.default is not empty, f"{where}: '{p.name}' needs a default"
        for q in got.values():
            if q.name not in {p.name for p in want} and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
                assert q.default is not empty, f"{where}: the extra parameter '{q.name}' has no default"


def check_accumulators(program, x_q) -> None:
    accs = program.accumulators(x_q)
    assert len(accs) == len(program.net.layers)
    for acc, layer in zip(accs, program.net.layers):
        assert acc.dtype == np.int64 and acc.shape == (len(x_q), layer.n_out)
    assert np.array_equal(accs[-1], program.forward(x_q)), f"{program.target}: last accumulators are not the scores"
    if isinstance(program, Traceable):
        for acc, z, layer in zip(accs, program.trace(x_q), program.net.layers):
            assert np.array_equal(acc * layer.unit_scale, z), f"{program.target}: acc * acc_scale is not trace"


def check_surrogate_layers(program) -> None:
    weights, tops = program.surrogate_layers()
    assert len(weights) == len(tops) == len(program.net.layers)
    for w, top, layer in zip(weights, tops, program.net.layers):
        if not hasattr(layer, "weight"):  # a pooling: no weights (the gradient routes through it)
            assert w is None, f"{program.target}: a pooling node's surrogate weight must be None"
            continue
        w = np.asarray(w)
        assert w.shape == layer.weight.shape and np.all(np.isfinite(w))
        assert top is None or (np.isfinite(top) and top > 0)


def check_bit_exact_model(program, x_q) -> None:
    model = program.bit_exact_model()
    assert isinstance(model, Program) and isinstance(model, Traceable), \
        f"{program.target}: bit_exact_model() is not a program that can trace"
    assert model.net is program.net
    check_trace(model, x_q)


def check_fidelity(program, x_q) -> None:
    value = program.measure_fidelity(x_q, "conformance")
    want = reference.decide(reference.forward(program.net, x_q), program.net.output)
    share = float(np.mean(program.decide(program.forward(x_q)) == want))
    assert value == share, f"{program.target}: measured fidelity {value}, decisions agree on {share}"
    assert program.report["fidelity"]["value"] == value
    assert program.report["fidelity"]["inputs"] == len(x_q)
    assert program.report["fidelity"]["source"] == "conformance"
    assert not program.exact or value == 1.0


def check_capabilities(program, x_q) -> list[str]:
    """Each optional capability the program has (``hwq.target.protocol.CAPABILITIES``) with the
    Protocol's signature and its behaviour; returns the names of those it has."""
    behaviour = {Traceable: lambda: check_trace(program, x_q), Accumulating: lambda: check_accumulators(program, x_q),
                 OwnSurrogate: lambda: check_surrogate_layers(program),
                 HasBitExactModel: lambda: check_bit_exact_model(program, x_q),
                 MeasuresFidelity: lambda: check_fidelity(program, x_q)}
    assert set(behaviour) == set(CAPABILITIES), "a capability without its check"
    has = []
    for proto in CAPABILITIES:
        if isinstance(program, proto):
            check_signature(program, proto)
            behaviour[proto]()
            has.append(proto.__name__)
    return has


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


def test_declared_capabilities_keep_their_contract(programs):
    target, progs = programs
    for _, program in progs:
        check_capabilities(program, input_codes(program.net, n=16, seed=4))


def test_codes_outside_the_input_format_are_exact_or_refused(programs):
    target, progs = programs
    for _, program in progs:
        check_outside_format(program, outside_codes(program.net))


def test_hwq_file_round_trip(programs, tmp_path):
    target, progs = programs
    for name, program in progs:
        path = tmp_path / f"{name}.hwq"
        save_program(path, program)
        loaded = load_program(path)
        assert loaded.target == target and loaded.options == program.options
        x_q = input_codes(program.net, n=32, seed=2)
        assert np.array_equal(loaded.forward(x_q), program.forward(x_q))


@pytest.mark.parametrize("target", TARGETS)
def test_a_cnn_maps_exactly_or_is_refused_in_one_line(target):
    """Every target runs the small CNNs bit for bit with the reference, or refuses each in one
    line that names the node it cannot map (issues 19-21: until a target maps CNNs)."""
    for name in CNNS:
        net = NETS[name]
        try:
            program = get_target(target).compile(net)
        except HwqError as exc:
            line = exc.line()
            assert "\n" not in line and "layer" in line, f"{target} refused {name} without naming the layer: {line}"
            continue
        check_exact(program, input_codes(net, n=48, seed=5))


def test_wrong_input_shape_is_a_data_error(programs):
    target, progs = programs
    _, program = progs[0]
    with pytest.raises(DataError):
        program.forward(np.zeros((3, program.net.n_features + 1), np.int64))


def test_options_are_declared_and_validated(programs):
    target, progs = programs
    tgt = get_target(target)
    for opt in tgt.options:
        assert opt.name and opt.help
        if opt.choices:
            with pytest.raises(UsageError):
                parse_options(target, [f"{opt.name}=no-such-choice"])
    with pytest.raises(UsageError):
        parse_options(target, ["no_such_option=1"])
    with pytest.raises(UsageError):
        tgt.compile(progs[0][1].net, no_such_option=1)


def test_declared_exports_write_files(programs, tmp_path):
    """A target with its own file formats (``Exporting``) writes each, atomically, under a
    declared suffix."""
    target, progs = programs
    tgt = get_target(target)
    if not isinstance(tgt, Exporting):
        return
    for key, export in tgt.exports.items():
        assert isinstance(export, Export) and export.name == key and export.suffixes and callable(export.write)
        path = tmp_path / f"model{export.suffixes[0]}"
        export.write(progs[0][1], path)
        assert path.is_file() and path.stat().st_size > 0
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
        path.unlink()


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


class Clipping(WrongDecisions):
    """A program that clips codes outside the input format to it and still claims ``exact``
    (truenorth before the rule)."""

    def forward(self, x_q):
        return self.inner.forward(np.clip(x_q, self.net.input.qmin, self.net.input.qmax))

    def decide(self, scores):
        return self.inner.decide(scores)


def test_the_outside_format_check_catches_silent_clipping():
    sim = get_target("sim").compile(NETS["step-4bit"])
    x_q = outside_codes(sim.net)
    assert check_outside_format(sim, x_q) == "computed"
    with pytest.raises(AssertionError, match="outside the input format differ"):
        check_outside_format(Clipping(sim), x_q)


class Local:
    """A program that cannot trace but names a local model (a device's shape)."""

    def __init__(self, model, net=None):
        self.model, self.net, self.target, self.exact = model, net or model.net, "local", False
        self.options, self.artifacts, self.report = {}, {}, {}

    def forward(self, x_q):
        return self.model.forward(x_q)

    def decide(self, scores):
        return self.model.decide(scores)

    def bit_exact_model(self):
        return self.model


def test_the_capability_checks_catch_wrong_implementations():
    net = NETS["step-4bit"]
    x_q = input_codes(net, n=8)
    assert check_capabilities(Local(ReferenceProgram(net)), x_q) == ["HasBitExactModel"]
    with pytest.raises(AssertionError, match="cannot trace|not a program"):
        check_capabilities(Local(get_target("sim").compile(net).layers, net), x_q)  # not a program

    class NoCodes(Local):
        def accumulators(self):  # the Protocol's x_q missing
            return []

    with pytest.raises(AssertionError, match="lacks the parameter 'x_q'"):
        check_capabilities(NoCodes(ReferenceProgram(net)), x_q)

    class Mismeasured(Local):
        def measure_fidelity(self, x_q, source="given inputs"):
            self.report["fidelity"] = dict(value=0.5, inputs=len(x_q), source=source)
            return 0.5

    with pytest.raises(AssertionError, match="measured fidelity"):
        check_capabilities(Mismeasured(ReferenceProgram(net)), x_q)
