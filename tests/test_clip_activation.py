"""Clipped activations (ReLU6, Hardtanh) end to end: real PyTorch exports
(``tests/data/exporters/make_clip_files.py``) imported as the ``clip(l,h)`` kind, the float
model against onnxruntime, sim against the numpy reference against Python ints, the exported
integer ONNX against sim bit for bit, the surrogate gradient against a hand-written backward
pass, and one-line refusals (bad bounds, loihi, truenorth). Each exactness check is also run on
a variant with a clip bound one code off, which must fail it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import hwq
from hwq.attack.gradients import SurrogateGradient
from hwq.errors import HwqError, InvalidModelError, UsageError
from hwq.ir import activations, evaluate
from hwq.onnx.exporter import export_onnx
from hwq.onnx.importer import load_onnx
from hwq.quant import reference as ref

DATA = Path(__file__).parent / "data" / "exporters"
MODELS = {"torch_relu6": (0.0, 6.0), "torch_hardtanh": (-1.0, 1.0)}
FILES = [f"{m}_{v}" for m in MODELS for v in ("classic", "dynamo", "opset10")]
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def bounds_of(name: str) -> tuple[float, float]:
    return MODELS[name.rsplit("_", 1)[0]]


@pytest.fixture(scope="module")
def digits():
    return hwq.load_dataset("digits")


@pytest.fixture(scope="module")
def inputs(digits):
    """Test digits, noisy digits and uniform noise: pre-activations on both sides of the bounds."""
    rng = np.random.default_rng(0)
    noisy = np.clip(digits.x_test + rng.normal(0, 0.2, digits.x_test.shape), 0, 1)
    return np.concatenate([digits.x_test, noisy, rng.uniform(0, 1, (200, 64))])


def ort_float(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def ort_integer(model: onnx.ModelProto, x_q: np.ndarray, level) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(["scores"], {"x_q": x_q.astype(np.uint8)})[0]


def compiled(name: str, digits, act_bits: int, bits: int = 8):
    graph = load_onnx(DATA / f"{name}.onnx")
    return hwq.quantize(graph, bits, calibration=digits.x_train, bounds=(0, 1), act_bits=act_bits)


# ---------------------------------------------------------------- the kind and its grid


@pytest.mark.parametrize("bits", range(1, 17))
def test_relu6_grid_is_unsigned_with_6_the_top_code(bits):
    lo, hi, s = activations.clip_grid(0.0, 6.0, bits)
    assert (lo, hi) == (0, 2**bits - 1)
    assert hi * s == pytest.approx(6.0, rel=1e-15)


@pytest.mark.parametrize("bits", range(2, 17))
def test_hardtanh_grid_is_symmetric_signed(bits):
    lo, hi, s = activations.clip_grid(-1.0, 1.0, bits)
    assert (lo, hi) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    assert lo * s == pytest.approx(-1.0, rel=1e-15) and hi * s == pytest.approx(1.0, rel=1e-15)


def test_asymmetric_bounds_both_on_the_grid_or_reported():
    lo, hi, s = activations.clip_grid(-1.0, 3.0, 8)
    assert (lo, hi) == (-42, 126) and lo * s == pytest.approx(-1.0) and hi * s == pytest.approx(3.0)
    lo, hi, s = activations.clip_grid(-1.0, np.pi, 8)  # no n puts both on the grid: the larger is exact
    assert hi == 127 and hi * s == pytest.approx(np.pi) and abs(lo * s + 1.0) > 1e-6
    with pytest.raises(InvalidModelError, match="at least 2 activation bits"):
        activations.clip_grid(-1.0, 1.0, 1)


def test_names_round_trip_and_only_canonical_names_are_kinds():
    k = activations.kind("clip(0.0,6.0)")
    assert isinstance(k, activations.Clip) and (k.lo, k.hi) == (0.0, 6.0) and k.family == "clip"
    assert activations.kind(activations.clip_name(-0.5, 0.25)).hi == 0.25
    assert activations.clip(-1, 1) is activations.kind("clip(-1.0,1.0)")
    for bad in ("clip(0,6)", "clip(1.0,6.0)", "clip(0.0,inf)", "clip(0.0,nan)", "clip(0.0, 6.0)", "relu6"):
        assert bad not in activations.KINDS
        with pytest.raises(UsageError):
            activations.kind(bad)
    assert list(activations.KINDS) == ["identity", "relu", "sigmoid", "step", "sign"]


def test_float_half_and_surrogate_derivative():
    z = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    k = activations.kind("clip(-1.0,1.0)")
    np.testing.assert_array_equal(k.forward(z), [-1, -1, -0.5, 0, 0.5, 1, 1])
    np.testing.assert_array_equal(k.derivative(z), [0, 0, 1, 1, 1, 0, 0])  # as torch's hardtanh backward
    np.testing.assert_array_equal(activations.kind("clip(0.0,6.0)").derivative(z * 4), [0, 0, 0, 0, 1, 1, 0])


# ---------------------------------------------------------------- real PyTorch exports


@pytest.mark.parametrize("name", FILES)
def test_torch_export_imports_as_clip_and_float_model_matches_onnxruntime(name, inputs):
    graph = load_onnx(DATA / f"{name}.onnx")
    kinds = [n.kind for n in graph.nodes if isinstance(n, hwq.ir.Activation)]
    assert kinds == [activations.clip_name(*bounds_of(name))]
    np.testing.assert_allclose(evaluate.forward(graph, inputs), ort_float(DATA / f"{name}.onnx", inputs),
                               atol=1e-4)


@pytest.mark.parametrize("name", [f"{m}_classic" for m in MODELS] + ["torch_hardtanh_dynamo"])
@pytest.mark.parametrize("act_bits", [8, 4, 2, 12])
def test_sim_reference_and_exported_onnx_agree_bit_for_bit(name, act_bits, digits, inputs):
    net = compiled(name, digits, act_bits)
    x_q = ref.quantize_input(net.input, inputs)
    expected = ref.forward(net, x_q)
    np.testing.assert_array_equal(hwq.compile(net, "sim").forward(x_q), expected)
    model = export_onnx(net)
    for level in LEVELS:
        np.testing.assert_array_equal(ort_integer(model, x_q, level), expected)
    # the inputs reach both clip bounds, so a bound one code off changes the scores
    codes = ref.activate(net.layers[0], ref.accumulate(net.layers[0], x_q))
    lo, hi, _ = activations.clip_grid(*bounds_of(name), act_bits)
    assert codes.min() == lo and codes.max() == hi


@pytest.mark.parametrize("name", [f"{m}_classic" for m in MODELS])
def test_accuracy_close_to_the_float_model(name, digits):
    want = float(np.mean(ort_float(DATA / f"{name}.onnx", digits.x_test).argmax(1) == digits.y_test))
    for act_bits, slack in ((8, 0.01), (4, 0.02)):
        net = compiled(name, digits, act_bits)
        got = hwq.evaluate(hwq.compile(net, "sim"), digits.x_test, digits.y_test).accuracy
        assert abs(got - want) <= slack, (act_bits, got, want)


def python_int_codes(layer, acc: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The epilogue in Python ints with literal bounds: ``clip((acc M + 2^(S-1)) >> S, lo, hi)``."""
    m, s = layer.requant.multiplier.tolist(), layer.requant.shift.tolist()
    out = [[min(max((int(a) * m[j] + (1 << (s[j] - 1) if s[j] else 0)) >> s[j], lo), hi)
            for j, a in enumerate(row)] for row in acc.tolist()]
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("name, lo, hi", [("torch_relu6_classic", 0, 255), ("torch_hardtanh_classic", -127, 127)])
def test_reference_epilogue_against_python_ints_and_an_off_by_one_bound_fails(name, lo, hi, digits, inputs,
                                                                              monkeypatch):
    net = compiled(name, digits, 8)
    layer = net.layers[0]
    acc = ref.accumulate(layer, ref.quantize_input(net.input, inputs[:300]))
    want = python_int_codes(layer, acc, lo, hi)
    np.testing.assert_array_equal(ref.activate(layer, acc), want)
    grid = activations.clip_grid
    monkeypatch.setattr(activations, "clip_grid", lambda a, b, bits: (grid(a, b, bits)[0], grid(a, b, bits)[1] - 1,
                                                                      grid(a, b, bits)[2]))
    assert not np.array_equal(ref.activate(layer, acc), want)


@pytest.mark.parametrize("name", [f"{m}_classic" for m in MODELS])
def test_sim_and_export_with_a_bound_one_code_off_are_caught(name, digits, inputs):
    """The wrong variants: sim's upper (or Hardtanh's lower) clip bound, or the exported graph's
    ``Clip`` bound, one code inside; each differs from the reference on these inputs."""
    net = compiled(name, digits, 8)
    x_q = ref.quantize_input(net.input, inputs)
    expected = ref.forward(net, x_q)
    for edit in ("top", "bottom"):
        prog = hwq.compile(net, "sim")
        first = prog.layers[0]
        if edit == "top":
            first.act_max -= 1
        else:
            first.lut = np.array([first.lut[0] + 1], np.int64)
        assert not np.array_equal(prog.forward(x_q), expected), edit
    model = export_onnx(net)
    clip = next(n for n in model.graph.node if n.op_type == "Clip")  # layer 0's epilogue
    for const, step in ((clip.input[2], -1), (clip.input[1], 1)):
        wrong = onnx.ModelProto()
        wrong.CopyFrom(model)
        init = next(t for t in wrong.graph.initializer if t.name == const)
        init.CopyFrom(numpy_helper.from_array(np.float64(float(numpy_helper.to_array(init)) + step), const))
        assert not np.array_equal(ort_integer(wrong, x_q, LEVELS[0]), expected), const


def test_surrogate_gradient_is_zero_outside_the_clip_range(digits, inputs):
    """``SurrogateGradient`` against the backward pass written out: softmax - onehot through the
    output layer, times ``[l < z < h]`` at the real pre-activation, through the first layer; a
    ReLU-style derivative without the upper cut differs on these inputs."""
    net = compiled("torch_hardtanh_classic", digits, 8)
    prog = hwq.compile(net, "sim")
    x, y = inputs[:200], np.resize(digits.y_test, 200)
    loss, grad = SurrogateGradient(prog, sign_dtype=None).value_and_grad(x, y)
    l0, l1 = net.layers
    x_q = ref.quantize_input(net.input, x)
    z1 = ref.accumulate(l0, x_q) * l0.acc_scale
    h = ref.activate(l0, ref.accumulate(l0, x_q))
    scores = ref.accumulate(l1, h) * l1.acc_scale
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = p.copy()
    delta[np.arange(len(y)), y] -= 1
    w0, w1 = l0.weight * l0.weight_scale[:, None] * l0.gain, l1.weight * l1.weight_scale[:, None] * l1.gain
    g_h = delta @ w1
    mask = (z1 > -1) & (z1 < 1)
    assert (z1 >= 1).any() and (z1 <= -1).any()
    np.testing.assert_allclose(grad, (g_h * mask) @ w0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss, -np.log(p[np.arange(len(y)), y]), rtol=1e-9)
    assert not np.allclose(grad, (g_h * (z1 > -1)) @ w0, rtol=1e-6)


@pytest.mark.parametrize("target, message", [("loihi", "clipped activation clip.-1.0,1.0."),
                                             ("truenorth", "clipped activation clip.-1.0,1.0.")])
def test_spiking_targets_refuse_in_one_line(target, message, digits):
    net = compiled("torch_hardtanh_classic", digits, 8)
    with pytest.raises(HwqError, match=message) as info:
        hwq.compile(net, target)
    assert "\n" not in str(info.value)


def test_program_file_round_trips_the_clip_kind(tmp_path, digits, inputs):
    from hwq.files.program import load_program, save_program

    net = compiled("torch_relu6_classic", digits, 6)
    prog = hwq.compile(net, "sim")
    save_program(tmp_path / "m.hwq", prog)
    back = load_program(tmp_path / "m.hwq")
    assert back.net.layers[0].activation == "clip(0.0,6.0)"
    x_q = ref.quantize_input(net.input, inputs)
    np.testing.assert_array_equal(back.forward(x_q), prog.forward(x_q))


def test_unsupported_clip_bounds_are_refused_in_one_line(tmp_path):
    model = onnx.load(str(DATA / "torch_relu6_classic.onnx"))
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    lo = clip.input[1]
    consts = {t.name: t for t in model.graph.initializer}
    if lo in consts:
        consts[lo].CopyFrom(numpy_helper.from_array(np.float32(0.5), lo))
    else:  # a Constant node
        node = next(n for n in model.graph.node if lo in n.output)
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.float32(0.5)))
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match=r"min <= 0 < max") as info:
        load_onnx(path)
    assert "\n" not in str(info.value)


def test_nir_export_refuses_a_clip_layer_in_one_line(digits):
    """NIR has no clip primitive: refused, not exported without its activation."""
    from hwq.files.nir import to_nir

    net = compiled("torch_relu6_classic", digits, 8)
    with pytest.raises(UsageError, match="layer 0: NIR has no clip primitive") as info:
        to_nir(net)
    assert "\n" not in str(info.value)
