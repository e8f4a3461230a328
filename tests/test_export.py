"""hwq.onnx.exporter: onnxruntime on the exported graph == sim == reference, as integers, with
graph optimizations off and on; every product and requantization route; atomic saving."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, reject, settings
from test_sim import dense, extreme_codes, float_graph, integer_networks, network, quantized_networks

import hwq
from hwq.errors import InvalidModelError
from hwq.onnx.exporter import export_onnx, save_onnx
from hwq.quant import reference
from hwq.quant.qnet import InputFormat

LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
NUMPY = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32}
LUT_HALF = 2048


def run_onnxruntime(model: onnx.ModelProto, x_q: np.ndarray, level) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    dtype = NUMPY[session.get_inputs()[0].type]
    scores, decision = session.run(["scores", "decision"], {"x_q": x_q.astype(dtype)})
    return scores, decision


def avx2_u8s8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """onnxruntime's AVX2 ``MatMulInteger`` (u8 x s8) as the CPU computes it: ``vpmaddubsw``
    adds adjacent products ``a[2k] w[2k] + a[2k+1] w[2k+1]`` into a saturating int16, then the
    pairs are summed in int32. ``a``: (N, K) codes as u8 (int8 codes as ``code + 128``),
    ``w``: (K, M) int8."""
    a = a.astype(np.int64)
    w = w.astype(np.int64)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * w[None, 0::2] + a[:, 1::2, None] * w[None, 1::2]
    return np.clip(pairs, -(2**15), 2**15 - 1).sum(axis=1)


def assert_every_cpu_exact(model: onnx.ModelProto) -> None:
    """Every ``MatMulInteger`` in the graph gives the exact product even on a CPU with AVX2 but
    no VNNI: its int8 weights, against the worst u8 codes, never saturate ``vpmaddubsw``."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            w = inits[node.input[1]]
            for sign in (1, -1):  # per output, codes 255 where its weights are positive (negative)
                worst = np.where(sign * w.T > 0, 255, 0).astype(np.int64)
                np.testing.assert_array_equal(
                    np.diag(avx2_u8s8(worst, w)), np.einsum("ik,ki->i", worst, w.astype(np.int64)),
                    err_msg=f"{node.name}: int8 weights saturate AVX2's vpmaddubsw")


def assert_export_exact(net, x_q) -> onnx.ModelProto:
    model = export_onnx(net)
    assert_every_cpu_exact(model)
    expected = reference.forward(net, x_q)
    np.testing.assert_array_equal(hwq.compile(net, "sim").forward(x_q), expected)
    for level in LEVELS:
        scores, decision = run_onnxruntime(model, x_q, level)
        assert scores.dtype == np.int64 and decision.dtype == np.int64
        np.testing.assert_array_equal(scores, expected)
        np.testing.assert_array_equal(decision, reference.decide(expected, net.output))
    return model


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quantized_networks())
def test_random_networks_onnxruntime_equals_sim_and_reference(case):
    net, rng = case
    x_q = extreme_codes(rng, net.input, 61, net.n_features)
    try:
        assert_export_exact(net, x_q)
    except InvalidModelError as exc:  # only accumulators beyond 2^53 may refuse
        assert "2^53" in str(exc)
        reject()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=integer_networks())
def test_integer_networks_export_exactly_or_refuse_with_the_bound(case):
    """The hand-built strategy of test_sim (weights up to 2^36, 2..16-bit formats): every
    export that succeeds equals the reference in onnxruntime; a refusal names the 2^53 or
    int64 bound it would break, and only when that bound is really reached."""
    from hypothesis import event

    from hwq.quant.bounds import F64_EXACT, INT64_LIMIT, check_layers, row_sum_bound

    net, rng = case
    try:
        bounds = check_layers(net.layers, net.input.qmin, net.input.qmax)
    except InvalidModelError:
        event("refused: int64")
        with pytest.raises(InvalidModelError, match="int64|2\\^53"):
            export_onnx(net)
        return
    try:
        model = export_onnx(net)
    except InvalidModelError as err:
        event("refused: 2^53")
        assert "2^53" in str(err)
        assert max(bounds) >= F64_EXACT or max(row_sum_bound(layer.weight) for layer in net.layers) * max(
            abs(net.input.qmin), net.input.qmax, *bounds) >= F64_EXACT
        assert max(bounds) < INT64_LIMIT
        return
    event("route int64 requant" if "Mod" in ops(model) else "route double requant")
    event("MatMulInteger" if "MatMulInteger" in ops(model) else "double MatMul")
    assert_export_exact(net, extreme_codes(rng, net.input, 40, net.n_features))


# --- routes ---------------------------------------------------------------------------------

def test_8bit_codes_use_matmulinteger_and_double_requant():
    rng = np.random.default_rng(0)
    net = hwq.quantize(float_graph(rng, [20, 12, 4], ["relu"]), 4,
                       calibration=rng.uniform(0, 1, (50, 20)), bounds=(0, 1))
    model = assert_export_exact(net, extreme_codes(rng, net.input, 80, 20))
    assert ops(model).count("MatMulInteger") == 2 and "Floor" in ops(model)
    assert "MatMul" not in ops(model) and "Mod" not in ops(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_wide_codes_use_double_matmul_and_int32_input():
    rng = np.random.default_rng(1)
    net = hwq.quantize(float_graph(rng, [20, 12, 4], ["sigmoid"]), 12,
                       calibration=rng.normal(0, 3, (50, 20)), input_bits=16)
    model = assert_export_exact(net, extreme_codes(rng, net.input, 80, 20))
    assert "MatMulInteger" not in ops(model) and ops(model).count("MatMul") == 2
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_matmulinteger_is_exact_without_vnni(monkeypatch):
    """The audit's case: codes 255, 255 against weights -49, -117. AVX2's ``vpmaddubsw`` returns
    -32768 instead of -42330, so weights beyond [-64, 64] take the double MatMul; the rule of
    earlier versions (any int8 weight) fails the AVX2 check."""
    a = np.array([[255, 255]])
    w = np.array([[-49], [-117]])
    assert avx2_u8s8(a, w)[0, 0] == -32768 and (a @ w)[0, 0] == -42330
    fmt = InputFormat(8, False, 1.0)
    net = network([dense([[-49, -117], [3, 5]], [0, 0], "relu"), dense([[1, -1]], [0])], fmt)
    model = assert_export_exact(net, np.array([[255, 255], [0, 255], [7, 3]]))
    assert ops(model).count("MatMulInteger") == 1  # layer 0 in double, layer 1 (|w| <= 64) in int8
    from hwq.onnx import exporter
    monkeypatch.setattr(exporter, "u8s8_exact_on_every_cpu", lambda w: bool(np.abs(w).max() <= 127))
    with pytest.raises(AssertionError, match="saturate"):
        assert_every_cpu_exact(export_onnx(net))


def test_signed_8bit_inputs_use_int8_container():
    rng = np.random.default_rng(2)
    fmt = InputFormat(8, True, 1.0)
    layers = [dense(rng.integers(-128, 128, (7, 30)), rng.integers(-999, 999, 7), "step"),
              dense(rng.integers(-127, 128, (3, 7)), [0, 1, 2])]
    model = assert_export_exact(network(layers, fmt), extreme_codes(rng, fmt, 100, 30))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT8


def test_int64_requant_route_beyond_2_53():
    """|acc| * M reaches 2^53: the graph requantizes with int64 Mod / Div instead of Floor."""
    rng = np.random.default_rng(3)
    fmt = InputFormat(16, True, 1.0)
    w = rng.integers(-(2**20), 2**20, (5, 8))
    w[0] = 2**20
    layers = [dense(w, rng.integers(-(2**30), 2**30, 5), "relu", act_bits=16,
                    mult=[2**16 - 1, 2**16 - 3, 12345, 1, 7], shift=[40, 41, 35, 0, 20]),
              dense(rng.integers(-9, 9, (3, 5)), [0, 0, 0])]
    model = assert_export_exact(network(layers, fmt), extreme_codes(rng, fmt, 200, 8))
    assert "Mod" in ops(model) and "Floor" not in ops(model)


def test_identity_hidden_layer_passes_accumulators_on():
    rng = np.random.default_rng(4)
    layers = [dense(rng.integers(-7, 8, (6, 10)), rng.integers(-50, 50, 6)),
              dense(rng.integers(-7, 8, (4, 6)), rng.integers(-50, 50, 4), "relu", mult=5, shift=3),
              dense(rng.integers(-7, 8, (2, 4)), [0, 0])]
    assert_export_exact(network(layers), extreme_codes(rng, InputFormat(8, False, 1.0), 90, 10))


def test_accumulators_beyond_2_53_are_refused():
    net = network([dense([[2**40, 2**40]], [0])], InputFormat(16, True, 1.0))
    with pytest.raises(InvalidModelError, match="2\\^53"):
        export_onnx(net)


# --- rounding, saturation, decisions ------------------------------------------------------------

@pytest.mark.parametrize("shift", [0, 1, 2, 5])
def test_requant_ties_both_signs(shift):
    fmt = InputFormat(8, False, 1.0)
    layers = [dense([[1], [1], [-1]], [-128, -128, 128], "relu", act_bits=16, mult=[1, 3, 5],
                    shift=shift),
              dense(np.eye(3, dtype=np.int64), [0, 0, 0], "sigmoid", mult=1, shift=shift,
                    lut=np.arange(2 * LUT_HALF)),
              dense(np.eye(3, dtype=np.int64), [-2048, -2048, -2048])]
    assert_export_exact(network(layers, fmt), np.arange(256).reshape(-1, 1))


def test_step_at_zero_saturation_and_lut_edges():
    lut = np.arange(2 * LUT_HALF) % 251
    w = np.array([[127] * 8, [-127] * 8, [1] * 8, [-1] * 8, [1, -1] * 4])
    layers = [dense(w, [0, 0, -1020, 1020, 0], "sigmoid", mult=[2**15 - 1, 2**15 - 1, 1, 1, 1],
                    shift=[3, 3, 0, 0, 0], lut=lut),
              dense(np.eye(5, dtype=np.int64) * 127, [0] * 5, "relu", act_bits=5,
                    mult=[1, 3, 2**12, 1, 1], shift=[0, 1, 5, 2, 0]),
              dense(np.array([[1, -1, 1, -1, 1]] * 3), [-1, 1, 0], "step"),
              dense(np.eye(3, dtype=np.int64), [0, 0, 0])]
    x_q = extreme_codes(np.random.default_rng(5), InputFormat(8, False, 1.0), 150, 8)
    x_q[2] = 7  # every pairwise difference 0: the step layer sees acc == 0
    assert_export_exact(network(layers), x_q)


def test_decisions_argmax_ties_and_sign():
    fmt = InputFormat(4, True, 1.0)
    x_q = np.array([[3, 3], [3, -2], [-8, -8], [0, 0], [7, -8]])
    ties = network([dense([[1, 0], [1, 0], [0, 1]], [0, 0, 0])], fmt)
    assert_export_exact(ties, x_q)
    single = network([dense([[1, -1]], [0])], fmt, output="sign")
    model = assert_export_exact(single, x_q)
    assert run_onnxruntime(model, x_q, LEVELS[0])[1].tolist() == [0, 1, 0, 0, 1]


# --- the file ------------------------------------------------------------------------------

def small_net():
    rng = np.random.default_rng(6)
    return hwq.quantize(float_graph(rng, [6, 4, 3], ["relu"]), 4,
                        calibration=rng.uniform(0, 1, (20, 6)), bounds=(0, 1))


def test_model_declares_versions_outputs_and_rules():
    model = export_onnx(small_net())
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert [o.name for o in model.graph.output] == ["scores", "decision"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert "lowest index wins ties" in meta["hwq.decision"]
    assert meta["hwq.input_dtype"] == "uint8" and "floor(x * " in meta["hwq.input"]
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"old")
    save_onnx(small_net(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]
    assert onnx.load(str(path)) == export_onnx(small_net())


def test_failed_export_leaves_the_old_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"old")
    with pytest.raises(InvalidModelError):
        save_onnx(network([dense([[2**40, 2**40]], [0])], InputFormat(16, True, 1.0)), path)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_shifts_beyond_62_are_refused():
    with pytest.raises(InvalidModelError, match="0..62"):  # refused when the network is built
        network([dense([[1]], [0], "relu", mult=1, shift=63), dense([[1]], [0])])
